/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lb.h - service lookup and backend selection shared by the socket LB and the tc paths.
 *
 * Selection order for a new connection: ClientIP affinity (if the frontend has it and the
 * remembered backend is still ACTIVE and recent), else Maglev (tc paths, SVC_MAGLEV; the table
 * of a frontend describes its external-scope backend set, so only that scope uses it), else a
 * slot chosen by the caller's hash or at random.
 */
#ifndef VELVET_LIB_LB_H
#define VELVET_LIB_LB_H

#include "maps.h"
#include "ipcache.h"

#define JHASH_INITVAL 0xdeadbeef

/* Rotate left, as the kernel's rol32. */
static __always_inline __u32 rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

/* Bob Jenkins' jhash_3words, as in the kernel. */
static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	initval += JHASH_INITVAL + (3 << 2);
	a += initval;
	b += initval;
	c += initval;
	c ^= b; c -= rol32(b, 14);
	a ^= c; a -= rol32(c, 11);
	b ^= a; b -= rol32(a, 25);
	c ^= b; c -= rol32(b, 16);
	a ^= c; a -= rol32(c, 4);
	b ^= a; b -= rol32(a, 14);
	c ^= b; c -= rol32(b, 24);
	return c;
}

/*
 * The frontend (slot 0) of address:port/proto. A NodePort frontend on the wildcard address
 * 0.0.0.0 serves every address whose ipcache identity is HOST (the node's own). Internal
 * clients get the internal scope when the service has two. key is left pointing at the chosen
 * frontend and scope, ready for slot lookups.
 */
static __always_inline struct lb4_service *lb4_lookup_service(struct lb4_key *key, __be32 addr,
							      __be16 port, __u8 proto, bool internal)
{
	struct lb4_service *svc, *isvc;

	__builtin_memset(key, 0, sizeof(*key));
	key->address = addr;
	key->dport = port;
	key->proto = proto;
	key->scope = LB_SCOPE_EXT;
	svc = bpf_map_lookup_elem(&lb4_services, key);
	if (!svc) {
		/* no exact frontend: the NodePort wildcard serves the node's own addresses */
		key->address = 0;
		svc = bpf_map_lookup_elem(&lb4_services, key);
		if (!svc || !(svc->flags & SVC_NODEPORT) || ipcache_identity(addr) != IDENTITY_HOST)
			return NULL;
	}
	if (!internal || !(svc->flags & SVC_TWO_SCOPES))
		return svc;
	key->scope = LB_SCOPE_INT;
	isvc = bpf_map_lookup_elem(&lb4_services, key);
	if (isvc)
		return isvc;
	/* internal scope announced but missing: serve the external set */
	key->scope = LB_SCOPE_EXT;
	return svc;
}

/*
 * Drop reason for a frontend without backends: local-only scopes drop, others reject. The
 * internal scope, and the only scope of a ClusterIP frontend, serve internal clients (iTP).
 */
static __always_inline __u16 lb4_no_backend_reason(const struct lb4_key *key, const struct lb4_service *svc)
{
	bool internal = key->scope == LB_SCOPE_INT || (svc->flags & SVC_CLUSTERIP);
	__u16 local = internal ? SVC_LOCAL_ONLY_INT : SVC_LOCAL_ONLY_EXT;

	return (svc->flags & local) ? DROP_NO_LOCAL_BACKEND : DROP_NO_SERVICE_BACKEND;
}

/* Whether saddr may use the frontend (its loadBalancerSourceRanges contain it). */
static __always_inline bool lb4_src_range_ok(const struct lb4_service *svc, __be32 saddr)
{
	struct lb4_src_range_key key = {
		.prefixlen = 8 * (sizeof(key) - sizeof(key.prefixlen)),
		.rev_nat_index = svc->rev_nat_index,
		.address = saddr,
	};

	return bpf_map_lookup_elem(&lb4_src_range, &key) != NULL;
}

/* The ACTIVE backend remembered for this client, if recent enough. */
static __always_inline __u32 lb4_affinity_backend(const struct lb4_service *svc,
						  const struct lb4_affinity_key *akey, __u64 now)
{
	struct lb4_affinity_val *val = bpf_map_lookup_elem(&lb4_affinity, akey);
	struct lb4_backend *be;
	__u32 id;

	if (!val)
		return 0;
	if ((__s64)(now - val->last_used_ns) > (__s64)(svc->affinity_timeout * NSEC_PER_SEC))
		return 0;
	id = val->backend_id;
	be = bpf_map_lookup_elem(&lb4_backends, &id);
	if (!be || be->state != BE_ACTIVE)
		return 0;
	return id;
}

/* Backend id of slot (1..count) of the frontend at key. */
static __always_inline __u32 lb4_slot_backend(struct lb4_key *key, __u16 slot)
{
	struct lb4_service *entry;

	key->backend_slot = slot;
	entry = bpf_map_lookup_elem(&lb4_services, key);
	key->backend_slot = 0;
	return entry ? entry->backend_id : 0;
}

/* Backend id from the frontend's Maglev table. */
static __always_inline __u32 lb4_maglev_backend(const struct lb4_service *svc, __u32 hash)
{
	__u16 rev_nat_index = svc->rev_nat_index;
	struct lb4_maglev_lut *lut = bpf_map_lookup_elem(&lb4_maglev, &rev_nat_index);
	__u32 idx = hash % LB_MAGLEV_LUT_SIZE;

	/* keep the bound check clang would drop: the verifier does not track modulo */
	asm volatile("" : "+r"(idx));
	if (!lut || idx >= LB_MAGLEV_LUT_SIZE)
		return 0;
	return lut->backend_ids[idx];
}

/*
 * Select the backend of a new connection to the frontend (svc, at key) with count > 0.
 * client/netns_cookie identify the client for affinity; hash feeds Maglev (if use_maglev) or
 * picks the slot (if use_hash; otherwise the slot is random). Returns the backend and its id
 * in *id, or NULL when the tables are inconsistent (slot or backend missing).
 */
static __always_inline struct lb4_backend *lb4_select_backend(struct lb4_key *key,
							      const struct lb4_service *svc,
							      __u64 client, bool netns_cookie,
							      __u32 hash, bool use_hash, bool use_maglev,
							      __u32 *id, __u64 now)
{
	struct lb4_affinity_key akey = {
		.client = client,
		.rev_nat_index = svc->rev_nat_index,
		.netns_cookie = netns_cookie,
	};
	struct lb4_affinity_val aval = { .last_used_ns = now };
	struct lb4_backend *be;
	__u32 backend_id = 0;
	__u16 count = svc->count;

	if (svc->flags & SVC_AFFINITY)
		backend_id = lb4_affinity_backend(svc, &akey, now);
	if (!backend_id && use_maglev && (svc->flags & SVC_MAGLEV) && key->scope == LB_SCOPE_EXT)
		backend_id = lb4_maglev_backend(svc, hash);
	if (!backend_id && count)
		backend_id = lb4_slot_backend(key, (use_hash ? hash : bpf_get_prandom_u32()) % count + 1);
	if (!backend_id)
		return NULL;
	be = bpf_map_lookup_elem(&lb4_backends, &backend_id);
	if (!be)
		return NULL;
	/* remember (or refresh) the client's backend */
	if (svc->flags & SVC_AFFINITY) {
		aval.backend_id = backend_id;
		bpf_map_update_elem(&lb4_affinity, &akey, &aval, BPF_ANY);
	}
	*id = backend_id;
	return be;
}

#endif /* VELVET_LIB_LB_H */
