// SPDX-License-Identifier: GPL-2.0
/*
 * lxc.bpf.c - the pod veth datapath (tcx on the HOST side of every pod's veth).
 *
 *   lxc_from_pod: tcx ingress of the host veth = packets leaving the pod.
 *   lxc_to_pod:   tcx egress of the host veth  = packets entering the pod.
 *
 * What they pass returns TC_ACT_OK for the node's routing to forward, what they drop
 * TC_ACT_SHOT; lxc_from_pod redirects its rejections (RST / ICMP unreachable for service
 * frontends without backends) straight back into the pod with bpf_redirect_peer. In tunnel
 * mode lxc_from_pod sends what it passes to another node's pod straight to the VXLAN device
 * (VNI = the pod's identity), and lxc_to_pod takes the source identity of a packet that came
 * through the tunnel from its VNI instead of the ipcache. With host routing lxc_from_pod forwards
 * the rest itself (FIB lookup + redirect, lib/fib.h): to another node's pods out of the uplink, to
 * a local pod out of its host veth, where lxc_to_pod runs as for any packet.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/conntrack.h"
#include "lib/lb.h"
#include "lib/service.h"
#include "lib/policy.h"
#include "lib/ipcache.h"
#include "lib/events.h"
#include "lib/reject.h"
#include "lib/tunnel.h"
#include "lib/fib.h"

/* Frontends pods reach through the per-packet fallback of the socket LB. */
#define LXC_FRONTEND_FLAGS (SVC_CLUSTERIP | SVC_NODEPORT | SVC_EXTERNAL_IP | SVC_LOADBALANCER)

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

SEC("tc")
int lxc_from_pod(struct __sk_buff *skb)
{
	struct endpoint_info *ep;
	struct pkt4 pkt = {};
	struct ct4_entry *e;
	struct ct4_key key;
	__u64 now = clock_now();
	__u32 backend_id = 0;
	__u16 reason = 0;
	bool report = false;
	int ret, verdict;

	/* parse; other ethertypes (ARP, IPv6) pass */
	ret = parse_ipv4(skb, &pkt);
	if (ret == PARSE_NOT_IPV4)
		return pass_pkt(skb, &pkt, OBS_FROM_ENDPOINT, METRIC_EGRESS, false);
	if (ret < 0)
		return drop_pkt(skb, &pkt, -ret, OBS_FROM_ENDPOINT, METRIC_EGRESS);

	/* the source must be the pod behind this veth */
	ep = bpf_map_lookup_elem(&lxc_endpoints, &pkt.saddr);
	if (!ep || ep->ifindex != skb->ifindex)
		return lxc_drop(skb, &pkt, DROP_INVALID_SOURCE, OBS_FROM_ENDPOINT, METRIC_EGRESS);
	pkt.src_identity = ep->identity;

	/* ICMP errors about a connection of this pod pass as related */
	if (pkt.icmp_error && ct_icmp_related(&pkt, CT_INGRESS, CT_EGRESS, now)) {
		pkt.ev_flags |= EV_F_RELATED;
		goto forward;
	}

	/* reply of a connection this pod accepted */
	ct_key_rev(&key, &pkt, CT_INGRESS);
	e = ct_lookup(&key, pkt.tcp_flags, now);
	if (e) {
		pkt.ev_flags |= EV_F_REPLY;
		report = ct_account(e, true, skb->len, pkt.tcp_flags, now);
		lxc_ct_identities(&pkt, e, true);
		goto forward;
	}

	/* service frontends the socket LB did not translate: DNAT here */
	reason = svc_dnat(skb, &pkt, true, LXC_FRONTEND_FLAGS, false, 0, &backend_id, now);
	if (reason) {
		lxc_drop(skb, &pkt, reason, OBS_FROM_ENDPOINT, METRIC_EGRESS);
		/* refuse like a closed port: the answer goes straight back into the pod */
		if (reason == DROP_NO_SERVICE_BACKEND && reject_pkt(skb, &pkt) == 0)
			return bpf_redirect_peer(skb->ifindex, 0);
		return TC_ACT_SHOT;
	}

	/* established connection this pod opened */
	ct_key_fwd(&key, &pkt, CT_EGRESS);
	e = ct_lookup(&key, pkt.tcp_flags, now);
	if (e) {
		report = ct_account(e, false, skb->len, pkt.tcp_flags, now);
		lxc_ct_identities(&pkt, e, false);
		goto forward;
	}

	/* new connection: egress policy of the pod against the destination's identity */
	pkt.dst_identity = ipcache_identity(pkt.daddr);
	verdict = policy_decide(ep, POLICY_EGRESS, pkt.dst_identity, pkt.daddr, &pkt);
	lxc_policy_event(skb, &pkt, ep, EP_POLICY_EGRESS, verdict, OBS_FROM_ENDPOINT, METRIC_EGRESS);
	if (verdict == POLICY_VERDICT_DROP)
		return drop_pkt(skb, &pkt, DROP_POLICY_DENIED, OBS_FROM_ENDPOINT, METRIC_EGRESS);

	/* track it; translated connections remember their frontend for the reverse NAT */
	if (ct_create(&key, &pkt, skb->len, now, verdict == POLICY_VERDICT_AUDIT ? CT_F_AUDIT : 0,
		      pkt.orig_daddr, pkt.orig_dport, backend_id) < 0)
		return drop_pkt(skb, &pkt, DROP_CT_MAP_FULL, OBS_FROM_ENDPOINT, METRIC_EGRESS);
	pkt.ev_flags |= EV_F_NEW_CT;
	report = true;

forward:
	/* in tunnel mode through the tunnel to the destination's node; else with host routing out of
	 * the interface the FIB names; else to the node's routing */
	ret = lxc_pass(skb, &pkt, OBS_FROM_ENDPOINT, METRIC_EGRESS, report);
	ret = tunnel_redirect(skb, pkt.daddr, pkt.src_identity, ret);
	return host_route(skb, pkt.saddr, pkt.daddr, pkt.proto, ret);
}

