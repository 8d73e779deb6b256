// SPDX-License-Identifier: GPL-2.0
/*
 * node.bpf.c - the node's uplink (tcx on the interface towards external clients).
 *
 *   node_from_uplink: tcx ingress. NodePort, ExternalIP and LoadBalancer frontends (the latter
 *                     checked against loadBalancerSourceRanges) are DNATed to a backend. A local
 *                     backend sees the client address (no SNAT) and the kernel routes to the pod;
 *                     a backend on another node is reached SNATed to the node (lib/nodeport.h),
 *                     and the replies of such connections, which come back here, are translated
 *                     back and sent towards the client.
 *   node_to_uplink:   tcx egress. Replies of local backends get the frontend back as source.
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

/* Frontends reachable from outside the node. */
#define UPLINK_FRONTEND_FLAGS (SVC_NODEPORT | SVC_EXTERNAL_IP | SVC_LOADBALANCER)

/* Fill the identities of an event. */
static __always_inline void node_fill_identities(struct pkt4 *pkt)
{
	pkt->src_identity = ipcache_identity(pkt->saddr);
	pkt->dst_identity = ipcache_identity(pkt->daddr);
}

/*
 * A reply of a connection SNATed to a backend on another node (backend -> node address:port):
 * the client back as destination, the frontend as source, forwarded towards the client. Returns
 * the tc verdict, or -1 when pkt is no such reply.
 */
static __always_inline int node_snat_reply(struct __sk_buff *skb, struct pkt4 *pkt,
					   const struct node_config *cfg, __u64 now)
{
	struct snat4_key key = {
		.saddr = pkt->saddr,
		.daddr = pkt->daddr,
		.sport = pkt->sport,
		.dport = pkt->dport,
		.proto = pkt->proto,
		.dir = SNAT_IN,
	};
	struct snat4_entry *in;
	struct ct4_entry *e;
	__u16 reason = 0;
	int verdict = -1;
	__be32 client;
	__be16 cport;
	bool report;

	if (pkt->daddr != cfg->snat_addr || (pkt->proto != IPPROTO_TCP && pkt->proto != IPPROTO_UDP))
		return -1;
	in = bpf_map_lookup_elem(&snat4, &key);
	if (!in)
		return -1;
	client = in->addr;
	cport = in->port;
	/* the port is the connection's only while the connection lives */
	e = nodeport_ct(client, cport, pkt->saddr, pkt->sport, pkt->proto, pkt->tcp_flags, now);
	if (!e)
		return -1;
	pkt->ev_flags |= EV_F_REPLY;
	report = ct_account(e, true, skb->len, pkt->tcp_flags, now);
	/* events name the backend as source: resolve it before the translation */
	pkt->src_identity = ipcache_identity(pkt->saddr);

	if (nat4_rewrite(skb, pkt, true, client, cport) < 0) {
		reason = DROP_WRITE_ERROR;
	} else {
		pkt->daddr = client;
		pkt->dport = cport;
		reason = svc_rev_nat(skb, pkt, e, now);
	}
	if (!reason) {
		verdict = nodeport_forward(skb, pkt->saddr, pkt->daddr, pkt->proto);
		if (verdict < 0)
			reason = DROP_NO_FIB;
	}
	pkt->dst_identity = ipcache_identity(pkt->daddr);
	if (reason)
		return drop_pkt(skb, pkt, reason, OBS_TO_NETWORK, METRIC_EGRESS);
	pass_pkt(skb, pkt, OBS_TO_NETWORK, METRIC_EGRESS, report);
	return verdict;
}

/*
 * An ICMP error about a connection SNATed to a backend on another node (the backend, or a router on
 * the way, answering the node's address:port): turned into the error the client would get from the
 * frontend about its own packet, and sent towards the client. Returns the tc verdict, or -1 when
 * pkt is no such error.
 */
