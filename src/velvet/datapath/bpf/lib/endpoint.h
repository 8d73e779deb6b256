/* SPDX-License-Identifier: GPL-2.0 */
/*
 * endpoint.h - the datapath of packets entering a local pod (to_endpoint: conntrack, ingress policy,
 * reverse NAT of replies, their events and counters), run by lxc_to_pod on the pod's host veth, and by
 * the ingress programs that deliver into the pod themselves with host routing (host_route_ingress).
 */
#ifndef VELVET_LIB_ENDPOINT_H
#define VELVET_LIB_ENDPOINT_H

#include "conntrack.h"
#include "service.h"
#include "policy.h"
#include "ipcache.h"
#include "events.h"
#include "tunnel.h"
#include "fib.h"

/* skb->mark of a pod's packet node_to_uplink has nothing to do for (types.h, "Host routing"): compared
 * whole, its low byte unlike the tunnel's TUNNEL_MARK_MAGIC. */
#define HOST_ROUTED_MARK 0x7e1000a6

/* Resolve the identities an event shows but the fast path did not need. */
static __always_inline void lxc_fill_identities(struct pkt4 *pkt)
{
	if (!pkt->src_identity)
		pkt->src_identity = ipcache_identity(pkt->saddr);
	if (!pkt->dst_identity)
		pkt->dst_identity = ipcache_identity(pkt->daddr);
}

/*
 * Identities of a tracked connection's packet, as its entry recorded them when the connection was
 * created (reply: the packet travels against the entry's direction), so that its events need no
 * ipcache lookup. Identities already known, and those the entry lacks, stay as they are.
 */
static __always_inline void lxc_ct_identities(struct pkt4 *pkt, const struct ct4_entry *e, bool reply)
{
	if (!pkt->src_identity)
		pkt->src_identity = reply ? e->dst_identity : e->src_identity;
	if (!pkt->dst_identity)
		pkt->dst_identity = reply ? e->src_identity : e->dst_identity;
}

/* Forward, with a trace event when aggregation asks for one. */
static __always_inline int lxc_pass(struct __sk_buff *skb, struct pkt4 *pkt, __u8 obs, __u8 dir,
				    bool report)
{
	if (report)
		lxc_fill_identities(pkt);
	return pass_pkt(skb, pkt, obs, dir, report);
}

/* Drop a parsed packet with its identities in the event. */
static __always_inline int lxc_drop(struct __sk_buff *skb, struct pkt4 *pkt, __u16 reason, __u8 obs,
				    __u8 dir)
{
	lxc_fill_identities(pkt);
	return drop_pkt(skb, pkt, reason, obs, dir);
}

/* Report the verdict on a new connection of an endpoint isolated in that direction. */
static __always_inline void lxc_policy_event(struct __sk_buff *skb, const struct pkt4 *pkt,
					     const struct endpoint_info *ep, __u8 isolated, int verdict,
					     __u8 obs, __u8 dir)
{
	if (!ep || !(ep->flags & isolated))
		return;
	if (verdict == POLICY_VERDICT_ALLOW)
		emit_pkt_event(skb, pkt, EVENT_POLICY_VERDICT, obs, VERDICT_FORWARDED, 0, dir);
	else if (verdict == POLICY_VERDICT_AUDIT)
		emit_pkt_event(skb, pkt, EVENT_POLICY_VERDICT, obs, VERDICT_AUDIT, DROP_POLICY_DENIED, dir);
	else
		emit_pkt_event(skb, pkt, EVENT_POLICY_VERDICT, obs, VERDICT_DROPPED, DROP_POLICY_DENIED, dir);
}

/*
 * Run the to-pod datapath on pkt, a packet for the pod ep (NULL: an address that is no endpoint, not
 * isolated). Its events are observed at the pod's host veth. untranslated: the caller knows no NodePort
 * DNAT of this node translated the packet (its new connection may get CT_F_NO_UPLINK_NAT). reply_first:
 * the caller found the packet to be a reply (its conntrack lookups start there). Returns TC_ACT_OK or
 * TC_ACT_SHOT.
 */
