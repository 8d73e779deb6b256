/* SPDX-License-Identifier: GPL-2.0 */
/*
 * nodeport.h - external connections to backends on other nodes: SNAT to the node's address with
 * a port of the connection's own, the reverse translation of replies, and forwarding of both
 * through a FIB lookup and a redirect (see types.h, "NodePort to backends on other nodes").
 *
 * Entry points: nodeport_snat_forward (a connection just DNATed to a backend elsewhere) and
 * nodeport_rev_snat (what comes back). The redirect goes out of whatever interface the FIB names
 * for the destination: the uplink in native routing, or any device a route points to.
 */
#ifndef VELVET_LIB_NODEPORT_H
#define VELVET_LIB_NODEPORT_H

#include "conntrack.h"
#include "csum.h"
#include "events.h"
#include "fib.h"
#include "ipcache.h"
#include "service.h"

#define SNAT_RETRIES 16

/* The node's settings, or NULL when SNAT is off (no address configured). */
static __always_inline const struct node_config *nodeport_config(void)
{
	__u32 zero = 0;
	const struct node_config *cfg = bpf_map_lookup_elem(&node_config, &zero);

	return cfg && cfg->snat_addr ? cfg : NULL;
}

/* The CT_NODEPORT entry (client -> backend) of a connection, if alive: the SNAT entries' lifetime. */
static __always_inline struct ct4_entry *nodeport_ct(__be32 client, __be16 cport, __be32 backend,
						     __be16 bport, __u8 proto, __u8 tcp_flags, __u64 now)
{
	struct ct4_key key = {
		.saddr = client,
		.daddr = backend,
		.sport = cport,
		.dport = bport,
		.proto = proto,
		.dir = CT_NODEPORT,
	};

	return ct_lookup(&key, tcp_flags, now);
}

/*
 * The node port of pkt's connection (pkt DNATed: client -> backend): the one it has while its
 * SNAT_IN entry still names it, else a newly allocated one. 0 or DROP_SNAT_NO_PORT.
 */
static __always_inline __u16 snat_port(const struct pkt4 *pkt, const struct node_config *cfg,
				       __be16 *port, __u64 now)
{
	struct snat4_key out_key = {
		.saddr = pkt->saddr,
		.daddr = pkt->daddr,
		.sport = pkt->sport,
		.dport = pkt->dport,
		.proto = pkt->proto,
		.dir = SNAT_OUT,
	};
	struct snat4_key in_key = {
		.saddr = pkt->daddr,
		.daddr = cfg->snat_addr,
		.sport = pkt->dport,
		.proto = pkt->proto,
		.dir = SNAT_IN,
	};
	struct snat4_entry want = { .created_ns = now, .addr = pkt->saddr, .port = pkt->sport };
	struct snat4_entry *out, *in;
	__u32 min = cfg->snat_port_min, max = cfg->snat_port_max, range, start, i;

	/* an existing connection keeps its port while the reverse entry is still its own */
	out = bpf_map_lookup_elem(&snat4, &out_key);
	if (out && out->addr == cfg->snat_addr) {
		in_key.dport = out->port;
		in = bpf_map_lookup_elem(&snat4, &in_key);
		if (in && in->addr == pkt->saddr && in->port == pkt->sport) {
			*port = out->port;
			return 0;
		}
	}

	/* allocate: a random port, then the next ones; a port of an expired connection is free */
	if (max < min)
		return DROP_SNAT_NO_PORT;
	range = max - min + 1;
	start = bpf_get_prandom_u32();
#pragma clang loop unroll(disable)
	for (i = 0; i < SNAT_RETRIES; i++) {
		in_key.dport = bpf_htons((__u16)(min + (start + i) % range));
		if (bpf_map_update_elem(&snat4, &in_key, &want, BPF_NOEXIST) == 0)
			goto found;
		in = bpf_map_lookup_elem(&snat4, &in_key);
		if (in && !nodeport_ct(in->addr, in->port, in_key.saddr, in_key.sport, in_key.proto, 0, now) &&
		    bpf_map_update_elem(&snat4, &in_key, &want, BPF_ANY) == 0)
			goto found;
	}
	return DROP_SNAT_NO_PORT;
found:
	want.addr = cfg->snat_addr;
	want.port = in_key.dport;
	if (bpf_map_update_elem(&snat4, &out_key, &want, BPF_ANY) < 0)
		return DROP_SNAT_NO_PORT;
	*port = in_key.dport;
	return 0;
}

/*
 * Rewrite an ICMP error (pkt, quoting an IPv4 header of 20 bytes and 8 bytes of TCP/UDP) to new outer
 * addresses and a new quoted tuple. The quoted IPv4 header keeps its own checksum valid, so its
 * changes cancel out in the ICMP checksum; only the quoted ports move it. The quoted transport
 * checksum is left as it was (nobody verifies a quote). 0 on success.
 */