static __always_inline int node_snat_icmp_error(struct __sk_buff *skb, struct pkt4 *pkt,
						const struct node_config *cfg, __u64 now)
{
	struct snat4_key key = {
		.saddr = pkt->inner_daddr,
		.daddr = pkt->inner_saddr,
		.sport = pkt->inner_dport,
		.dport = pkt->inner_sport,
		.proto = pkt->inner_proto,
		.dir = SNAT_IN,
	};
	struct snat4_entry *in;
	struct ct4_entry *e;
	__be32 client, frontend;
	__be16 cport, fport;
	int verdict;

	if (pkt->daddr != cfg->snat_addr || pkt->inner_saddr != cfg->snat_addr ||
	    (pkt->inner_proto != IPPROTO_TCP && pkt->inner_proto != IPPROTO_UDP))
		return -1;
	in = bpf_map_lookup_elem(&snat4, &key);
	if (!in)
		return -1;
	client = in->addr;
	cport = in->port;
	e = nodeport_ct(client, cport, pkt->inner_daddr, pkt->inner_dport, pkt->inner_proto, 0, now);
	if (!e)
		return -1;
	frontend = e->nat_addr;
	fport = e->nat_port;
	pkt->ev_flags |= EV_F_RELATED;
	pkt->src_identity = ipcache_identity(pkt->saddr);
	pkt->dst_identity = ipcache_identity(client);
	if (icmp_error_rewrite(skb, pkt, frontend, client, client, cport, frontend, fport) < 0)
		return drop_pkt(skb, pkt, DROP_WRITE_ERROR, OBS_TO_NETWORK, METRIC_EGRESS);
	pkt->saddr = frontend;
	pkt->daddr = client;
	verdict = nodeport_forward(skb, frontend, client, IPPROTO_ICMP);
	if (verdict < 0)
		return drop_pkt(skb, pkt, DROP_NO_FIB, OBS_TO_NETWORK, METRIC_EGRESS);
	pass_pkt(skb, pkt, OBS_TO_NETWORK, METRIC_EGRESS, true);
	return verdict;
}

/*
 * A connection DNATed to a backend on another node: the source becomes the node's address and
 * the connection's port, and the packet leaves towards the backend's node. Events keep the
 * client as source (the connection as the client made it). Returns the tc verdict.
 */
static __always_inline int node_snat_forward(struct __sk_buff *skb, struct pkt4 *pkt,
					     const struct node_config *cfg, bool report, __u64 now)
{
	__be16 port = 0;
	int verdict = -1;
	__u16 reason;

	reason = snat_port(pkt, cfg, &port, now);
	if (!reason && nat4_rewrite(skb, pkt, false, cfg->snat_addr, port) < 0)
		reason = DROP_WRITE_ERROR;
	if (!reason) {
		verdict = nodeport_forward(skb, cfg->snat_addr, pkt->daddr, pkt->proto);
		if (verdict < 0)
			reason = DROP_NO_FIB;
	}
	if (reason) {
		node_fill_identities(pkt);
		return drop_pkt(skb, pkt, reason, OBS_FROM_NETWORK, METRIC_INGRESS);
	}
	if (report)
		node_fill_identities(pkt);
	pass_pkt(skb, pkt, OBS_FROM_NETWORK, METRIC_INGRESS, report);
	return verdict;
}

