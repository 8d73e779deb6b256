/* SPDX-License-Identifier: GPL-2.0 */
/*
 * service.h - per-packet service translation for the tc hooks: DNAT of the first and every
 * later packet of a connection to its backend (kept in a CT_SERVICE entry on the original
 * tuple), and the reverse NAT of replies (the translated connection's entry records the
 * frontend and its rev_nat_index).
 */
#ifndef VELVET_LIB_SERVICE_H
#define VELVET_LIB_SERVICE_H

#include "conntrack.h"
#include "csum.h"
#include "lb.h"

/*
 * DNAT pkt to a backend if it is addressed to a frontend having one of want_flags. The
 * backend sticks through a CT_SERVICE entry (created with ct_flags; a deleted backend is
 * replaced). On translation pkt->orig_daddr/orig_dport/rev_nat_index describe the frontend
 * and pkt->daddr/dport the backend. Returns 0 (translated or not a service) or a drop
 * reason; DROP_NO_SERVICE_BACKEND asks the caller to reject.
 */
static __always_inline __u16 svc_dnat(struct __sk_buff *skb, struct pkt4 *pkt, bool internal,
				      __u16 want_flags, bool check_src_range, __u8 ct_flags,
				      __u32 *backend_id, __u64 now)
{
	struct lb4_backend *be = NULL;
	struct lb4_service *svc;
	struct ct4_entry *e;
	struct ct4_key ckey;
	struct lb4_key key;
	__u32 id = 0, hash;

	/* services are TCP and UDP */
	if (pkt->proto != IPPROTO_TCP && pkt->proto != IPPROTO_UDP)
		return 0;
	svc = lb4_lookup_service(&key, pkt->daddr, pkt->dport, pkt->proto, internal);
	if (!svc || !(svc->flags & want_flags))
		return 0;
	if (check_src_range && (svc->flags & SVC_SOURCE_RANGE) && !lb4_src_range_ok(svc, pkt->saddr))
		return DROP_LB_SOURCE_RANGE;
	pkt->orig_daddr = pkt->daddr;
	pkt->orig_dport = pkt->dport;
	pkt->rev_nat_index = svc->rev_nat_index;

	/* an existing connection keeps its backend while that backend exists */
	ct_key_fwd(&ckey, pkt, CT_SERVICE);
	e = ct_lookup(&ckey, pkt->tcp_flags, now);
	if (e) {
		id = e->backend_id;
		be = bpf_map_lookup_elem(&lb4_backends, &id);
	}
	if (be) {
		ct_account(e, false, skb->len, pkt->tcp_flags, now);
	} else {
		/* new connection (or its backend is gone): select and remember */
		if (!svc->count)
			return lb4_no_backend_reason(&key, svc);
		hash = jhash_3words(pkt->saddr, pkt->daddr,
				    ((__u32)pkt->sport << 16) | pkt->dport, pkt->proto);
		be = lb4_select_backend(&key, svc, bpf_ntohl(pkt->saddr), false, hash, false, true, &id, now);
		if (!be)
			return DROP_NO_SERVICE_BACKEND;
		if (ct_create(&ckey, pkt, skb->len, now, ct_flags, be->address, be->port, id) < 0)
			return DROP_CT_MAP_FULL;
	}

	/* rewrite the destination to the backend */
	if (nat4_rewrite(skb, pkt, true, be->address, be->port) < 0)
		return DROP_WRITE_ERROR;
	pkt->daddr = be->address;
	pkt->dport = be->port;
	*backend_id = id;
	return 0;
}

/*
 * Translate the source of a reply back to the frontend the client addressed (recorded in the
 * translated connection's entry e: a NodePort wildcard frontend has no single address), and
 * keep the original tuple's CT_SERVICE entry alive. The frontend's lb4_revnat entry must still
 * exist: once the service is gone replies are dropped rather than delivered untranslated.
 * Returns 0 or a drop reason.
 */
static __always_inline __u16 svc_rev_nat(struct __sk_buff *skb, struct pkt4 *pkt,
					 const struct ct4_entry *e, __u64 now)
{
	__u16 rev_nat_index = e->rev_nat_index;
	__be32 frontend = e->nat_addr;
	__be16 fport = e->nat_port;
	struct ct4_entry *svc_e;
	struct ct4_key key;

	if (!bpf_map_lookup_elem(&lb4_revnat, &rev_nat_index))
		return DROP_NAT_NO_MAPPING;
	if (nat4_rewrite(skb, pkt, false, frontend, fport) < 0)
		return DROP_WRITE_ERROR;
	pkt->saddr = frontend;
	pkt->sport = fport;
	pkt->rev_nat_index = rev_nat_index;
	pkt->ev_flags |= EV_F_REV_NAT;

	/* the reply also refreshes the frontend entry of the connection */
	ct_key_rev(&key, pkt, CT_SERVICE);
	svc_e = ct_lookup(&key, 0, now);
	if (svc_e)
		ct_account(svc_e, true, skb->len, pkt->tcp_flags, now);
	return 0;
}

#endif /* VELVET_LIB_SERVICE_H */
