// SPDX-License-Identifier: GPL-2.0
/*
 * sock.bpf.c - socket-level service load balancing (cgroup/sock_addr on the node's cgroup v2,
 * which holds every pod's cgroup).
 *
 *   sock_connect4:     connect() to a frontend connects to a backend instead.
 *   sock_sendmsg4:     sendto()/sendmsg() of unconnected UDP, per datagram.
 *   sock_recvmsg4:     recvfrom() shows the frontend as the sender.
 *   sock_getpeername4: getpeername() shows the frontend.
 *
 * Backend choice: affinity keyed by the client's netns cookie, else random (connect) or a
 * hash of the socket cookie (sendmsg: one unconnected socket keeps talking to one backend
 * while the backend set is unchanged). Maglev tables serve the tc paths only.
 * A frontend without backends fails the call with ECONNREFUSED (EHOSTUNREACH when only the
 * node-local set of a traffic-policy-Local service is empty), via bpf_set_retval.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/lb.h"
#include "lib/ipcache.h"
#include "lib/events.h"

/* Frontends the socket LB translates. */
#define SOCK_FRONTEND_FLAGS (SVC_CLUSTERIP | SVC_NODEPORT | SVC_EXTERNAL_IP | SVC_LOADBALANCER)

/* Emit a socket event for the call: translated (reason 0) or refused. */
static __always_inline void sock_event(struct bpf_sock_addr *ctx, __be32 frontend, __be16 fport,
				       __u16 rev_nat_index, __be32 daddr, __be16 dport,
				       __u8 obs, __u16 reason)
{
	struct flow_event *ev = event_reserve(METRIC_EGRESS);
	struct bpf_sock *sk = ctx->sk;

	if (!ev)
		return;
	ev->cookie = bpf_get_current_cgroup_id();
	if (sk) {
		ev->saddr = sk->src_ip4;
		ev->sport = bpf_htons((__u16)sk->src_port);
	}
	ev->daddr = daddr;
	ev->dport = dport;
	ev->orig_daddr = frontend;
	ev->orig_dport = fport;
	ev->rev_nat_index = rev_nat_index;
	ev->dst_identity = ipcache_identity(daddr);
	ev->proto = ctx->protocol;
	ev->obs_point = obs;
	if (reason) {
		ev->type = EVENT_DROP;
		ev->verdict = VERDICT_DROPPED;
		ev->drop_reason = reason;
	} else {
		ev->type = EVENT_SOCK;
		ev->verdict = VERDICT_TRANSLATED;
	}
	ringbuf_submit_lazy(ev, &events, EVENTS_RINGBUF_BYTES);
}

/*
 * Remember which frontend the socket's backend stands for, for recvmsg4/getpeername4; whether the
 * mapping is new (then the translation is reported). A connected socket keeps one mapping in its own
 * storage st (a re-connect replaces it); datagrams of sendmsg4 (st NULL: an unconnected socket may talk
 * to several frontends) use the lb4_sock_revnat LRU.
 */
static __always_inline bool sock4_remember(struct lb4_sock_revnat_sk *st, __u64 cookie,
					   const struct lb4_backend *be, __be32 addr, __be16 port,
					   __u16 rev_nat_index)
{
	struct lb4_sock_revnat_key rkey = {};
	struct lb4_sock_revnat_val rval = {};
	struct lb4_sock_revnat_val *known;

	if (st) {
		if (st->backend_address == be->address && st->backend_port == be->port &&
		    st->address == addr && st->port == port)
			return false;
		st->backend_address = be->address;
		st->backend_port = be->port;
		st->address = addr;
		st->port = port;
		st->rev_nat_index = rev_nat_index;
		return true;
	}
	rkey.cookie = cookie;
	rkey.address = be->address;
	rkey.port = be->port;
	rval.address = addr;
	rval.port = port;
	rval.rev_nat_index = rev_nat_index;
	known = bpf_map_lookup_elem(&lb4_sock_revnat, &rkey);
	if (known && known->address == addr && known->port == port)
		return false;
	bpf_map_update_elem(&lb4_sock_revnat, &rkey, &rval, BPF_ANY);
	return true;
}

