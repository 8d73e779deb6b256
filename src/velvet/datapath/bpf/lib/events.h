/* SPDX-License-Identifier: GPL-2.0 */
/* events.h - per-CPU counters and flow events into the ring buffer. */
#ifndef VELVET_LIB_EVENTS_H
#define VELVET_LIB_EVENTS_H

#include "parse.h"

/* Count one packet of len bytes under reason (METRIC_FORWARDED or a drop reason). */
static __always_inline void metrics_add(__u16 reason, __u8 direction, __u32 len)
{
	struct metrics_key key = { .reason = reason, .direction = direction };
	struct metrics_value *val, init = { .packets = 1, .bytes = len };

	val = bpf_map_lookup_elem(&metrics, &key);
	if (val) {
		/* per-CPU value: no atomics needed */
		val->packets += 1;
		val->bytes += len;
		return;
	}
	/* first packet for this key; another CPU may have created it meanwhile */
	if (bpf_map_update_elem(&metrics, &key, &init, BPF_NOEXIST) == 0)
		return;
	val = bpf_map_lookup_elem(&metrics, &key);
	if (val) {
		val->packets += 1;
		val->bytes += len;
	}
}

/* Reserve a zeroed event, counting a loss when the ring is full. */
static __always_inline struct flow_event *event_reserve(__u8 direction)
{
	struct flow_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);

	if (!ev) {
		metrics_add(METRIC_EVENTS_LOST, direction, 0);
		return NULL;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = bpf_ktime_get_ns();
	return ev;
}

/* Emit a packet event describing pkt as observed at obs_point. */
static __always_inline void emit_pkt_event(struct __sk_buff *skb, const struct pkt4 *pkt, __u8 type,
					   __u8 obs_point, __u8 verdict, __u16 drop_reason,
					   __u8 direction)
{
	struct flow_event *ev = event_reserve(direction);

	if (!ev)
		return;
	ev->saddr = pkt->saddr;
	ev->daddr = pkt->daddr;
	ev->sport = pkt->sport;
	ev->dport = pkt->dport;
	ev->orig_daddr = pkt->orig_daddr;
	ev->orig_dport = pkt->orig_dport;
	ev->rev_nat_index = pkt->rev_nat_index;
	ev->src_identity = pkt->src_identity;
	ev->dst_identity = pkt->dst_identity;
	ev->policy_id = pkt->policy_id;
	ev->ifindex = pkt->obs_ifindex ? pkt->obs_ifindex : skb->ifindex;
	ev->bytes = skb->len;
	ev->drop_reason = drop_reason;
	ev->type = type;
	ev->obs_point = obs_point;
	ev->proto = pkt->proto;
	ev->tcp_flags = pkt->tcp_flags;
	ev->verdict = verdict;
	ev->flags = pkt->ev_flags;
	ringbuf_submit_lazy(ev, &events, EVENTS_RINGBUF_BYTES);
}

/* Count and report a forwarded packet; the event only when the caller's aggregation says so. */
static __always_inline int pass_pkt(struct __sk_buff *skb, const struct pkt4 *pkt, __u8 obs_point,
				    __u8 direction, bool report)
{
	metrics_add(METRIC_FORWARDED, direction, skb->len);
	if (report)
		emit_pkt_event(skb, pkt, EVENT_TRACE, obs_point, VERDICT_FORWARDED, 0, direction);
	return TC_ACT_OK;
}

/* Count and report a dropped packet; returns the tc verdict. */
static __always_inline int drop_pkt(struct __sk_buff *skb, const struct pkt4 *pkt, __u16 reason,
				    __u8 obs_point, __u8 direction)
{
	metrics_add(reason, direction, skb->len);
	emit_pkt_event(skb, pkt, EVENT_DROP, obs_point, VERDICT_DROPPED, reason, direction);
	return TC_ACT_SHOT;
}

#endif /* VELVET_LIB_EVENTS_H */
