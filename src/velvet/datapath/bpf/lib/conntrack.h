/* SPDX-License-Identifier: GPL-2.0 */
/* conntrack.h - connection tracking: lookup with lifetimes, creation, accounting + aggregation. */
#ifndef VELVET_LIB_CONNTRACK_H
#define VELVET_LIB_CONNTRACK_H

#include "parse.h"

#define CT_REPORT_FLAGS (TCP_F_SYN | TCP_F_FIN | TCP_F_RST)

/* The key of pkt's connection in direction dir, as the packet travels (forward tuple). */
static __always_inline void ct_key_fwd(struct ct4_key *key, const struct pkt4 *pkt, __u8 dir)
{
	key->saddr = pkt->saddr;
	key->daddr = pkt->daddr;
	key->sport = pkt->sport;
	key->dport = pkt->dport;
	key->proto = pkt->proto;
	key->dir = dir;
	key->pad = 0;
}

/* The key of the connection pkt is a reply of (reversed tuple). */
static __always_inline void ct_key_rev(struct ct4_key *key, const struct pkt4 *pkt, __u8 dir)
{
	key->saddr = pkt->daddr;
	key->daddr = pkt->saddr;
	key->sport = pkt->dport;
	key->dport = pkt->sport;
	key->proto = pkt->proto;
	key->dir = dir;
	key->pad = 0;
}

/* How long an entry lives after its last packet. */
static __always_inline __u64 ct_lifetime_ns(const struct ct4_entry *e, __u8 proto)
{
	if (e->flags & CT_F_CLOSING)
		return CT_LIFETIME_CLOSE_S * NSEC_PER_SEC;
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP_S * NSEC_PER_SEC;
	if (e->flags & CT_F_SEEN_REPLY)
		return CT_LIFETIME_TCP_S * NSEC_PER_SEC;
	return CT_LIFETIME_SYN_S * NSEC_PER_SEC;
}

/* A live entry for key; expired entries, and closing ones hit by a new SYN, count as absent. */
static __always_inline struct ct4_entry *ct_lookup(const struct ct4_key *key, __u8 tcp_flags, __u64 now)
{
	struct ct4_entry *e = bpf_map_lookup_elem(&ct4, key);

	if (!e)
		return NULL;
	/* signed: another CPU may have stamped a later last_seen */
	if ((__s64)(now - e->last_seen_ns) > (__s64)ct_lifetime_ns(e, key->proto))
		return NULL;
	if ((e->flags & CT_F_CLOSING) && (tcp_flags & (TCP_F_SYN | TCP_F_ACK)) == TCP_F_SYN)
		return NULL;
	return e;
}

/*
 * Account a packet of len bytes in the forward (reply == false) or reply direction. Returns
 * true when it deserves a trace event: a SYN/FIN/RST first seen in that direction, or the
 * report interval elapsed since the last event of the flow.
 */
static __always_inline bool ct_account(struct ct4_entry *e, bool reply, __u32 len, __u8 tcp_flags,
				       __u64 now)
{
	__u8 seen, tx, rx;
	bool report;

	if (reply) {
		__sync_fetch_and_add(&e->rx_packets, 1);
		__sync_fetch_and_add(&e->rx_bytes, len);
		seen = e->rx_flags_seen;
		if ((seen | tcp_flags) != seen)
			e->rx_flags_seen = seen | tcp_flags;
		e->flags |= CT_F_SEEN_REPLY;
	} else {
		__sync_fetch_and_add(&e->packets, 1);
		__sync_fetch_and_add(&e->bytes, len);
		seen = e->tx_flags_seen;
		if ((seen | tcp_flags) != seen)
			e->tx_flags_seen = seen | tcp_flags;
	}
	report = (tcp_flags & CT_REPORT_FLAGS & ~seen) != 0;

	/* RST, or FIN both ways, starts the close timeout */
	tx = e->tx_flags_seen;
	rx = e->rx_flags_seen;
	if (((tx | rx) & TCP_F_RST) || ((tx & rx) & TCP_F_FIN))
		e->flags |= CT_F_CLOSING;
	e->last_seen_ns = now;

	if (now - e->last_report_ns >= CT_REPORT_INTERVAL_S * NSEC_PER_SEC)
		report = true;
	if (report)
		e->last_report_ns = now;
	return report;
}

