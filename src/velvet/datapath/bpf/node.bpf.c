// SPDX-License-Identifier: GPL-2.0
/*
 * node.bpf.c - the node's uplink (tcx on the interface towards external clients).
 *
 *   node_from_uplink: tcx ingress. NodePort, ExternalIP and LoadBalancer frontends (the latter
 *                     checked against loadBalancerSourceRanges) are DNATed to a backend, except
 *                     replies of connections local pods opened (conntrack first). A local
 *                     backend sees the client address (no SNAT) and the kernel routes to the pod;
 *                     a backend on another node is reached SNATed to the node (lib/nodeport.h),
 *                     and the replies of such connections, which come back here, are translated
 *                     back and sent towards the client. With host routing, what it passes to a
 *                     local pod gets the pod's to-pod datapath here and goes straight into the
 *                     pod (lib/endpoint.h).
 *   node_to_uplink:   tcx egress. Replies of local backends get the frontend back as source; a pod's
 *                     packet lxc_from_pod marked as needing nothing here passes at once.
 *
 * A frontend without backends is refused from here (RST / ICMP port unreachable sent back out
 * of the uplink); eTP=Local without a local backend drops silently, as kube-proxy does.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/conntrack.h"
#include "lib/lb.h"
#include "lib/service.h"
#include "lib/ipcache.h"
#include "lib/events.h"
#include "lib/reject.h"
#include "lib/nodeport.h"
#include "lib/endpoint.h"

/* Frontends reachable from outside the node. */
#define UPLINK_FRONTEND_FLAGS (SVC_NODEPORT | SVC_EXTERNAL_IP | SVC_LOADBALANCER)

/* Fill the identities of an event. */
static __always_inline void node_fill_identities(struct pkt4 *pkt)
{
	pkt->src_identity = ipcache_identity(pkt->saddr);
	pkt->dst_identity = ipcache_identity(pkt->daddr);
}

/* Whether pkt belongs to a live connection of a local pod, addressed to the pod itself: the reply of one
 * it opened (EV_F_REPLY set in pkt) or a packet of one it accepted. */
static __always_inline bool node_pod_tracked(struct pkt4 *pkt, __u64 now)
{
	struct ct4_key key;
	bool reply;

	if (pkt->icmp_error || !bpf_map_lookup_elem(&lxc_endpoints, &pkt->daddr))
		return false;
	if (!ct_lookup_either(&key, pkt, CT_INGRESS, CT_EGRESS, false, now, &reply))
		return false;
	if (reply)
		pkt->ev_flags |= EV_F_REPLY;
	return true;
}

/*
 * The uplink's side of a packet arriving, parsed into pkt: the NodePort reverse SNAT, the frontends' DNAT,
 * conntrack and events. Returns the verdict; *how (HOST_ROUTE_*): host routing may deliver it to a local
 * pod. A global function: the verifier checks it and the delivery (host_route) once each, apart, instead
 * of the delivery once for every state this reaches it in.
 */
__attribute__((noinline)) int from_uplink(struct __sk_buff *skb, struct pkt4 *pkt, __u64 now, __u32 *how)
{
	const struct node_config *cfg = nodeport_config();
	struct ct4_entry *e;
	struct ct4_key key;
	__u32 backend_id = 0;
	bool report = true;
	__u16 reason;
	int ret;

	if (!pkt || !how)
		return TC_ACT_SHOT;
	/* parse; other ethertypes, and fragments we hold no ports for, are not ours */
	ret = parse_ipv4(skb, pkt);
	if (ret == PARSE_NOT_IPV4 || ret == -DROP_FRAG_NOT_FOUND)
		return pass_pkt(skb, pkt, OBS_FROM_NETWORK, METRIC_INGRESS, false);
	if (ret < 0)
		return drop_pkt(skb, pkt, -ret, OBS_FROM_NETWORK, METRIC_INGRESS);

	/* replies of connections SNATed to other nodes' backends, and ICMP errors about them */
	if (cfg) {
		ret = nodeport_rev_snat(skb, pkt, cfg, now);
		if (ret >= 0)
			return ret;
	}

	/* translate external frontends to a backend; a packet of a local pod's connection stays that
	 * connection's (conntrack first, as in the kernel's NAT): no frontend lookups, whose keys are cold
	 * every time. */
	reason = node_pod_tracked(pkt, now) ? 0 :
		 svc_dnat(skb, pkt, false, UPLINK_FRONTEND_FLAGS, true, CT_F_NODEPORT, &backend_id, now);
	if (reason) {
		node_fill_identities(pkt);
		drop_pkt(skb, pkt, reason, OBS_FROM_NETWORK, METRIC_INGRESS);
		/* refuse like a closed port: the answer leaves through the uplink again */
		if (reason == DROP_NO_SERVICE_BACKEND && reject_pkt(skb, pkt) == 0)
			return bpf_redirect(skb->ifindex, 0);
		return TC_ACT_SHOT;
	}
	if (!pkt->rev_nat_index) {
		*how = HOST_ROUTE | HOST_ROUTE_LOCAL_ONLY;
		return pass_pkt(skb, pkt, OBS_FROM_NETWORK, METRIC_INGRESS, false);
	}

	/* the translated tuple leads node_to_uplink back to the frontend */
	ct_key_fwd(&key, pkt, CT_NODEPORT);
	e = ct_lookup(&key, pkt->tcp_flags, now);
	if (e) {
		report = ct_account(e, false, skb->len, pkt->tcp_flags, now);
	} else {
		if (ct_create(&key, pkt, skb->len, now, CT_F_NODEPORT, pkt->orig_daddr, pkt->orig_dport,
			      backend_id) < 0) {
			node_fill_identities(pkt);
			return drop_pkt(skb, pkt, DROP_CT_MAP_FULL, OBS_FROM_NETWORK, METRIC_INGRESS);
		}
		pkt->ev_flags |= EV_F_NEW_CT;
	}
	/* a backend that is neither a local endpoint nor the node itself lives elsewhere: SNAT, so that
	 * its replies come back here */
	if (cfg && !bpf_map_lookup_elem(&lxc_endpoints, &pkt->daddr) &&
	    ipcache_identity(pkt->daddr) != IDENTITY_HOST)
		return nodeport_snat_forward(skb, pkt, cfg, report, now);
	if (report)
		node_fill_identities(pkt);
	*how = HOST_ROUTE | HOST_ROUTE_LOCAL_ONLY;
	return pass_pkt(skb, pkt, OBS_FROM_NETWORK, METRIC_INGRESS, report);
}