static __always_inline int to_endpoint(struct __sk_buff *skb, struct pkt4 *pkt,
				       const struct endpoint_info *ep, __u64 now, bool untranslated,
				       bool reply_first)
{
	struct ct4_entry *e;
	struct ct4_key key;
	__u16 reason = 0;
	bool report, reply;
	int verdict;

	if (ep) {
		pkt->dst_identity = ep->identity;
		pkt->obs_ifindex = ep->ifindex;
	}
	/* through the tunnel, the sender named the source's identity (the VNI) */
	pkt->src_identity = tunnel_source_identity(skb);

	/* ICMP errors about a connection of this pod pass as related */
	if (pkt->icmp_error && ct_icmp_related(pkt, CT_EGRESS, CT_INGRESS, now)) {
		pkt->ev_flags |= EV_F_RELATED;
		return lxc_pass(skb, pkt, OBS_TO_ENDPOINT, METRIC_INGRESS, false);
	}

	/* reply of a connection this pod opened (translated ones get their frontend back), or a packet of
	 * one it accepted */
	e = ct_lookup_either(&key, pkt, CT_INGRESS, CT_EGRESS, reply_first, now, &reply);
	if (e && reply) {
		pkt->ev_flags |= EV_F_REPLY;
		report = ct_account(e, true, skb->len, pkt->tcp_flags, now);
		/* the backend's identity for translated ones, not the frontend's */
		lxc_ct_identities(pkt, e, true);
		if (e->rev_nat_index) {
			if (!pkt->src_identity)
				pkt->src_identity = ipcache_identity(pkt->saddr);
			reason = svc_rev_nat(skb, pkt, e, now);
			if (reason)
				return lxc_drop(skb, pkt, reason, OBS_TO_ENDPOINT, METRIC_INGRESS);
		}
		return lxc_pass(skb, pkt, OBS_TO_ENDPOINT, METRIC_INGRESS, report);
	}
	if (e) {
		lxc_ct_identities(pkt, e, false);
		return lxc_pass(skb, pkt, OBS_TO_ENDPOINT, METRIC_INGRESS,
				ct_account(e, false, skb->len, pkt->tcp_flags, now));
	}

	/* new connection: ingress policy of the pod against the source's identity */
	if (!pkt->src_identity)
		pkt->src_identity = ipcache_identity(pkt->saddr);
	verdict = policy_decide(ep, POLICY_INGRESS, pkt->src_identity, pkt->saddr, pkt);
	lxc_policy_event(skb, pkt, ep, EP_POLICY_INGRESS, verdict, OBS_TO_ENDPOINT, METRIC_INGRESS);
	if (verdict == POLICY_VERDICT_DROP)
		return lxc_drop(skb, pkt, DROP_POLICY_DENIED, OBS_TO_ENDPOINT, METRIC_INGRESS);

	ct_key_fwd(&key, pkt, CT_INGRESS);
	if (ct_create(&key, pkt, skb->len, now,
		      (verdict == POLICY_VERDICT_AUDIT ? CT_F_AUDIT : 0) |
		      (untranslated && pkt_pure_syn(pkt) ? CT_F_NO_UPLINK_NAT : 0), 0, 0, 0) < 0)
		return lxc_drop(skb, pkt, DROP_CT_MAP_FULL, OBS_TO_ENDPOINT, METRIC_INGRESS);
	pkt->ev_flags |= EV_F_NEW_CT;
	return lxc_pass(skb, pkt, OBS_TO_ENDPOINT, METRIC_INGRESS, true);
}

/* pkt as a program on the next hop would parse it: the tuple, without this hop's translation context. */
static __always_inline void pkt_next_hop(struct pkt4 *next, const struct pkt4 *pkt)
{
	*next = *pkt;
	next->ev_flags = 0;
	next->rev_nat_index = 0;
	next->orig_daddr = 0;
	next->orig_dport = 0;
	next->src_identity = 0;
	next->dst_identity = 0;
	next->policy_id = 0;
	next->obs_ifindex = 0;
}

/* Whether the agent gave the datapath a local pod's MACs (its interface's and its host veth's). */
static __always_inline bool ep_macs_known(const struct endpoint_info *ep)
{
	return (ep->mac[0] | ep->mac[1] | ep->mac[2] | ep->mac[3] | ep->mac[4] | ep->mac[5]) != 0;
}