SEC("tc")
int node_from_uplink(struct __sk_buff *skb)
{
	const struct node_config *cfg = nodeport_config();
	struct pkt4 pkt = {};
	struct ct4_entry *e;
	struct ct4_key key;
	__u64 now = bpf_ktime_get_ns();
	__u32 backend_id = 0;
	bool report = true;
	__u16 reason;
	int ret;

	/* parse; other ethertypes, and fragments we hold no ports for, are not ours */
	ret = parse_ipv4(skb, &pkt);
	if (ret == PARSE_NOT_IPV4 || ret == -DROP_FRAG_NOT_FOUND)
		return pass_pkt(skb, &pkt, OBS_FROM_NETWORK, METRIC_INGRESS, false);
	if (ret < 0)
		return drop_pkt(skb, &pkt, -ret, OBS_FROM_NETWORK, METRIC_INGRESS);

	/* replies of connections SNATed to other nodes' backends, and ICMP errors about them */
	if (cfg) {
		if (pkt.icmp_error)
			ret = node_snat_icmp_error(skb, &pkt, cfg, now);
		else
			ret = node_snat_reply(skb, &pkt, cfg, now);
		if (ret >= 0)
			return ret;
	}

	/* translate external frontends to a backend */
	reason = svc_dnat(skb, &pkt, false, UPLINK_FRONTEND_FLAGS, true, CT_F_NODEPORT, &backend_id, now);
	if (reason) {
		node_fill_identities(&pkt);
		drop_pkt(skb, &pkt, reason, OBS_FROM_NETWORK, METRIC_INGRESS);
		/* refuse like a closed port: the answer leaves through the uplink again */
		if (reason == DROP_NO_SERVICE_BACKEND && reject_pkt(skb, &pkt) == 0)
			return bpf_redirect(skb->ifindex, 0);
		return TC_ACT_SHOT;
	}
	if (!pkt.rev_nat_index)
		return pass_pkt(skb, &pkt, OBS_FROM_NETWORK, METRIC_INGRESS, false);

	/* the translated tuple leads node_to_uplink back to the frontend */
	ct_key_fwd(&key, &pkt, CT_NODEPORT);
	e = ct_lookup(&key, pkt.tcp_flags, now);
	if (e) {
		report = ct_account(e, false, skb->len, pkt.tcp_flags, now);
	} else {
		if (ct_create(&key, &pkt, skb->len, now, CT_F_NODEPORT, pkt.orig_daddr, pkt.orig_dport,
			      backend_id) < 0) {
			node_fill_identities(&pkt);
			return drop_pkt(skb, &pkt, DROP_CT_MAP_FULL, OBS_FROM_NETWORK, METRIC_INGRESS);
		}
		pkt.ev_flags |= EV_F_NEW_CT;
	}
	/* a backend that is neither a local endpoint nor the node itself lives elsewhere: SNAT, so that
	 * its replies come back here */
	if (cfg && !bpf_map_lookup_elem(&lxc_endpoints, &pkt.daddr) &&
	    ipcache_identity(pkt.daddr) != IDENTITY_HOST)
		return node_snat_forward(skb, &pkt, cfg, report, now);
	if (report)
		node_fill_identities(&pkt);
	return pass_pkt(skb, &pkt, OBS_FROM_NETWORK, METRIC_INGRESS, report);
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
	struct ct4_entry *e;
	struct ct4_key key;
	__u64 now = bpf_ktime_get_ns();
	__u16 reason;
	bool report;
	int ret;

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
	ct_key_rev(&key, &pkt, CT_NODEPORT);
	e = ct_lookup(&key, pkt.tcp_flags, now);
	if (!e)
		return pass_pkt(skb, &pkt, OBS_TO_NETWORK, METRIC_EGRESS, false);
	pkt.ev_flags |= EV_F_REPLY;
	report = ct_account(e, true, skb->len, pkt.tcp_flags, now);

	/* events name the backend as source: resolve it before the translation */
	if (report)
		pkt.src_identity = ipcache_identity(pkt.saddr);

	/* source back to the frontend the client talked to */
	reason = svc_rev_nat(skb, &pkt, e, now);
	if (reason) {
		if (!pkt.src_identity)
			pkt.src_identity = ipcache_identity(pkt.saddr);
		pkt.dst_identity = ipcache_identity(pkt.daddr);
		return drop_pkt(skb, &pkt, reason, OBS_TO_NETWORK, METRIC_EGRESS);
	}
	if (report)
		pkt.dst_identity = ipcache_identity(pkt.daddr);
	return pass_pkt(skb, &pkt, OBS_TO_NETWORK, METRIC_EGRESS, report);
}

char LICENSE[] SEC("license") = "GPL";
