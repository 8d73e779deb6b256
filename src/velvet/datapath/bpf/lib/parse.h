/* SPDX-License-Identifier: GPL-2.0 */
/* parse.h - Ethernet/IPv4/L4 parsing into struct pkt4, with bounds and sanity checks. */
#ifndef VELVET_LIB_PARSE_H
#define VELVET_LIB_PARSE_H

#include "maps.h"

/* pkt4.frag */
enum pkt_frag {
	PKT_NOT_FRAG = 0,
	PKT_FRAG_FIRST = 1, /* offset 0, more fragments follow: carries the L4 header */
	PKT_FRAG_LATER = 2, /* no L4 header: ports come from ipv4_frags */
};

/* The parsed packet plus the translation/verdict context that ends up in its events. */
struct pkt4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u16 l4_off;     /* from the start of the frame */
	__u16 ip_len;     /* IPv4 tot_len */
	__u8 proto;
	__u8 tcp_flags;
	__u8 frag;        /* enum pkt_frag */
	__u8 icmp_error;  /* ICMP error quoting a TCP/UDP/ICMP packet: inner tuple is valid */
	/* quoted packet of an ICMP error, as it was originally sent */
	__be32 inner_saddr;
	__be32 inner_daddr;
	__be16 inner_sport;
	__be16 inner_dport;
	__u8 inner_proto;
	/* filled while processing; copied into events */
	__u8 ev_flags;
	__u16 rev_nat_index;
	__be32 orig_daddr;
	__be16 orig_dport;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 policy_id;
	__u32 obs_ifindex;  /* interface its events name when not the program's (skb->ifindex) */
};

/* Parse results besides 0 (IPv4 parsed) and -DROP_* */
#define PARSE_NOT_IPV4 1

/* Ports of the transport header at off, mapped to a flow tuple (ICMP echo: identifier). */
static __always_inline int parse_l4_ports(struct __sk_buff *skb, __u32 off, __u8 proto,
					  __be16 *sport, __be16 *dport, __u8 *icmp_type)
{
	__be16 ports[2];
	__u8 type;

	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return -1;
		*sport = ports[0];
		*dport = ports[1];
		return 0;
	}
	if (proto == IPPROTO_ICMP) {
		/* type (1), code (1), checksum (2), identifier (2) */
		if (bpf_skb_load_bytes(skb, off, &type, 1) < 0 ||
		    bpf_skb_load_bytes(skb, off + 4, ports, sizeof(__be16)) < 0)
			return -1;
		*icmp_type = type;
		/* echo requests carry the identifier as source port, replies as destination */
		if (type == ICMP_ECHO) {
			*sport = ports[0];
			*dport = 0;
		} else if (type == ICMP_ECHOREPLY) {
			*sport = 0;
			*dport = ports[0];
		} else {
			*sport = 0;
			*dport = 0;
		}
	}
	return 0;
}

/* Read the packet quoted by an ICMP error (header at off) into pkt->inner_*. */
static __always_inline void parse_icmp_quote(struct __sk_buff *skb, struct pkt4 *pkt, __u32 off,
					     __u32 end)
{
	struct iphdr inner;
	__u8 type = 0;
	__u32 l4;

	if (off + sizeof(inner) > end || bpf_skb_load_bytes(skb, off, &inner, sizeof(inner)) < 0)
		return;
	if (inner.version != 4 || inner.ihl < 5)
		return;
	l4 = off + inner.ihl * 4;
	/* the quote must hold the first 8 bytes of the inner transport header */
	if (l4 + 8 > end)
		return;
	if (parse_l4_ports(skb, l4, inner.protocol, &pkt->inner_sport, &pkt->inner_dport, &type) < 0)
		return;
	pkt->inner_saddr = inner.saddr;
	pkt->inner_daddr = inner.daddr;
	pkt->inner_proto = inner.protocol;
	pkt->icmp_error = 1;
}

