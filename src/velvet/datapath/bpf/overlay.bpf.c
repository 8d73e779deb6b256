// SPDX-License-Identifier: GPL-2.0
/*
 * overlay.bpf.c - the node's VXLAN device in tunnel mode (tcx on velvet_vxlan, external mode).
 *
 *   overlay_from_tunnel: tcx ingress = decapsulated packets from another node. The VNI is the
 *                        source's identity (the sending node's HOST becomes REMOTE_NODE here): it
 *                        is handed to lxc_to_pod in skb->mark; the node's routing forwards, or
 *                        with host routing this program, into a local pod after running its to-pod
 *                        datapath (lib/endpoint.h, which reads the same mark).
 *   overlay_to_tunnel:   tcx egress. Packets lxc_from_pod addressed already pass; what the node
 *                        itself routes to another node's pods (dev velvet_vxlan) gets its tunnel
 *                        key here: the destination's node from the ipcache, VNI = the source's
 *                        identity (HOST for the node's own addresses).
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/ipcache.h"
#include "lib/events.h"
#include "lib/tunnel.h"
#include "lib/fib.h"
#include "lib/endpoint.h"

/*
 * The tunnel's side of a decapsulated packet: the source identity from the VNI into skb->mark, the frame
 * made this node's, the packet parsed into pkt. Returns the verdict; *how (HOST_ROUTE_*): it parsed, and
 * host routing may deliver it to a local pod (what does not parse meets lxc_to_pod). A global function, as
 * lxc_from_pod's from_pod: the tunnel key and the parser stay out of the stack host_route is called with.
 */
__attribute__((noinline)) int from_tunnel(struct __sk_buff *skb, struct pkt4 *pkt, __u32 *how)
{
	struct bpf_tunnel_key key = {};
	__u32 identity;

	/* only the tunnel delivers here: no key, no packet */
	if (!pkt || !how || bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return TC_ACT_SHOT;

	/* the sender's identity; its own node is remote-node here, VNI 0 names nobody */
	identity = key.tunnel_id;
	if (identity == IDENTITY_HOST)
		identity = IDENTITY_REMOTE_NODE;
	else if (!identity)
		identity = IDENTITY_WORLD;
	skb->mark = (identity << TUNNEL_MARK_SHIFT) | TUNNEL_MARK_MAGIC;

	/* the inner frame names the sender's MAC as destination: deliver it to this node */
	bpf_skb_change_type(skb, PACKET_HOST);
	if (parse_ipv4(skb, pkt) == 0)
		*how = HOST_ROUTE | HOST_ROUTE_LOCAL_ONLY;
	return TC_ACT_OK;
}

SEC("tc")
int overlay_from_tunnel(struct __sk_buff *skb)
{
	struct pkt4 pkt = {};
	__u32 how = 0;
	int ret;

	ret = from_tunnel(skb, &pkt, &how);
	return host_route_ingress(skb, &pkt, clock_now(), ret, how);
}

SEC("tc")
int overlay_to_tunnel(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct pkt4 pkt = {};
	__be32 endpoint;
	int ret;

	/* a pod's packet that lxc_from_pod addressed already */
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0)
		return TC_ACT_OK;

	/* the tunnel carries IPv4 only (no ARP: the device is NOARP; no IPv6) */
	ret = parse_ipv4(skb, &pkt);
	if (ret == PARSE_NOT_IPV4)
		return TC_ACT_SHOT;
	if (ret < 0)
		return drop_pkt(skb, &pkt, -ret, OBS_TO_NETWORK, METRIC_EGRESS);

	/* the node the destination lives on; VNI = the source's identity */
	pkt.src_identity = ipcache_identity(pkt.saddr);
	pkt.dst_identity = ipcache_identity(pkt.daddr);
	endpoint = ipcache_tunnel_endpoint(pkt.daddr);
	if (!endpoint)
		return drop_pkt(skb, &pkt, DROP_NO_TUNNEL_ENDPOINT, OBS_TO_NETWORK, METRIC_EGRESS);
	if (tunnel_set_key(skb, endpoint, pkt.src_identity) < 0)
		return drop_pkt(skb, &pkt, DROP_WRITE_ERROR, OBS_TO_NETWORK, METRIC_EGRESS);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