SEC("tc")
int node_from_uplink(struct __sk_buff *skb)
{
	struct pkt4 pkt = {};
	__u64 now = clock_now();
	__u32 how = 0;
	int ret;

	ret = from_uplink(skb, &pkt, now, &how);
	return host_route_ingress(skb, &pkt, now, ret, how);
}

/*
 * An ICMP error a local backend sends about a connection DNATed at the uplink (quoting client ->
 * backend): it names the frontend instead, as outer source and quoted destination, so that the
 * client matches it to its own packet. Returns TC_ACT_OK when translated, -1 when pkt is no such
 * error.
 */
static __always_inline int node_local_icmp_error(struct __sk_buff *skb, struct pkt4 *pkt, __u64 now)
{
	struct ct4_key key = {
		.saddr = pkt->inner_saddr,
		.daddr = pkt->inner_daddr,
		.sport = pkt->inner_sport,
		.dport = pkt->inner_dport,
		.proto = pkt->inner_proto,
		.dir = CT_NODEPORT,
	};
	struct ct4_entry *e;
	__be32 frontend;
	__be16 fport;

	if (pkt->inner_proto != IPPROTO_TCP && pkt->inner_proto != IPPROTO_UDP)
		return -1;
	e = ct_lookup(&key, 0, now);
	if (!e || !e->rev_nat_index)
		return -1;
	frontend = e->nat_addr;
	fport = e->nat_port;
	pkt->ev_flags |= EV_F_RELATED;
	pkt->src_identity = ipcache_identity(pkt->saddr);
	pkt->dst_identity = ipcache_identity(pkt->daddr);
	if (icmp_error_rewrite(skb, pkt, frontend, pkt->daddr, pkt->inner_saddr, pkt->inner_sport, frontend,
			       fport) < 0)
		return drop_pkt(skb, pkt, DROP_WRITE_ERROR, OBS_TO_NETWORK, METRIC_EGRESS);
	pkt->saddr = frontend;
	return pass_pkt(skb, pkt, OBS_TO_NETWORK, METRIC_EGRESS, true);
}

SEC("tc")
int node_to_uplink(struct __sk_buff *skb)
{
	struct pkt4 pkt = {};
	__u64 now = clock_now();
	int ret;

	/* a pod's packet lxc_from_pod forwarded, knowing there is nothing to translate (types.h) */
	if (skb->mark == HOST_ROUTED_MARK) {
		skb->mark = 0;
		metrics_add(METRIC_FORWARDED, METRIC_EGRESS, skb->len);
		return TC_ACT_OK;
	}

	/* only well-formed IPv4 can be a reply we translated */
	if (parse_ipv4(skb, &pkt) != 0)
		return pass_pkt(skb, &pkt, OBS_TO_NETWORK, METRIC_EGRESS, false);

	/* ICMP errors of local backends about such connections */
	if (pkt.icmp_error) {
		ret = node_local_icmp_error(skb, &pkt, now);
		if (ret >= 0)
			return ret;
	}

	/* reply of a connection DNATed at the uplink? */
	ret = nodeport_local_reply(skb, &pkt, now);
	return ret >= 0 ? ret : pass_pkt(skb, &pkt, OBS_TO_NETWORK, METRIC_EGRESS, false);
}

char LICENSE[] SEC("license") = "GPL";