/* What an ingress program's decision says of its packet, for host_route: */
#define HOST_ROUTE 1		/* host routing may forward it (the verdict is TC_ACT_OK) */
#define HOST_ROUTE_LOCAL_ONLY 2	/* only into a local pod */
#define HOST_ROUTE_UPLINK_DONE 4	/* node_to_uplink has nothing to do for it */

/*
 * Host routing from a tc ingress hook: forward pkt out of the interface the FIB names (local_only: only
 * packets for local pods); else, or when the FIB says no, TC_ACT_OK for the node's stack. A packet for a
 * local pod gets the to-pod datapath here and goes straight into the pod (bpf_redirect_peer): no second
 * program run on the veth, no backlog queue on the way. Its MACs come from the endpoint map when the agent
 * knows them (no FIB lookup, as Cilium's local delivery), else from the FIB when it names the pod's veth
 * with its neighbour known. uplink_done: the caller knows node_to_uplink has nothing to do for the packet;
 * redirected out of an interface, it carries HOST_ROUTED_MARK there.
 *
 * A global function: the verifier checks it once, for any packet, instead of once for every state its
 * caller reaches it in (lxc_from_pod reaches it from dozens: 3x the verifier's work inlined).
 */
__attribute__((noinline)) int host_route(struct __sk_buff *skb, const struct pkt4 *pkt, __u64 now, __u32 how)
{
	bool local_only = how & HOST_ROUTE_LOCAL_ONLY, uplink_done = how & HOST_ROUTE_UPLINK_DONE;
	const struct endpoint_info *ep;
	struct bpf_fib_lookup fib;
	struct pkt4 next;
	int verdict;
	long ret;

	if (!pkt)
		return TC_ACT_OK;
	ep = bpf_map_lookup_elem(&lxc_endpoints, &pkt->daddr);
	if ((local_only && !ep) || !host_routing_enabled())
		return TC_ACT_OK;
	if (ep && ep->ifindex != skb->ifindex && ep_macs_known(ep)) {
		/* the FIB's answer for a local pod, from its endpoint: both ways meet with the same state below
		 * (one verification of the to-pod code) */
		if (ttl_expiring(skb))
			return TC_ACT_OK;
		__builtin_memcpy(fib.dmac, ep->mac, ETH_ALEN);
		__builtin_memcpy(fib.smac, ep->node_mac, ETH_ALEN);
		fib.ifindex = ep->ifindex;
		ret = BPF_FIB_LKUP_RET_SUCCESS;
	} else {
		ret = fib_resolve(skb, &fib, pkt->saddr, pkt->daddr, pkt->proto);
		if (ret < 0)
			return TC_ACT_OK;
		if (ret != BPF_FIB_LKUP_RET_SUCCESS || fib.ifindex == skb->ifindex || !ep ||
		    ep->ifindex != fib.ifindex) {
			/* no local pod behind the next hop: out of the interface the FIB names */
			ret = fib_forward(skb, &fib, ret, false);
			if (ret < 0)
				return TC_ACT_OK;
			if (uplink_done && !skb->mark)
				skb->mark = HOST_ROUTED_MARK;
			return ret;
		}
	}
	/* translated here (the uplink's NodePort DNAT among others): never CT_F_NO_UPLINK_NAT */
	pkt_next_hop(&next, pkt);
	verdict = to_endpoint(skb, &next, ep, now, !pkt->rev_nat_index, pkt->ev_flags & EV_F_REPLY);
	if (verdict != TC_ACT_OK)
		return verdict;
	/* the mark stays behind, as when crossing the veth into the pod's namespace */
	skb->mark = 0;
	ret = fib_forward(skb, &fib, BPF_FIB_LKUP_RET_SUCCESS, true);
	return ret < 0 ? TC_ACT_OK : ret;
}

/* What the decision passed (verdict TC_ACT_OK, HOST_ROUTE in how) forwarded by host_route; else verdict. */
static __always_inline int host_route_ingress(struct __sk_buff *skb, const struct pkt4 *pkt, __u64 now,
					      int verdict, __u32 how)
{
	if (verdict != TC_ACT_OK || !(how & HOST_ROUTE))
		return verdict;
	return host_route(skb, pkt, now, how);
}

#endif /* VELVET_LIB_ENDPOINT_H */
