/* SPDX-License-Identifier: GPL-2.0 */
/*
 * tunnel.h - tunnel mode: VXLAN in external (collect_md) mode with VNI = source identity.
 *
 * The sender sets the tunnel key (remote = the destination's node, VNI = the source's identity);
 * the receiver's overlay_from_tunnel takes the identity from the VNI and hands it to lxc_to_pod
 * in skb->mark (low byte TUNNEL_MARK_MAGIC, the identity above it), which survives forwarding
 * inside the node's namespace and is scrubbed when the packet enters the pod's.
 */
#ifndef VELVET_LIB_TUNNEL_H
#define VELVET_LIB_TUNNEL_H

#include "maps.h"
#include "ipcache.h"

#define TUNNEL_MARK_MAGIC 0xa5
#define TUNNEL_MARK_SHIFT 8
#define TUNNEL_VNI_MAX 0xffffff /* VNIs are 24 bits: label identities fit, node-local CIDR ones never travel */
#define TUNNEL_TTL 64
#define PACKET_HOST 0

/* The VXLAN device of tunnel mode, 0 in native mode. */
static __always_inline __u32 tunnel_ifindex(void)
{
	__u32 zero = 0;
	struct tunnel_config *cfg = bpf_map_lookup_elem(&tunnel_config, &zero);

	return cfg ? cfg->ifindex : 0;
}

/* Address the packet to node endpoint with VNI identity; < 0 on failure. */
static __always_inline int tunnel_set_key(struct __sk_buff *skb, __be32 endpoint, __u32 identity)
{
	struct bpf_tunnel_key key = {
		.remote_ipv4 = bpf_ntohl(endpoint), /* the helper takes host order */
		.tunnel_id = identity & TUNNEL_VNI_MAX,
		.tunnel_ttl = TUNNEL_TTL,
	};

	return bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX);
}

/*
 * In tunnel mode, send a packet whose destination lives on another node straight to the VXLAN
 * device with VNI = identity; otherwise return verdict (the node's routing forwards it).
 */
static __always_inline int tunnel_redirect(struct __sk_buff *skb, __be32 daddr, __u32 identity, int verdict)
{
	__u32 ifindex = tunnel_ifindex();
	__be32 endpoint;

	if (!ifindex || verdict != TC_ACT_OK)
		return verdict;
	endpoint = ipcache_tunnel_endpoint(daddr);
	if (!endpoint || tunnel_set_key(skb, endpoint, identity) < 0)
		return verdict;
	return bpf_redirect(ifindex, 0);
}

/* The source identity a packet brought through the tunnel (its VNI), 0 for other packets. */
static __always_inline __u32 tunnel_source_identity(const struct __sk_buff *skb)
{
	__u32 mark = skb->mark;

	if ((mark & 0xff) != TUNNEL_MARK_MAGIC)
		return 0;
	return mark >> TUNNEL_MARK_SHIFT;
}

#endif /* VELVET_LIB_TUNNEL_H */