/* Translate a destination frontend to a backend. Returns the sock_addr verdict (1 = go on). */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, __u8 obs, bool per_datagram)
{
	struct lb4_sock_revnat_sk *st = NULL;
	struct lb4_service *svc;
	struct lb4_backend *be;
	struct lb4_key key;
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	__u8 proto = ctx->protocol;
	__u64 now = clock_now();
	__u64 cookie;
	__u16 reason;
	__u32 id = 0;

	/* only TCP and UDP frontends, looked up in the internal scope */
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	svc = lb4_lookup_service(&key, addr, port, proto, true);
	if (!svc || !(svc->flags & SOCK_FRONTEND_FLAGS))
		return 1;

	/* no backends: refuse the call like a closed port */
	if (!svc->count) {
		reason = lb4_no_backend_reason(&key, svc);
		bpf_set_retval(reason == DROP_NO_LOCAL_BACKEND ? -EHOSTUNREACH : -ECONNREFUSED);
		metrics_add(reason, METRIC_EGRESS, 0);
		sock_event(ctx, addr, port, svc->rev_nat_index, addr, port, obs, reason);
		return 0;
	}

	/* a connected socket's mapping lives in its storage; without one (no memory) the tc path translates
	 * its packets instead, and getpeername() needs no lookup beyond the storage */
	if (!per_datagram) {
		st = bpf_sk_storage_get(&lb4_sock_revnat_sk, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st)
			return 1;
	}

	/* pick a backend; inconsistent tables (mid-update) leave the call to the tc path */
	cookie = bpf_get_socket_cookie(ctx);
	be = lb4_select_backend(&key, svc, bpf_get_netns_cookie(ctx), true,
				jhash_3words((__u32)cookie, (__u32)(cookie >> 32), svc->rev_nat_index, 0),
				per_datagram, false, &id, now);
	if (!be)
		return 1;

	/* remember the frontend for recvmsg4/getpeername4; report only what is new */
	if (sock4_remember(st, cookie, be, addr, port, svc->rev_nat_index))
		sock_event(ctx, addr, port, svc->rev_nat_index, be->address, be->port, obs, 0);

	/* the socket now talks to the backend */
	ctx->user_ip4 = be->address;
	ctx->user_port = (__u32)be->port;
	return 1;
}

/* Show the frontend instead of the backend a socket was translated to (connected: only a connect()'s
 * translation applies, kept in the socket's storage). */
static __always_inline int sock4_xlate_rev(struct bpf_sock_addr *ctx, bool connected)
{
	struct lb4_sock_revnat_sk *st = bpf_sk_storage_get(&lb4_sock_revnat_sk, ctx->sk, 0, 0);
	struct lb4_sock_revnat_key rkey = {};
	struct lb4_sock_revnat_val *val;
	struct lb4_key key;

	/* the backend a connected socket was translated to */
	if (st && st->backend_address == ctx->user_ip4 && st->backend_port == (__be16)ctx->user_port) {
		/* a frontend deleted since: the mapping is stale */
		if (!lb4_lookup_service(&key, st->address, st->port, ctx->protocol, false)) {
			st->backend_address = 0;
			st->backend_port = 0;
			return 1;
		}
		ctx->user_ip4 = st->address;
		ctx->user_port = (__u32)st->port;
		return 1;
	}

	/* else one of the backends sendmsg4 sent its datagrams to */
	if (connected)
		return 1;
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.address = ctx->user_ip4;
	rkey.port = (__be16)ctx->user_port;
	val = bpf_map_lookup_elem(&lb4_sock_revnat, &rkey);
	if (!val)
		return 1;
	/* a frontend deleted since: the mapping is stale */
	if (!lb4_lookup_service(&key, val->address, val->port, ctx->protocol, false)) {
		bpf_map_delete_elem(&lb4_sock_revnat, &rkey);
		return 1;
	}
	ctx->user_ip4 = val->address;
	ctx->user_port = (__u32)val->port;
	return 1;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx, OBS_SOCK_CONNECT, false);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx, OBS_SOCK_SENDMSG, true);
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_rev(ctx, false);
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_rev(ctx, true);
}

char LICENSE[] SEC("license") = "GPL";