/*
 * Parse an Ethernet frame. Returns PARSE_NOT_IPV4 for other ethertypes, 0 when pkt is filled,
 * -DROP_INVALID_PACKET for malformed or truncated IPv4, -DROP_FRAG_NOT_FOUND for a later
 * fragment whose first fragment was not seen (pkt addresses are filled then).
 */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt4 *pkt)
{
	struct ipv4_frag_key fkey = {};
	struct ipv4_frag_ports *fports;
	struct ipv4_frag_ports ports;
	struct tcphdr tcp;
	struct iphdr ip;
	__u8 icmp_type = 0;
	__be16 h_proto;
	__u32 hlen, end, avail;
	__u16 frag_off;

	/* ethertype at offset 12 */
	if (bpf_skb_load_bytes(skb, 12, &h_proto, sizeof(h_proto)) < 0)
		return -DROP_INVALID_PACKET;
	if (h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;

	/* IPv4 header: version, header length and total length must be consistent */
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return -DROP_INVALID_PACKET;
	if (ip.version != 4 || ip.ihl < 5)
		return -DROP_INVALID_PACKET;
	hlen = ip.ihl * 4;
	pkt->ip_len = bpf_ntohs(ip.tot_len);
	if (pkt->ip_len < hlen || ETH_HLEN + pkt->ip_len > skb->len)
		return -DROP_INVALID_PACKET;
	end = ETH_HLEN + pkt->ip_len;
	pkt->saddr = ip.saddr;
	pkt->daddr = ip.daddr;
	pkt->proto = ip.protocol;
	pkt->l4_off = ETH_HLEN + hlen;
	avail = pkt->ip_len - hlen;

	/* fragments: only the first one has the transport header */
	frag_off = bpf_ntohs(ip.frag_off);
	fkey.saddr = ip.saddr;
	fkey.daddr = ip.daddr;
	fkey.id = ip.id;
	fkey.proto = ip.protocol;
	if (frag_off & IP_OFFSET) {
		pkt->frag = PKT_FRAG_LATER;
		fports = bpf_map_lookup_elem(&ipv4_frags, &fkey);
		if (!fports)
			return -DROP_FRAG_NOT_FOUND;
		pkt->sport = fports->sport;
		pkt->dport = fports->dport;
		return 0;
	}
	if (frag_off & IP_MF)
		pkt->frag = PKT_FRAG_FIRST;

	/* transport header: must be complete inside tot_len */
	if (ip.protocol == IPPROTO_TCP) {
		if (avail < sizeof(tcp) || bpf_skb_load_bytes(skb, pkt->l4_off, &tcp, sizeof(tcp)) < 0)
			return -DROP_INVALID_PACKET;
		if (tcp.doff < 5 || tcp.doff * 4 > avail)
			return -DROP_INVALID_PACKET;
		pkt->sport = tcp.source;
		pkt->dport = tcp.dest;
		/* flags byte follows the data offset byte */
		pkt->tcp_flags = ((__u8 *)&tcp)[13];
	} else if (ip.protocol == IPPROTO_UDP || ip.protocol == IPPROTO_ICMP) {
		if (avail < 8)
			return -DROP_INVALID_PACKET;
		if (parse_l4_ports(skb, pkt->l4_off, ip.protocol, &pkt->sport, &pkt->dport, &icmp_type) < 0)
			return -DROP_INVALID_PACKET;
	}

	/* ICMP errors quote the packet they answer: keep its tuple to find its connection */
	if (ip.protocol == IPPROTO_ICMP &&
	    (icmp_type == ICMP_DEST_UNREACH || icmp_type == ICMP_TIME_EXCEEDED ||
	     icmp_type == ICMP_PARAMETERPROB || icmp_type == ICMP_SOURCE_QUENCH))
		parse_icmp_quote(skb, pkt, pkt->l4_off + 8, end);

	/* remember the ports for the later fragments of this datagram */
	if (pkt->frag == PKT_FRAG_FIRST) {
		ports.sport = pkt->sport;
		ports.dport = pkt->dport;
		bpf_map_update_elem(&ipv4_frags, &fkey, &ports, BPF_ANY);
	}
	return 0;
}

#endif /* VELVET_LIB_PARSE_H */
