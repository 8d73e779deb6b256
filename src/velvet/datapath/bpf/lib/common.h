/* SPDX-License-Identifier: GPL-2.0 */
/* common.h - includes and small definitions every Velvet BPF object needs. */
#ifndef VELVET_LIB_COMMON_H
#define VELVET_LIB_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "types.h"

/* uapi #defines that vmlinux.h (BTF) cannot carry */
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define ETH_HLEN 14
#define ETH_ALEN 6
#define ETH_P_IP 0x0800
#define IP_MF 0x2000
#define IP_DF 0x4000
#define IP_OFFSET 0x1fff
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_SOURCE_QUENCH 4
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMP_PORT_UNREACH 3
#define ECONNREFUSED 111
#define EHOSTUNREACH 113
#define NSEC_PER_SEC 1000000000ULL

/*
 * The clock of conntrack and session-affinity timestamps: CLOCK_MONOTONIC at tick resolution. Their
 * lifetimes are seconds, and bpf_ktime_get_ns() reads the TSC, which on a VM cost about a tenth of a tc
 * program's run (~0.8 us of CPU per cross-node connection). Flow events keep bpf_ktime_get_ns().
 */
static __always_inline __u64 clock_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* Count one record a ring had no room for, in slot 0 of the per-CPU array `lost_map`. */
static __always_inline void ringbuf_count_lost(void *lost_map)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(lost_map, &zero);

	if (lost)
		*lost += 1;
}

/*
 * Submit a ring buffer record of record_bytes, waking the reader only when this record takes the
 * pending data of `ring` (of `ring_bytes`) across a quarter of it: at most three wakeups per filling.
 * Readers drain on a short timer as well. A wakeup is an interrupt (irq_work's self-IPI, a VM exit on
 * a virtual machine): one per record doubled the tc programs' cost on a new connection, and waking on
 * every record once a quarter was pending (until the reader had drained) took 30 % of connect()'s CPU
 * on a node opening connections faster than the reader's timer.
 */
static __always_inline void ringbuf_submit_lazy_sized(void *record, void *ring, __u64 ring_bytes,
						      __u64 record_bytes)
{
	__u64 pending = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	/* what this record added to the pending data: an 8-byte header, rounded up to 8 bytes */
	__u64 mine = (record_bytes + 8 + 7) & ~7ULL;
	__u64 quarter = ring_bytes / 4;
	bool crossed = pending >= mine && pending / quarter != (pending - mine) / quarter;

	bpf_ringbuf_submit(record, crossed ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* ringbuf_submit_lazy_sized of a typed record pointer. */
#define ringbuf_submit_lazy(record, ring, ring_bytes) \
	ringbuf_submit_lazy_sized(record, ring, ring_bytes, sizeof(*(record)))

#endif /* VELVET_LIB_COMMON_H */
