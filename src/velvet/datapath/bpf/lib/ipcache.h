/* SPDX-License-Identifier: GPL-2.0 */
/* ipcache.h - security identity of an IPv4 address. */
#ifndef VELVET_LIB_IPCACHE_H
#define VELVET_LIB_IPCACHE_H

#include "maps.h"

/* Identity of addr by longest-prefix match; addresses nobody claims are WORLD. */
static __always_inline __u32 ipcache_identity(__be32 addr)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = addr };
	struct ipcache_info *info = bpf_map_lookup_elem(&ipcache, &key);

	return info ? info->identity : IDENTITY_WORLD;
}

/* Underlay IP of the node addr lives on (the tunnel endpoint), 0 when none is known. */
static __always_inline __be32 ipcache_tunnel_endpoint(__be32 addr)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = addr };
	struct ipcache_info *info = bpf_map_lookup_elem(&ipcache, &key);

	return info ? info->tunnel_endpoint : 0;
}

/* CIDR identity of addr: the longest policy prefix containing it, WORLD when none does. */
static __always_inline __u32 ipcache_cidr_identity(__be32 addr)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = addr };
	struct ipcache_info *info = bpf_map_lookup_elem(&ipcache_cidr, &key);

	return info ? info->identity : IDENTITY_WORLD;
}

#endif /* VELVET_LIB_IPCACHE_H */
