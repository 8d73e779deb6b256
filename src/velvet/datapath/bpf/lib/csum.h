/* SPDX-License-Identifier: GPL-2.0 */
/* csum.h - checksums and address/port rewriting (NAT) with incremental checksum updates. */
#ifndef VELVET_LIB_CSUM_H
#define VELVET_LIB_CSUM_H

#include "parse.h"

#define IP_CSUM_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, check))
#define IP_SADDR_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, daddr))
#define TCP_CSUM_OFF 16
#define UDP_CSUM_OFF 6

/* Fold a 32-bit one's complement sum into the 16-bit checksum to store. */
static __always_inline __u16 csum_fold32(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/*
 * Replace the source (dst == false) or destination address and port of pkt, keeping the IPv4
 * and TCP/UDP checksums valid (also for CHECKSUM_PARTIAL skbs: the helpers know). Later
 * fragments have no transport header: only the address changes.
 */
static __always_inline int nat4_rewrite(struct __sk_buff *skb, const struct pkt4 *pkt, bool dst,
					__be32 new_addr, __be16 new_port)
{
	__be32 old_addr = dst ? pkt->daddr : pkt->saddr;
	__be16 old_port = dst ? pkt->dport : pkt->sport;
	__u32 csum_off, port_off = pkt->l4_off + (dst ? 2 : 0);
	__u64 l4_flags;

	/* IPv4 header: address and header checksum */
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, dst ? IP_DADDR_OFF : IP_SADDR_OFF, &new_addr, sizeof(new_addr), 0) < 0)
		return -1;
	if (pkt->frag == PKT_FRAG_LATER)
		return 0;

	/* transport checksum covers the pseudo header; a zero UDP checksum stays zero */
	if (pkt->proto == IPPROTO_TCP) {
		csum_off = pkt->l4_off + TCP_CSUM_OFF;
		l4_flags = 0;
	} else if (pkt->proto == IPPROTO_UDP) {
		csum_off = pkt->l4_off + UDP_CSUM_OFF;
		l4_flags = BPF_F_MARK_MANGLED_0;
	} else {
		return 0;
	}
	if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
				l4_flags | BPF_F_PSEUDO_HDR | sizeof(new_addr)) < 0)
		return -1;
	if (old_port == new_port)
		return 0;
	if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, l4_flags | sizeof(new_port)) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0)
		return -1;
	return 0;
}

#endif /* VELVET_LIB_CSUM_H */