SEC("tc")
int lxc_to_pod(struct __sk_buff *skb)
{
	struct endpoint_info *ep;
	struct pkt4 pkt = {};
	struct ct4_entry *e;
	struct ct4_key key;
	__u64 now = clock_now();
	__u16 reason = 0;
	bool report;
	int ret, verdict;

	/* parse; other ethertypes (ARP, IPv6) pass */
	ret = parse_ipv4(skb, &pkt);
	if (ret == PARSE_NOT_IPV4)
		return pass_pkt(skb, &pkt, OBS_TO_ENDPOINT, METRIC_INGRESS, false);
	if (ret < 0)
		return drop_pkt(skb, &pkt, -ret, OBS_TO_ENDPOINT, METRIC_INGRESS);

	/* the destination pod; unknown addresses are not isolated */
	ep = bpf_map_lookup_elem(&lxc_endpoints, &pkt.daddr);
	if (ep)
		pkt.dst_identity = ep->identity;
	/* through the tunnel, the sender named the source's identity (the VNI) */
	pkt.src_identity = tunnel_source_identity(skb);

	/* ICMP errors about a connection of this pod pass as related */
	if (pkt.icmp_error && ct_icmp_related(&pkt, CT_EGRESS, CT_INGRESS, now)) {
		pkt.ev_flags |= EV_F_RELATED;
		return lxc_pass(skb, &pkt, OBS_TO_ENDPOINT, METRIC_INGRESS, false);
	}

	/* reply of a connection this pod opened; translated ones get their frontend back */
	ct_key_rev(&key, &pkt, CT_EGRESS);
	e = ct_lookup(&key, pkt.tcp_flags, now);
	if (e) {
		pkt.ev_flags |= EV_F_REPLY;
		report = ct_account(e, true, skb->len, pkt.tcp_flags, now);
		/* the backend's identity for translated ones, not the frontend's */
		lxc_ct_identities(&pkt, e, true);
		if (e->rev_nat_index) {
			if (!pkt.src_identity)
				pkt.src_identity = ipcache_identity(pkt.saddr);
			reason = svc_rev_nat(skb, &pkt, e, now);
			if (reason)
				return lxc_drop(skb, &pkt, reason, OBS_TO_ENDPOINT, METRIC_INGRESS);
		}
		return lxc_pass(skb, &pkt, OBS_TO_ENDPOINT, METRIC_INGRESS, report);
	}

	/* established connection this pod accepted */
	ct_key_fwd(&key, &pkt, CT_INGRESS);
	e = ct_lookup(&key, pkt.tcp_flags, now);
	if (e) {
		lxc_ct_identities(&pkt, e, false);
		return lxc_pass(skb, &pkt, OBS_TO_ENDPOINT, METRIC_INGRESS,
				ct_account(e, false, skb->len, pkt.tcp_flags, now));
	}

	/* new connection: ingress policy of the pod against the source's identity */
	if (!pkt.src_identity)
		pkt.src_identity = ipcache_identity(pkt.saddr);
	verdict = policy_decide(ep, POLICY_INGRESS, pkt.src_identity, pkt.saddr, &pkt);
	lxc_policy_event(skb, &pkt, ep, EP_POLICY_INGRESS, verdict, OBS_TO_ENDPOINT, METRIC_INGRESS);
	if (verdict == POLICY_VERDICT_DROP)
		return lxc_drop(skb, &pkt, DROP_POLICY_DENIED, OBS_TO_ENDPOINT, METRIC_INGRESS);

	if (ct_create(&key, &pkt, skb->len, now, verdict == POLICY_VERDICT_AUDIT ? CT_F_AUDIT : 0,
		      0, 0, 0) < 0)
		return lxc_drop(skb, &pkt, DROP_CT_MAP_FULL, OBS_TO_ENDPOINT, METRIC_INGRESS);
	pkt.ev_flags |= EV_F_NEW_CT;
	return lxc_pass(skb, &pkt, OBS_TO_ENDPOINT, METRIC_INGRESS, true);
}

char LICENSE[] SEC("license") = "GPL";
