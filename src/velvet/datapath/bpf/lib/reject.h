/* SPDX-License-Identifier: GPL-2.0 */
/*
 * reject.h - turn a packet into its rejection, in place: a TCP RST for TCP, ICMP port
 * unreachable for UDP. The caller redirects the result back towards the sender.
 *
 * The new frame is written over the old one (bpf_skb_change_tail sets the length) with
 * complete checksums. A CHECKSUM_PARTIAL skb keeps its ip_summed; receivers on the veth path
 * trust it, so the full checksums are simply also correct for anyone who verifies.
 */
#ifndef VELVET_LIB_REJECT_H
#define VELVET_LIB_REJECT_H

#include "csum.h"

/* Pseudo header followed by the TCP header: one buffer for the checksum. */
struct rst_l4 {
	__be32 saddr;
	__be32 daddr;
	__u8 zero;
	__u8 proto;
	__be16 len;
	struct tcphdr tcp;
};

/* IPv4 + ICMP header + the quoted IPv4 header and 8 bytes of its payload. */
struct icmp_unreach_l3 {
	struct iphdr ip;
	__u8 type;
	__u8 code;
	__sum16 check;
	__be32 unused;
	struct iphdr quoted_ip;
	__u8 quoted_l4[8];
};

/* A fresh IPv4 header from pkt's destination back to its source. */
static __always_inline void reject_ip_header(struct iphdr *ip, const struct pkt4 *pkt, __u8 proto,
					     __u16 tot_len)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = bpf_htons(tot_len);
	ip->frag_off = bpf_htons(IP_DF);
	ip->ttl = 64;
	ip->protocol = proto;
	ip->saddr = pkt->daddr;
	ip->daddr = pkt->saddr;
	ip->check = csum_fold32(bpf_csum_diff(NULL, 0, (__be32 *)ip, sizeof(*ip), 0));
}

/* Resize to len bytes and write the swapped Ethernet header. */
static __always_inline int reject_frame(struct __sk_buff *skb, __u32 len)
{
	__u8 mac[2 * ETH_ALEN], swapped[2 * ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, mac, sizeof(mac)) < 0)
		return -1;
	__builtin_memcpy(swapped, mac + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(swapped + ETH_ALEN, mac, ETH_ALEN);
	if (bpf_skb_change_tail(skb, len, 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), BPF_F_RECOMPUTE_CSUM);
}

/* Rewrite a TCP segment into the RST that refuses it (RFC 9293 3.10.7.1). Never answers a RST. */
static __always_inline int reject_tcp(struct __sk_buff *skb, const struct pkt4 *pkt)
{
	struct rst_l4 l4 = {};
	struct iphdr ip = {};
	struct tcphdr in;
	__u32 seg_len;
	__s64 sum;

	if (pkt->tcp_flags & TCP_F_RST)
		return -1;
	if (bpf_skb_load_bytes(skb, pkt->l4_off, &in, sizeof(in)) < 0)
		return -1;

	/* segment length: payload plus one for SYN and FIN */
	seg_len = pkt->ip_len - (pkt->l4_off - ETH_HLEN) - in.doff * 4;
	if (pkt->tcp_flags & TCP_F_SYN)
		seg_len++;
	if (pkt->tcp_flags & TCP_F_FIN)
		seg_len++;

	/* ports swapped; with ACK: seq = their ack, else seq 0 and ack what they sent */
	l4.tcp.source = pkt->dport;
	l4.tcp.dest = pkt->sport;
	l4.tcp.doff = 5;
	l4.tcp.rst = 1;
	if (pkt->tcp_flags & TCP_F_ACK) {
		l4.tcp.seq = in.ack_seq;
	} else {
		l4.tcp.ack_seq = bpf_htonl(bpf_ntohl(in.seq) + seg_len);
		l4.tcp.ack = 1;
	}
	l4.saddr = pkt->daddr;
	l4.daddr = pkt->saddr;
	l4.proto = IPPROTO_TCP;
	l4.len = bpf_htons(sizeof(l4.tcp));
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&l4, sizeof(l4), 0);
	if (sum < 0)
		return -1;
	l4.tcp.check = csum_fold32(sum);
	reject_ip_header(&ip, pkt, IPPROTO_TCP, sizeof(ip) + sizeof(l4.tcp));

	/* the new frame: Ethernet + IPv4 + TCP without options or payload */
	if (reject_frame(skb, ETH_HLEN + sizeof(ip) + sizeof(l4.tcp)) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &ip, sizeof(ip), BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(ip), &l4.tcp, sizeof(l4.tcp),
				   BPF_F_RECOMPUTE_CSUM);
}

/* Rewrite a UDP datagram (not a later fragment) into ICMP port unreachable quoting it. */
static __always_inline int reject_udp(struct __sk_buff *skb, const struct pkt4 *pkt)
{
	struct icmp_unreach_l3 l3 = {};
	__s64 sum;

	/* the quote is the original IPv4 header (options dropped) and the UDP header */
	if (pkt->frag == PKT_FRAG_LATER)
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &l3.quoted_ip, sizeof(l3.quoted_ip)) < 0 ||
	    bpf_skb_load_bytes(skb, pkt->l4_off, l3.quoted_l4, sizeof(l3.quoted_l4)) < 0)
		return -1;
	if (l3.quoted_ip.ihl != 5)
		return -1;
	l3.type = ICMP_DEST_UNREACH;
	l3.code = ICMP_PORT_UNREACH;
	/* ICMP checksum: header and quote, no pseudo header */
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&l3.type, sizeof(l3) - sizeof(l3.ip), 0);
	if (sum < 0)
		return -1;
	l3.check = csum_fold32(sum);
	reject_ip_header(&l3.ip, pkt, IPPROTO_ICMP, sizeof(l3));

	if (reject_frame(skb, ETH_HLEN + sizeof(l3)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &l3, sizeof(l3), BPF_F_RECOMPUTE_CSUM);
}

/* Reject pkt in place; 0 when the packet now holds the answer. */
static __always_inline int reject_pkt(struct __sk_buff *skb, const struct pkt4 *pkt)
{
	if (pkt->proto == IPPROTO_TCP)
		return reject_tcp(skb, pkt);
	if (pkt->proto == IPPROTO_UDP)
		return reject_udp(skb, pkt);
	return -1;
}

#endif /* VELVET_LIB_REJECT_H */