static __always_inline int icmp_error_rewrite(struct __sk_buff *skb, const struct pkt4 *pkt, __be32 saddr,
					      __be32 daddr, __be32 in_saddr, __be16 in_sport, __be32 in_daddr,
					      __be16 in_dport)
{
	__u32 icmp_csum = pkt->l4_off + 2, quote = pkt->l4_off + 8, quote_l4 = quote + sizeof(struct iphdr);
	__u32 in_csum = quote + __builtin_offsetof(struct iphdr, check);
	__be16 ports[2] = { in_sport, in_dport };
	__u8 ihl;

	if (bpf_skb_load_bytes(skb, quote, &ihl, 1) < 0 || (ihl & 0x0f) != 5)
		return -1;
	/* outer header */
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, pkt->saddr, saddr, 4) < 0 ||
	    bpf_l3_csum_replace(skb, IP_CSUM_OFF, pkt->daddr, daddr, 4) < 0 ||
	    bpf_skb_store_bytes(skb, IP_SADDR_OFF, &saddr, 4, 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_DADDR_OFF, &daddr, 4, 0) < 0)
		return -1;
	/* quoted header: addresses and its own checksum */
	if (bpf_l3_csum_replace(skb, in_csum, pkt->inner_saddr, in_saddr, 4) < 0 ||
	    bpf_l3_csum_replace(skb, in_csum, pkt->inner_daddr, in_daddr, 4) < 0 ||
	    bpf_skb_store_bytes(skb, quote + __builtin_offsetof(struct iphdr, saddr), &in_saddr, 4, 0) < 0 ||
	    bpf_skb_store_bytes(skb, quote + __builtin_offsetof(struct iphdr, daddr), &in_daddr, 4, 0) < 0)
		return -1;
	/* quoted ports, and the ICMP checksum over them */
	if (bpf_l4_csum_replace(skb, icmp_csum, pkt->inner_sport, in_sport, 2) < 0 ||
	    bpf_l4_csum_replace(skb, icmp_csum, pkt->inner_dport, in_dport, 2) < 0 ||
	    bpf_skb_store_bytes(skb, quote_l4, ports, sizeof(ports), 0) < 0)
		return -1;
	return 0;
}

/*
 * A reply of a connection SNATed to a backend on another node (backend -> node address:port):
 * the client back as destination, the frontend as source, forwarded towards the client. Returns
 * the tc verdict, or -1 when pkt is no such reply.
 */
static __always_inline int nodeport_snat_reply(struct __sk_buff *skb, struct pkt4 *pkt,
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
		verdict = fib_redirect(skb, pkt->saddr, pkt->daddr, pkt->proto);
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
static __always_inline int nodeport_snat_icmp_error(struct __sk_buff *skb, struct pkt4 *pkt,
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
	verdict = fib_redirect(skb, frontend, client, IPPROTO_ICMP);
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
static __always_inline int nodeport_snat_forward(struct __sk_buff *skb, struct pkt4 *pkt,
						 const struct node_config *cfg, bool report, __u64 now)
{
	__be16 port = 0;
	int verdict = -1;
	__u16 reason;

	reason = snat_port(pkt, cfg, &port, now);
	if (!reason && nat4_rewrite(skb, pkt, false, cfg->snat_addr, port) < 0)
		reason = DROP_WRITE_ERROR;
	if (!reason) {
		verdict = fib_redirect(skb, cfg->snat_addr, pkt->daddr, pkt->proto);
		if (verdict < 0)
			reason = DROP_NO_FIB;
	}
	if (reason || report) {
		pkt->src_identity = ipcache_identity(pkt->saddr);
		pkt->dst_identity = ipcache_identity(pkt->daddr);
	}
	if (reason)
		return drop_pkt(skb, pkt, reason, OBS_FROM_NETWORK, METRIC_INGRESS);
	pass_pkt(skb, pkt, OBS_FROM_NETWORK, METRIC_INGRESS, report);
	return verdict;
}

/*
 * What comes back for connections SNATed here: replies and ICMP errors about them. Any ingress of
 * the node may receive them (the uplink; in tunnel mode the overlay device too). Returns the tc
 * verdict, or -1 for any other packet.
 */
static __always_inline int nodeport_rev_snat(struct __sk_buff *skb, struct pkt4 *pkt,
					     const struct node_config *cfg, __u64 now)
{
	if (pkt->icmp_error)
		return nodeport_snat_icmp_error(skb, pkt, cfg, now);
	return nodeport_snat_reply(skb, pkt, cfg, now);
}

/*
 * A reply of a connection the uplink DNATed to a local backend (its CT_NODEPORT entry, keyed by the
 * translated tuple): the frontend the client addressed back as source, reported as leaving the node.
 * pkt as parsed on the wire (no translation context). Returns the tc verdict, or -1 when pkt is no
 * such reply.
 */
static __always_inline int nodeport_local_reply(struct __sk_buff *skb, struct pkt4 *pkt, __u64 now)
{
	struct ct4_entry *e;
	struct ct4_key key;
	__u16 reason;
	bool report;

	ct_key_rev(&key, pkt, CT_NODEPORT);
	e = ct_lookup(&key, pkt->tcp_flags, now);
	if (!e)
		return -1;
	pkt->ev_flags |= EV_F_REPLY;
	report = ct_account(e, true, skb->len, pkt->tcp_flags, now);

	/* events name the backend as source: resolve it before the translation */
	if (report)
		pkt->src_identity = ipcache_identity(pkt->saddr);

	/* source back to the frontend the client talked to */
	reason = svc_rev_nat(skb, pkt, e, now);
	if (reason) {
		if (!pkt->src_identity)
			pkt->src_identity = ipcache_identity(pkt->saddr);
		pkt->dst_identity = ipcache_identity(pkt->daddr);
		return drop_pkt(skb, pkt, reason, OBS_TO_NETWORK, METRIC_EGRESS);
	}
	if (report)
		pkt->dst_identity = ipcache_identity(pkt->daddr);
	return pass_pkt(skb, pkt, OBS_TO_NETWORK, METRIC_EGRESS, report);
}

#endif /* VELVET_LIB_NODEPORT_H */
