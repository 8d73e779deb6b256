/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fib.h - forwarding as a router would, from a tc program: a FIB lookup in the node's namespace,
 * the TTL decremented (checksum fixed) and a redirect out of the interface the FIB names, with the
 * next hop's MAC (resolved by the neighbour subsystem when not known yet). Used by NodePort SNAT
 * (lib/nodeport.h) and by host routing (see types.h, "Host routing").
 */
#ifndef VELVET_LIB_FIB_H
#define VELVET_LIB_FIB_H

#include "common.h"
#include "maps.h"
#include "csum.h"

#define AF_INET 2
#define IP_TTL_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, ttl))

/* Whether the agent turned host routing on (node_config.flags). */
static __always_inline bool host_routing_enabled(void)
{
	__u32 zero = 0;
	const struct node_config *cfg = bpf_map_lookup_elem(&node_config, &zero);

	return cfg && (cfg->flags & NODE_F_HOST_ROUTING);
}

/* Whether the packet's TTL would expire at this hop (or cannot be read): the stack sends time-exceeded. */
static __always_inline bool ttl_expiring(struct __sk_buff *skb)
{
	__u8 ttl;

	return bpf_skb_load_bytes(skb, IP_TTL_OFF, &ttl, sizeof(ttl)) < 0 || ttl <= 1;
}

/*
 * The FIB's forwarding answer for the packet (saddr -> daddr, as it is now) in fib:
 * BPF_FIB_LKUP_RET_SUCCESS, or _NO_NEIGH when the next hop's MAC is not known yet. -1 when the FIB
 * has no forwarding answer (no route, a local address, forwarding off, MTU exceeded) or the TTL
 * would expire: the node's stack is then the one to answer (ICMP errors, local delivery).
 */
static __always_inline long fib_resolve(struct __sk_buff *skb, struct bpf_fib_lookup *fib, __be32 saddr,
					__be32 daddr, __u8 proto)
{
	long ret;

	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->l4_protocol = proto;
	fib->ifindex = skb->ifindex;
	fib->ipv4_src = saddr;
	fib->ipv4_dst = daddr;
	/* tot_len 0: the kernel checks the skb itself against the MTU (GSO included) */
	ret = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	if (ret != BPF_FIB_LKUP_RET_SUCCESS && ret != BPF_FIB_LKUP_RET_NO_NEIGH)
		return -1;
	if (ttl_expiring(skb))
		return -1;
	return ret;
}

/*
 * Forward along fib_resolve's answer (ret) as a router: TTL decremented, the next hop's MAC, out of
 * the interface; with peer (a tc ingress hook, a host veth) into the namespace behind it directly.
 * Returns the tc verdict, or -1 when the packet could not be rewritten.
 */
static __always_inline int fib_forward(struct __sk_buff *skb, const struct bpf_fib_lookup *fib, long ret,
				       bool peer)
{
	__u8 hdr[2], dec[2];

	/* TTL and the protocol beside it: one checksum word */
	if (bpf_skb_load_bytes(skb, IP_TTL_OFF, hdr, sizeof(hdr)) < 0)
		return -1;
	dec[0] = hdr[0] - 1;
	dec[1] = hdr[1];
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, *(__be16 *)hdr, *(__be16 *)dec, 2) < 0 ||
	    bpf_skb_store_bytes(skb, IP_TTL_OFF, dec, sizeof(dec), 0) < 0)
		return -1;

	if (ret == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib->ifindex, NULL, 0, 0);
	if (bpf_skb_store_bytes(skb, 0, fib->dmac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, fib->smac, ETH_ALEN, 0) < 0)
		return -1;
	return peer ? bpf_redirect_peer(fib->ifindex, 0) : bpf_redirect(fib->ifindex, 0);
}

/* Forward the packet out of the interface the FIB names for it: the tc verdict, or -1 (see fib_resolve). */
static __always_inline int fib_redirect(struct __sk_buff *skb, __be32 saddr, __be32 daddr, __u8 proto)
{
	struct bpf_fib_lookup fib;
	long ret = fib_resolve(skb, &fib, saddr, daddr, proto);

	return ret < 0 ? -1 : fib_forward(skb, &fib, ret, false);
}

#endif /* VELVET_LIB_FIB_H */
