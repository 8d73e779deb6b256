/* SPDX-License-Identifier: GPL-2.0 */
/*
 * policy.h - per-endpoint policy decision for a new connection.
 *
 * Two longest-prefix lookups: the peer's identity, then identity 0 (any peer). A DENY hit in
 * either wins; otherwise an ALLOW hit allows. The policy compiler keeps deny entries at least as
 * specific as any allow they cover (LPM returns only the longest match per lookup).
 */
#ifndef VELVET_LIB_POLICY_H
#define VELVET_LIB_POLICY_H

#include "parse.h"
#include "maps.h"

enum policy_verdict {
	POLICY_VERDICT_ALLOW = 0,
	POLICY_VERDICT_AUDIT = 1, /* would drop, endpoint in audit mode */
	POLICY_VERDICT_DROP = 2,
};

/* Event flags describing which kind of entry decided. */
static __always_inline __u8 policy_match_flags(const struct policy_entry *e, bool any_peer)
{
	__u8 flags = (e->flags & POLICY_L4) ? EV_F_POLICY_L4 : EV_F_POLICY_L3;

	return any_peer ? flags | EV_F_POLICY_ANY_PEER : flags;
}

/*
 * Decide a new connection of endpoint ep (NULL: unknown, not isolated) in direction dir
 * against the peer's label identity and its CIDR identity (ipBlock rules match the latter, so
 * they also cover pod IPs). Sets pkt->policy_id and the match flags in pkt->ev_flags; *reason
 * gets the drop reason for POLICY_VERDICT_DROP/AUDIT.
 */
static __always_inline int policy_decide(const struct endpoint_info *ep, __u8 dir, __u32 peer,
					 __u32 cidr_peer, struct pkt4 *pkt, __u16 *reason)
{
	struct policy_key key = {
		.prefixlen = 8 * (sizeof(key) - sizeof(key.prefixlen)),
		.direction = dir,
		.identity = peer,
		.proto = pkt->proto,
		.dport = pkt->dport,
	};
	struct policy_entry *by_peer, *by_cidr = NULL, *by_any;
	__u8 isolated = dir == POLICY_INGRESS ? EP_POLICY_INGRESS : EP_POLICY_EGRESS;

	/* not isolated in this direction: everything is allowed */
	if (!ep || !(ep->flags & isolated)) {
		pkt->ev_flags |= EV_F_POLICY_DEFAULT;
		return POLICY_VERDICT_ALLOW;
	}
	key.ep_id = ep->ep_id;
	/* ICMP has no ports: rules for ICMP match it by protocol */
	if (pkt->proto == IPPROTO_ICMP)
		key.dport = 0;

	by_peer = bpf_map_lookup_elem(&policy, &key);
	/* the CIDR identity only matters when it differs from the label identity */
	if (cidr_peer != peer) {
		key.identity = cidr_peer;
		by_cidr = bpf_map_lookup_elem(&policy, &key);
	}
	key.identity = IDENTITY_ANY;
	by_any = bpf_map_lookup_elem(&policy, &key);

	/* deny beats allow */
	if (by_peer && (by_peer->flags & POLICY_DENY)) {
		pkt->ev_flags |= policy_match_flags(by_peer, false);
		pkt->policy_id = by_peer->policy_id;
		*reason = DROP_POLICY_DENY_RULE;
	} else if (by_cidr && (by_cidr->flags & POLICY_DENY)) {
		pkt->ev_flags |= policy_match_flags(by_cidr, false);
		pkt->policy_id = by_cidr->policy_id;
		*reason = DROP_POLICY_DENY_RULE;
	} else if (by_any && (by_any->flags & POLICY_DENY)) {
		pkt->ev_flags |= policy_match_flags(by_any, true);
		pkt->policy_id = by_any->policy_id;
		*reason = DROP_POLICY_DENY_RULE;
	} else if (by_peer && (by_peer->flags & POLICY_ALLOW)) {
		pkt->ev_flags |= policy_match_flags(by_peer, false);
		pkt->policy_id = by_peer->policy_id;
		return POLICY_VERDICT_ALLOW;
	} else if (by_cidr && (by_cidr->flags & POLICY_ALLOW)) {
		pkt->ev_flags |= policy_match_flags(by_cidr, false);
		pkt->policy_id = by_cidr->policy_id;
		return POLICY_VERDICT_ALLOW;
	} else if (by_any && (by_any->flags & POLICY_ALLOW)) {
		pkt->ev_flags |= policy_match_flags(by_any, true);
		pkt->policy_id = by_any->policy_id;
		return POLICY_VERDICT_ALLOW;
	} else {
		pkt->ev_flags |= EV_F_POLICY_DEFAULT;
		*reason = DROP_POLICY_DENIED;
	}
	return (ep->flags & EP_POLICY_AUDIT) ? POLICY_VERDICT_AUDIT : POLICY_VERDICT_DROP;
}

#endif /* VELVET_LIB_POLICY_H */
