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

/*
 * Submit a ring buffer record, waking the reader only once a quarter of `ring` (of `ring_bytes`) is
 * pending. Readers drain on a short timer as well: a wakeup per record is an interrupt per packet or
 * connection (a VM exit on a virtual machine), which doubled the tc programs' cost on a new connection
 * and put the agent on the CPU inside connections' round trips.
 */
static __always_inline void ringbuf_submit_lazy(void *record, void *ring, __u64 ring_bytes)
{
	__u64 pending = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);

	bpf_ringbuf_submit(record, pending >= ring_bytes / 4 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

#endif /* VELVET_LIB_COMMON_H */