/* Whether a packet is a pure TCP SYN: it opens a connection (or retries opening it), never a reply. */
static __always_inline bool pkt_pure_syn(const struct pkt4 *pkt)
{
	return pkt->proto == IPPROTO_TCP && (pkt->tcp_flags & (TCP_F_SYN | TCP_F_ACK)) == TCP_F_SYN;
}

/* Whether a packet is a TCP SYN-ACK: the answer to a SYN, a reply (but in a simultaneous open). */
static __always_inline bool pkt_syn_ack(const struct pkt4 *pkt)
{
	return pkt->proto == IPPROTO_TCP && (pkt->tcp_flags & (TCP_F_SYN | TCP_F_ACK)) == (TCP_F_SYN | TCP_F_ACK);
}

/*
 * The live entry of the connection pkt is a reply of, in direction dir (ct_key_rev into key). A pure SYN
 * is no reply: its lookup is saved (a simultaneous open's crossing SYN counts as a new connection).
 */
static __always_inline struct ct4_entry *ct_lookup_reply(struct ct4_key *key, const struct pkt4 *pkt, __u8 dir,
							 __u64 now)
{
	if (pkt_pure_syn(pkt))
		return NULL;
	ct_key_rev(key, pkt, dir);
	return ct_lookup(key, pkt->tcp_flags, now);
}

/*
 * The live entry of pkt's connection: as the packet travels (direction dir_fwd), or the one it is a reply
 * of (dir_rev; *reply set). Every lookup of a cold key costs a cache miss, so the likelier one goes first:
 * the reply when reply_first (the caller knows) or for a SYN-ACK, else the forward one. key is clobbered.
 */
static __always_inline struct ct4_entry *ct_lookup_either(struct ct4_key *key, const struct pkt4 *pkt,
							  __u8 dir_fwd, __u8 dir_rev, bool reply_first,
							  __u64 now, bool *reply)
{
	struct ct4_entry *e;

	reply_first = reply_first || pkt_syn_ack(pkt);
	*reply = true;
	if (reply_first) {
		e = ct_lookup_reply(key, pkt, dir_rev, now);
		if (e)
			return e;
	}
	*reply = false;
	ct_key_fwd(key, pkt, dir_fwd);
	e = ct_lookup(key, pkt->tcp_flags, now);
	if (e || reply_first)
		return e;
	*reply = true;
	return ct_lookup_reply(key, pkt, dir_rev, now);
}

/* Create (or replace an expired) entry for pkt's first packet. 0 on success. */
static __always_inline int ct_create(const struct ct4_key *key, const struct pkt4 *pkt, __u32 len,
				     __u64 now, __u8 flags, __be32 nat_addr, __be16 nat_port,
				     __u32 backend_id)
{
	struct ct4_entry e = {
		.created_ns = now,
		.last_seen_ns = now,
		.last_report_ns = now,
		.packets = 1,
		.bytes = len,
		.nat_addr = nat_addr,
		.nat_port = nat_port,
		.rev_nat_index = pkt->rev_nat_index,
		.src_identity = pkt->src_identity,
		.dst_identity = pkt->dst_identity,
		.policy_id = pkt->policy_id,
		.backend_id = backend_id,
		.tx_flags_seen = pkt->tcp_flags,
		.flags = flags,
	};

	return bpf_map_update_elem(&ct4, key, &e, BPF_ANY);
}

/*
 * Whether the packet quoted by an ICMP error belongs to a tracked connection: as quoted in
 * direction dir_quoted, or as the reply of a connection in direction dir_reversed.
 */
static __always_inline bool ct_icmp_related(const struct pkt4 *pkt, __u8 dir_quoted,
					    __u8 dir_reversed, __u64 now)
{
	struct ct4_key key = {
		.saddr = pkt->inner_saddr,
		.daddr = pkt->inner_daddr,
		.sport = pkt->inner_sport,
		.dport = pkt->inner_dport,
		.proto = pkt->inner_proto,
		.dir = dir_quoted,
	};

	if (ct_lookup(&key, 0, now))
		return true;
	key.saddr = pkt->inner_daddr;
	key.daddr = pkt->inner_saddr;
	key.sport = pkt->inner_dport;
	key.dport = pkt->inner_sport;
	key.dir = dir_reversed;
	return ct_lookup(&key, 0, now) != NULL;
}

#endif /* VELVET_LIB_CONNTRACK_H */
