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
 * (VNI = the pod's identity; a reply of a NodePort connection the uplink DNATed to the pod gets the
 * frontend back as source first), and lxc_to_pod takes the source identity of a packet that came
 * through the tunnel from its VNI instead of the ipcache. With host routing lxc_from_pod forwards
 * the rest itself (FIB lookup + redirect, lib/fib.h): to another node's pods out of the uplink, to
 * a local pod straight into it, running that pod's to-pod datapath first (lib/endpoint.h, the body of
 * lxc_to_pod).
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
#include "lib/nodeport.h"
#include "lib/endpoint.h"

/* Frontends pods reach through the per-packet fallback of the socket LB. */
#define LXC_FRONTEND_FLAGS (SVC_CLUSTERIP | SVC_NODEPORT | SVC_EXTERNAL_IP | SVC_LOADBALANCER)

/*
 * In tunnel mode, a reply of a connection the uplink DNATed to this pod (a client on another node's pod
 * network) gets the frontend back as source here, as node_to_uplink gives it to replies leaving through
 * the uplink: encapsulated, node_to_uplink would only see the tunnel's packet. Returns verdict otherwise.
 */
static __always_inline int lxc_tunnel_nodeport_reply(struct __sk_buff *skb, const struct pkt4 *pkt, __u64 now,
						     int verdict)
{
	struct pkt4 wire;
	int ret;

	if (verdict != TC_ACT_OK || pkt->icmp_error || !tunnel_ifindex() || !ipcache_tunnel_endpoint(pkt->daddr))
		return verdict;
	pkt_next_hop(&wire, pkt);
	ret = nodeport_local_reply(skb, &wire, now);
	return ret >= 0 ? ret : verdict;
}

/*
 * The pod's side of a packet leaving it, parsed into pkt: the source check, conntrack, the per-packet
 * service DNAT, egress policy, events and the tunnel. Returns the verdict; *how (HOST_ROUTE_*) says what
 * host routing may do with it.
 * A global function: the verifier checks it and the delivery (host_route) once each, apart, instead of
 * the delivery once for every state this reaches it in (3x the work, inlined).
 */
