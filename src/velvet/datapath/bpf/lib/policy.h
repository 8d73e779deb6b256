/* SPDX-License-Identifier: GPL-2.0 */
/*
 * policy.h - per-endpoint policy decision for a new connection.
 *
 * Every policy entry allows (NetworkPolicy has no deny). Longest-prefix lookups in this order,
 * stopping at the first hit: the peer's label identity, its CIDR identity (when it differs; resolved
 * only then, an LPM lookup a non-isolated endpoint or a label hit never pays), then identity 0 (any
 * peer). A hit allows and names its policy set; no hit drops the connection of an
 * isolated endpoint. The policy compiler folds into each entry's policy set the policies of the
 * less specific entries covering it (its identity's and the any-peer ones), so the entry a
 * lookup returns names them.
 */
#ifndef VELVET_LIB_POLICY_H
#define VELVET_LIB_POLICY_H

#include "parse.h"
#include "maps.h"
#include "ipcache.h"

enum policy_verdict {
	POLICY_VERDICT_ALLOW = 0,
	POLICY_VERDICT_AUDIT = 1, /* would drop, endpoint in audit mode */
	POLICY_VERDICT_DROP = 2,
};

/* Event flags describing which kind of entry allowed. */
static __always_inline __u8 policy_match_flags(const struct policy_entry *e, bool any_peer)
{
	__u8 flags = (e->flags & POLICY_L4) ? EV_F_POLICY_L4 : EV_F_POLICY_L3;

	return any_peer ? flags | EV_F_POLICY_ANY_PEER : flags;
}

/*
 * Decide a new connection of endpoint ep (NULL: unknown, not isolated) in direction dir
 * against the peer's label identity and the CIDR identity of its address peer_addr (ipBlock rules
 * match the latter, so they also cover pod IPs). Sets pkt->policy_id and the match flags in pkt->ev_flags; a
 * connection nothing allows is dropped (or audited) for DROP_POLICY_DENIED.
 */
static __always_inline int policy_decide(const struct endpoint_info *ep, __u8 dir, __u32 peer,
					 __be32 peer_addr, struct pkt4 *pkt)
{
	struct policy_key key = {
		.prefixlen = 8 * (sizeof(key) - sizeof(key.prefixlen)),
		.direction = dir,
		.identity = peer,
		.proto = pkt->proto,
		.dport = pkt->dport,
	};
	__u8 isolated = dir == POLICY_INGRESS ? EP_POLICY_INGRESS : EP_POLICY_EGRESS;
	struct policy_entry *entry;
	bool any_peer = false;
	__u32 cidr_peer;

	/* not isolated in this direction: everything is allowed */
	if (!ep || !(ep->flags & isolated)) {
		pkt->ev_flags |= EV_F_POLICY_DEFAULT;
		return POLICY_VERDICT_ALLOW;
	}
	key.ep_id = ep->ep_id;
	/* ICMP has no ports: rules for ICMP match it by protocol */
	if (pkt->proto == IPPROTO_ICMP)
		key.dport = 0;

	entry = bpf_map_lookup_elem(&policy, &key);
	/* the CIDR identity only matters when it differs from the label identity */
	if (!entry) {
		cidr_peer = ipcache_cidr_identity(peer_addr);
		if (cidr_peer != peer) {
			key.identity = cidr_peer;
			entry = bpf_map_lookup_elem(&policy, &key);
		}
	}
	if (!entry) {
		key.identity = IDENTITY_ANY;
		entry = bpf_map_lookup_elem(&policy, &key);
		any_peer = true;
	}
	if (entry) {
		pkt->ev_flags |= policy_match_flags(entry, any_peer);
		pkt->policy_id = entry->policy_id;
		return POLICY_VERDICT_ALLOW;
	}
	pkt->ev_flags |= EV_F_POLICY_DEFAULT;
	return (ep->flags & EP_POLICY_AUDIT) ? POLICY_VERDICT_AUDIT : POLICY_VERDICT_DROP;
}

#endif /* VELVET_LIB_POLICY_H */
