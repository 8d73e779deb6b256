// SPDX-License-Identifier: GPL-2.0
/*
 * proc.bpf.c - process and TCP socket lifecycle events (tracepoints, CO-RE).
 *
 *   proc_exec:      tracepoint sched/sched_process_exec
 *   proc_exit:      tracepoint sched/sched_process_exit (thread-group leaders only)
 *   proc_tcp_state: tracepoint sock/inet_sock_set_state (IPv4 TCP)
 *
 * Every event carries the network namespace inode and the cgroup id, which attribute it to a
 * pod. Records are struct process_event in the proc_events ring buffer (own map: the object
 * shares nothing with the packet datapath).
 *
 * Groundwork for runtime security: the object is built with the others and its programs are
 * tested attached for real (tests/datapath/test_sock.py), but the agent does not load or attach
 * it yet, so nothing reads proc_events in a running node.
 */
#include "lib/common.h"
#include <bpf/bpf_core_read.h>

#define PROC_EVENTS_RINGBUF_BYTES (1024 * 1024)
#define AF_INET 2

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PROC_EVENTS_RINGBUF_BYTES);
} proc_events SEC(".maps");

/* Reserve a zeroed event with the time and the current task's identity filled in. */
static __always_inline struct process_event *proc_event_reserve(__u8 type)
{
	struct process_event *ev = bpf_ringbuf_reserve(&proc_events, sizeof(*ev), 0);
	struct task_struct *task;
	__u64 pid_tgid;

	if (!ev)
		return NULL;
	__builtin_memset(ev, 0, sizeof(*ev));
	task = (struct task_struct *)bpf_get_current_task();
	pid_tgid = bpf_get_current_pid_tgid();
	ev->ts_ns = bpf_ktime_get_ns();
	ev->type = type;
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->netns_ino = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	return ev;
}

SEC("tracepoint/sched/sched_process_exec")
int proc_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct process_event *ev = proc_event_reserve(PROC_EXEC);
	__u32 loc;

	if (!ev)
		return 0;
	/* filename is a __data_loc string: offset in the low 16 bits */
	loc = ctx->__data_loc_filename & 0xffff;
	bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), (void *)ctx + loc);
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int proc_exit(struct trace_event_raw_sched_process_template *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct process_event *ev;

	/* one event per process: when its thread-group leader exits */
	if ((__u32)pid_tgid != (__u32)(pid_tgid >> 32))
		return 0;
	ev = proc_event_reserve(PROC_EXIT);
	if (!ev)
		return 0;
	ev->exit_code = BPF_CORE_READ(task, exit_code);
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int proc_tcp_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	struct sock *sk = (struct sock *)ctx->skaddr;
	struct process_event *ev;

	/* IPv4 TCP only */
	if (ctx->family != AF_INET || ctx->protocol != IPPROTO_TCP)
		return 0;
	ev = bpf_ringbuf_reserve(&proc_events, sizeof(*ev), 0);
	if (!ev)
		return 0;
	__builtin_memset(ev, 0, sizeof(*ev));
	/* state changes often run in softirq: attribute through the socket, not the task */
	ev->ts_ns = bpf_ktime_get_ns();
	ev->type = PROC_TCP_STATE;
	ev->netns_ino = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	ev->cgroup_id = BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
	ev->old_state = ctx->oldstate;
	ev->new_state = ctx->newstate;
	__builtin_memcpy(&ev->saddr, ctx->saddr, sizeof(ev->saddr));
	__builtin_memcpy(&ev->daddr, ctx->daddr, sizeof(ev->daddr));
	ev->sport = bpf_htons(ctx->sport);
	ev->dport = bpf_htons(ctx->dport);
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