__attribute__((noinline)) int from_pod(struct __sk_buff *skb, struct pkt4 *pkt, __u64 now, __u32 *how)
{
	struct endpoint_info *ep;
	struct ct4_entry *e;
	struct ct4_key key;
	__u32 backend_id = 0;
	__u16 reason = 0;
	bool report = false;
	bool uplink_done = false;
	bool reply;
	int ret, verdict;

	if (!pkt || !how)
		return TC_ACT_SHOT;
	/* parse; other ethertypes (ARP, IPv6) pass */
	ret = parse_ipv4(skb, pkt);
	if (ret == PARSE_NOT_IPV4)
		return pass_pkt(skb, pkt, OBS_FROM_ENDPOINT, METRIC_EGRESS, false);
	if (ret < 0)
		return drop_pkt(skb, pkt, -ret, OBS_FROM_ENDPOINT, METRIC_EGRESS);

	/* the source must be the pod behind this veth */
	ep = bpf_map_lookup_elem(&lxc_endpoints, &pkt->saddr);
	if (!ep || ep->ifindex != skb->ifindex)
		return lxc_drop(skb, pkt, DROP_INVALID_SOURCE, OBS_FROM_ENDPOINT, METRIC_EGRESS);
	pkt->src_identity = ep->identity;

	/* ICMP errors about a connection of this pod pass as related */
	if (pkt->icmp_error && ct_icmp_related(pkt, CT_INGRESS, CT_EGRESS, now)) {
		pkt->ev_flags |= EV_F_RELATED;
		goto forward;
	}

	/* a tracked connection as the packet is addressed: one this pod opened (translated by the socket LB,
	 * or to no frontend), or the reply of one it accepted */
	e = ct_lookup_either(&key, pkt, CT_EGRESS, CT_INGRESS, false, now, &reply);
	if (!e) {
		/* service frontends the socket LB did not translate: DNAT here */
		reason = svc_dnat(skb, pkt, true, LXC_FRONTEND_FLAGS, false, 0, &backend_id, now);
		if (reason) {
			lxc_drop(skb, pkt, reason, OBS_FROM_ENDPOINT, METRIC_EGRESS);
			/* refuse like a closed port: the answer goes straight back into the pod */
			if (reason == DROP_NO_SERVICE_BACKEND && reject_pkt(skb, pkt) == 0)
				return bpf_redirect_peer(skb->ifindex, 0);
			return TC_ACT_SHOT;
		}
		/* a connection this pod opened to a frontend, by its translated tuple */
		ct_key_fwd(&key, pkt, CT_EGRESS);
		reply = false;
		if (pkt->rev_nat_index)
			e = ct_lookup(&key, pkt->tcp_flags, now);
	}
	if (e) {
		if (reply)
			pkt->ev_flags |= EV_F_REPLY;
		report = ct_account(e, reply, skb->len, pkt->tcp_flags, now);
		lxc_ct_identities(pkt, e, reply);
		uplink_done = e->flags & CT_F_NO_UPLINK_NAT;
		goto forward;
	}

	/* new connection: egress policy of the pod against the destination's identity */
	pkt->dst_identity = ipcache_identity(pkt->daddr);
	verdict = policy_decide(ep, POLICY_EGRESS, pkt->dst_identity, pkt->daddr, pkt);
	lxc_policy_event(skb, pkt, ep, EP_POLICY_EGRESS, verdict, OBS_FROM_ENDPOINT, METRIC_EGRESS);
	if (verdict == POLICY_VERDICT_DROP)
		return drop_pkt(skb, pkt, DROP_POLICY_DENIED, OBS_FROM_ENDPOINT, METRIC_EGRESS);

	/* track it; translated connections remember their frontend for the reverse NAT; a pure SYN is
	 * no reply of a connection the uplink translated: node_to_uplink has nothing to do for it */
	uplink_done = pkt_pure_syn(pkt);
	if (ct_create(&key, pkt, skb->len, now,
		      (verdict == POLICY_VERDICT_AUDIT ? CT_F_AUDIT : 0) | (uplink_done ? CT_F_NO_UPLINK_NAT : 0),
		      pkt->orig_daddr, pkt->orig_dport, backend_id) < 0)
		return drop_pkt(skb, pkt, DROP_CT_MAP_FULL, OBS_FROM_ENDPOINT, METRIC_EGRESS);
	pkt->ev_flags |= EV_F_NEW_CT;
	report = true;

forward:
	/* in tunnel mode through the tunnel to the destination's node; else with host routing out of
	 * the interface the FIB names; else to the node's routing */
	ret = lxc_pass(skb, pkt, OBS_FROM_ENDPOINT, METRIC_EGRESS, report);
	if (!uplink_done)
		ret = lxc_tunnel_nodeport_reply(skb, pkt, now, ret);
	*how = HOST_ROUTE | (uplink_done ? HOST_ROUTE_UPLINK_DONE : 0);
	return tunnel_redirect(skb, pkt->daddr, pkt->src_identity, ret);
}

SEC("tc")
int lxc_from_pod(struct __sk_buff *skb)
{
	struct pkt4 pkt = {};
	__u64 now = clock_now();
	__u32 how = 0;
	int ret;

	ret = from_pod(skb, &pkt, now, &how);
	return host_route_ingress(skb, &pkt, now, ret, how);
}

SEC("tc")
int lxc_to_pod(struct __sk_buff *skb)
{
	struct pkt4 pkt = {};
	__u64 now = clock_now();
	int ret;

	/* parse; other ethertypes (ARP, IPv6) pass */
	ret = parse_ipv4(skb, &pkt);
	if (ret == PARSE_NOT_IPV4)
		return pass_pkt(skb, &pkt, OBS_TO_ENDPOINT, METRIC_INGRESS, false);
	if (ret < 0)
		return drop_pkt(skb, &pkt, -ret, OBS_TO_ENDPOINT, METRIC_INGRESS);
	/* the destination pod; unknown addresses are not isolated */
	return to_endpoint(skb, &pkt, bpf_map_lookup_elem(&lxc_endpoints, &pkt.daddr), now, false, false);
}

char LICENSE[] SEC("license") = "GPL";
