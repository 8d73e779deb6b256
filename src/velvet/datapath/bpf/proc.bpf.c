// SPDX-License-Identifier: GPL-2.0
/*
 * proc.bpf.c - process and TCP socket lifecycle events (tracepoints, CO-RE).
 *
 *   proc_exec:      tracepoint sched/sched_process_exec (binary path, argv from mm->arg_start)
 *   proc_fork:      raw tracepoint sched_process_fork (new processes only, not threads)
 *   proc_exit:      tracepoint sched/sched_process_exit (when the last thread of a process exits)
 *   proc_tcp_connect: tp_btf inet_sock_set_state (the BTF-typed raw tracepoint: the socket itself), what
 *                   names a flow's process (IPv4 TCP): the process that connect()s, reported when its
 *                   connection is ESTABLISHED and CLOSE; listen() and the listener's close (in the
 *                   owner); passive opens ESTABLISHED (in softirq, kept when the socket's cgroup, the
 *                   listener's, is monitored) and their CLOSE
 *   proc_udp_send, proc_udp_recv: tracepoints sock/sock_send_length and sock/sock_recv_length, what names a
 *                   UDP flow's process (IPv4): the process that sends or receives on a UDP socket, once per
 *                   socket, process and local port (after the call, so an autobound socket has its port)
 *
 * Every event carries the network namespace inode and the cgroup id, which attribute it to a
 * pod. Records are struct process_event in the proc_events ring buffer (own map: the object
 * shares nothing with the packet datapath); proc_tcp_connect writes struct sock_event records to
 * proc_sock_events. proc_config limits the process events to one
 * cgroup subtree (the node's): several nodes' agents on one machine each see their own.
 * The agent's process monitor (velvet.runtime) loads it and reads proc_events.
 *
 * Runtime policy (lib/tracing_policy.h): at exec, the tracing policies compiled by the agent act on the
 * new process (Sigkill, Signal, Post, NoPost; the event names the policy), and every process's binary
 * sets are kept in proc_binsets (lib/runtime.h; copied at fork, deleted at exit) for other objects.
 *   proc_openat, proc_setuid, proc_ptrace, proc_mount, proc_execve, proc_open: tracepoints
 *                   syscalls/sys_enter_*, each attached only while a policy hooks it
 *   proc_syscalls:  tracepoint raw_syscalls/sys_enter, syscalls per cgroup (proc_syscall_counts), attached
 *                   only when the agent runs with --syscall-metrics (it runs on every syscall)
 */
#include "lib/common.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "lib/tracing_policy.h"

#define PROC_EVENTS_RINGBUF_BYTES (4 * 1024 * 1024)
#define AF_INET 2
#define PROC_SOCK_EVENTS_RINGBUF_BYTES (1024 * 1024)
#define PROC_ARGS_MAX 512 /* sizeof(process_event.args), a power of 2 */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PROC_EVENTS_RINGBUF_BYTES);
} proc_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PROC_SOCK_EVENTS_RINGBUF_BYTES);
} proc_sock_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct proc_config);
} proc_config SEC(".maps");

/* TCP sockets being connected or connected by a monitored process (socket address -> tgid; 0: an
 * accepted socket) until their close. A preallocated hash: no LRU free-list refill on the connect path.
 * A close missed while an upgrade replaced the program leaves its entry until the address is reused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} proc_socks SEC(".maps");

/* UDP sockets reported: socket address -> the tgid << 16 | local port they were reported with (emptied
 * by a starting agent, whose monitor knows none yet). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} proc_udp_socks SEC(".maps");

/* Syscalls per cgroup (a pod's), one counter per CPU: proc_syscalls, attached only on request. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} proc_syscall_counts SEC(".maps");

/* Process events the ring had no room for (one counter per CPU; the agent reports the sum). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} proc_lost SEC(".maps");

/*
 * The current directory of `task` as path components, innermost first, into ev->cwd: a bounded walk up
 * the dentries that crosses mount points (a tracepoint may not call bpf_d_path). Stops at the task's
 * root; deeper paths set PROC_F_CWD_TRUNC.
 */
static __always_inline void proc_read_cwd(struct task_struct *task, struct process_event *ev)
{
	struct dentry *dentry = BPF_CORE_READ(task, fs, pwd.dentry);
	struct vfsmount *vfsmnt = BPF_CORE_READ(task, fs, pwd.mnt);
	struct dentry *root = BPF_CORE_READ(task, fs, root.dentry);
	struct vfsmount *root_mnt = BPF_CORE_READ(task, fs, root.mnt);
	struct mount *mnt = container_of(vfsmnt, struct mount, mnt);
	struct dentry *parent, *mnt_root;
	struct mount *mnt_parent;
	__u32 depth = 0;

#pragma unroll
	for (int i = 0; i < PROC_CWD_DEPTH * 2; i++) {
		if (dentry == root && vfsmnt == root_mnt)
			break;
		mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
		if (dentry == mnt_root) {
			/* the top of a mount: continue from where it is mounted */
			mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
			if (mnt_parent == mnt)
				break;
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = mnt_parent;
			vfsmnt = &mnt->mnt;
			continue;
		}
		parent = BPF_CORE_READ(dentry, d_parent);
		if (parent == dentry)
			break;
		if (depth >= PROC_CWD_DEPTH) {
			ev->flags |= PROC_F_CWD_TRUNC;
			break;
		}
		bpf_probe_read_kernel_str(ev->cwd[depth], PROC_CWD_NAME, BPF_CORE_READ(dentry, d_name.name));
		depth++;
		dentry = parent;
	}
	ev->cwd_depth = depth;
}

/* Whether a socket's cgroup (its creator's; an accepted socket's is its listener's) is monitored. sk is
 * a BTF pointer: its fields are loaded directly; the ancestor (a slot at a variable index) is read. */
static __always_inline bool proc_sk_monitored(struct sock *sk)
{
	__u32 zero = 0;
	struct proc_config *cfg = bpf_map_lookup_elem(&proc_config, &zero);
	struct cgroup *cgrp, *ancestor = NULL;
	__u32 level;

	if (!cfg || !cfg->cgroup_id)
		return true;
	cgrp = sk->sk_cgrp_data.cgroup;
	level = cfg->level;
	if (!cgrp || level > 255 || cgrp->level < (int)level)
		return false;
	bpf_probe_read_kernel(&ancestor, sizeof(ancestor), &cgrp->ancestors[level]);
	return ancestor && BPF_CORE_READ(ancestor, kn, id) == cfg->cgroup_id;
}

/* Reserve a zeroed socket event of socket `sk` for the process `tgid`, with the time and the socket's
 * network namespace filled in; NULL (counted lost) when the ring is full. */
static __always_inline struct sock_event *proc_sock_event_reserve(struct sock *sk, __u32 tgid)
{
	struct sock_event *ev = bpf_ringbuf_reserve(&proc_sock_events, sizeof(*ev), 0);

	if (!ev) {
		ringbuf_count_lost(&proc_lost);
		return NULL;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = bpf_ktime_get_ns();
	ev->pid = tgid;
	ev->netns_ino = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	return ev;
}

/* Report TCP socket sk's state change for the process `tgid` (0: not known in this context). */
static __always_inline void proc_report_sock(struct sock *sk, int oldstate, int newstate, __u32 tgid)
{
	struct sock_event *ev = proc_sock_event_reserve(sk, tgid);

	if (!ev)
		return;
	ev->old_state = oldstate;
	ev->new_state = newstate;
	ev->saddr = sk->__sk_common.skc_rcv_saddr;
	ev->daddr = sk->__sk_common.skc_daddr;
	ev->sport = bpf_htons(sk->__sk_common.skc_num);
	ev->dport = sk->__sk_common.skc_dport;
	ev->protocol = IPPROTO_TCP;
	ringbuf_submit_lazy(ev, &proc_sock_events, PROC_SOCK_EVENTS_RINGBUF_BYTES);
}

/* Whether the current task is in the monitored cgroup subtree (every task when none is set). */
static __always_inline bool proc_monitored(void)
{
	__u32 zero = 0;
	struct proc_config *cfg = bpf_map_lookup_elem(&proc_config, &zero);

	if (!cfg || !cfg->cgroup_id)
		return true;
	return bpf_get_current_ancestor_cgroup_id(cfg->level) == cfg->cgroup_id;
}

/* Reserve a zeroed event with the time and the current task's identity filled in. */
static __always_inline struct process_event *proc_event_reserve(__u8 type)
{
	struct process_event *ev = bpf_ringbuf_reserve(&proc_events, sizeof(*ev), 0);
	struct task_struct *task;
	__u64 pid_tgid;

	if (!ev) {
		ringbuf_count_lost(&proc_lost);
		return NULL;
	}
	/* zero up to the strings; those are valid up to their NUL, args_len and cwd_depth */
	__builtin_memset(ev, 0, __builtin_offsetof(struct process_event, filename));
	ev->filename[0] = 0;
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
	struct task_struct *task;
	struct process_event *ev;
	__u64 start, end, len;
	__u32 loc;

	if (!proc_monitored())
		return 0;
	/* filename is a __data_loc string: offset in the low 16 bits */
	loc = ctx->__data_loc_filename & 0xffff;
	ev = proc_event_reserve(PROC_EXEC);
	rt_exec_policies((void *)ctx + loc, ev); /* a full ring loses the event, never the policy */
	if (!ev)
		return 0;
	bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), (void *)ctx + loc);
	/* argv as the new image has it on its stack: freshly written, so its pages are present */
	task = (struct task_struct *)bpf_get_current_task();
	start = BPF_CORE_READ(task, mm, arg_start);
	end = BPF_CORE_READ(task, mm, arg_end);
	len = end > start ? end - start : 0;
	if (len > PROC_ARGS_MAX) {
		ev->flags |= PROC_F_ARGS_TRUNC;
		len = PROC_ARGS_MAX;
	}
	if (len && bpf_probe_read_user(ev->args, len, (void *)start) == 0)
		ev->args_len = len;
	else if (len)
		ev->flags |= PROC_F_ARGS_ERROR;
	proc_read_cwd(task, ev);
	ringbuf_submit_lazy(ev, &proc_events, PROC_EVENTS_RINGBUF_BYTES);
	return 0;
}

SEC("raw_tp/sched_process_fork")
int proc_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	struct process_event *ev;
	__u32 tgid, pid;

	/* a new thread shares its creator's thread group: only new processes are events */
	__u64 sets;

	tgid = BPF_CORE_READ(child, tgid);
	pid = BPF_CORE_READ(child, pid);
	if (tgid != pid || !proc_monitored())
		return 0;
	/* the child runs its parent's binary until it execs */
	sets = rt_binsets_of(bpf_get_current_pid_tgid() >> 32);
	if (sets)
		bpf_map_update_elem(&proc_binsets, &tgid, &sets, BPF_ANY);
	ev = proc_event_reserve(PROC_FORK);
	if (!ev)
		return 0;
	ev->ppid = ev->pid; /* the forking process */
	ev->pid = tgid;
	ev->tid = pid;
	ringbuf_submit_lazy(ev, &proc_events, PROC_EVENTS_RINGBUF_BYTES);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int proc_exit(struct trace_event_raw_sched_process_template *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct process_event *ev;
	__u32 tgid;

	/* one event per process: when its last thread exits (signal->live already counts it out) */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_delete_elem(&proc_binsets, &tgid);
	if (!proc_monitored())
		return 0;
	ev = proc_event_reserve(PROC_EXIT);
	if (!ev)
		return 0;
	ev->exit_code = BPF_CORE_READ(task, exit_code);
	ringbuf_submit_lazy(ev, &proc_events, PROC_EVENTS_RINGBUF_BYTES);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(proc_tcp_connect, struct sock *sk, int oldstate, int newstate)
{
	__u64 key = (__u64)sk;
	__u32 tgid, *owner;

	if (sk->__sk_common.skc_family != AF_INET || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (newstate == TCP_SYN_SENT) {
		/* inside connect(): the current task is the process that opens the connection */
		if (!proc_monitored())
			return 0;
		tgid = bpf_get_current_pid_tgid() >> 32;
		bpf_map_update_elem(&proc_socks, &key, &tgid, BPF_ANY);
		return 0;
	}
	if (newstate == TCP_LISTEN || (oldstate == TCP_LISTEN && newstate == TCP_CLOSE)) {
		/* listen() and the listener's close() run in the owning process (an accepted socket is cloned
		 * from its listener: its LISTEN -> SYN_RECV runs in softirq and is no listener's close) */
		if (proc_monitored())
			proc_report_sock(sk, oldstate, newstate, bpf_get_current_pid_tgid() >> 32);
		return 0;
	}
	if (newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE)
		return 0;
	/* often in softirq: the socket's cgroup (its creator's; an accepted socket's is its listener's)
	 * says whether it is the node's; other agents' sockets on this machine cost no proc_socks lookup,
	 * whose key is cold every time */
	if (!proc_sk_monitored(sk))
		return 0;
	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		/* a passive open completes: its listener's owner names it in user space */
		tgid = 0;
		bpf_map_update_elem(&proc_socks, &key, &tgid, BPF_ANY);
		proc_report_sock(sk, oldstate, newstate, 0);
		return 0;
	}
	/* the owner comes from the connect; every socket ends in TCP_CLOSE, which frees its entry */
	owner = bpf_map_lookup_elem(&proc_socks, &key);
	if (!owner)
		return 0;
	tgid = *owner;
	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&proc_socks, &key);
	proc_report_sock(sk, oldstate, newstate, tgid);
	return 0;
}

/*
 * A monitored process sent or received on an IPv4 UDP socket: report its local address and port (and its
 * peer when connected) with the process, unless this socket was reported so already. Runs after the
 * protocol's sendmsg/recvmsg, in the caller's context: an unbound socket was autobound by then.
 */
static __always_inline void proc_udp_report(struct sock *sk, __u16 family, __u16 protocol)
{
	__u64 key = (__u64)sk, seen, *was;
	struct sock_event *ev;
	__u16 port;
	__u32 tgid;

	if (family != AF_INET || protocol != IPPROTO_UDP)
		return;
	port = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (!port)
		return; /* never bound (a send that failed early) */
	tgid = bpf_get_current_pid_tgid() >> 32;
	seen = (__u64)tgid << 16 | port;
	was = bpf_map_lookup_elem(&proc_udp_socks, &key);
	if ((was && *was == seen) || !proc_monitored())
		return;
	bpf_map_update_elem(&proc_udp_socks, &key, &seen, BPF_ANY);
	ev = proc_sock_event_reserve(sk, tgid);
	if (!ev)
		return;
	ev->saddr = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
	ev->daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
	ev->sport = bpf_htons(port);
	ev->dport = BPF_CORE_READ(sk, __sk_common.skc_dport);
	ev->new_state = TCP_ESTABLISHED; /* in use */
	ev->protocol = IPPROTO_UDP;
	ringbuf_submit_lazy(ev, &proc_sock_events, PROC_SOCK_EVENTS_RINGBUF_BYTES);
}

SEC("tracepoint/sock/sock_send_length")
int proc_udp_send(struct trace_event_raw_sock_msg_length *ctx)
{
	proc_udp_report((struct sock *)ctx->sk, ctx->family, ctx->protocol);
	return 0;
}

SEC("tracepoint/sock/sock_recv_length")
int proc_udp_recv(struct trace_event_raw_sock_msg_length *ctx)
{
	proc_udp_report((struct sock *)ctx->sk, ctx->family, ctx->protocol);
	return 0;
}

/* The syscall hooks of tracing policies: most processes are in no policy's scope, or run no binary a
 * policy names: two or three lookups, then out. */
static __always_inline int proc_syscall(struct trace_event_raw_sys_enter *ctx, __u8 hook)
{
	struct rt_eval eval = { .hook = hook, .str_pos = RT_NO_ARG };

	if (!rt_syscall_candidates(&eval) || !proc_monitored())
		return 0;
	rt_syscall_policies(ctx, &eval, &proc_events, PROC_EVENTS_RINGBUF_BYTES, &proc_lost);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int proc_openat(struct trace_event_raw_sys_enter *ctx)
{
	return proc_syscall(ctx, RT_HOOK_OPENAT);
}

SEC("tracepoint/syscalls/sys_enter_setuid")
int proc_setuid(struct trace_event_raw_sys_enter *ctx)
{
	return proc_syscall(ctx, RT_HOOK_SETUID);
}

SEC("tracepoint/syscalls/sys_enter_ptrace")
int proc_ptrace(struct trace_event_raw_sys_enter *ctx)
{
	return proc_syscall(ctx, RT_HOOK_PTRACE);
}

SEC("tracepoint/syscalls/sys_enter_mount")
int proc_mount(struct trace_event_raw_sys_enter *ctx)
{
	return proc_syscall(ctx, RT_HOOK_MOUNT);
}

SEC("tracepoint/syscalls/sys_enter_execve")
int proc_execve(struct trace_event_raw_sys_enter *ctx)
{
	return proc_syscall(ctx, RT_HOOK_EXECVE);
}

SEC("tracepoint/syscalls/sys_enter_open")
int proc_open(struct trace_event_raw_sys_enter *ctx)
{
	return proc_syscall(ctx, RT_HOOK_OPEN);
}

/* Every syscall of the machine: count it for the caller's cgroup (what the agent's scrape reads). */
SEC("tracepoint/raw_syscalls/sys_enter")
int proc_syscalls(void *ctx)
{
	__u64 cgroup_id = bpf_get_current_cgroup_id(), one = 1, *count;

	count = bpf_map_lookup_elem(&proc_syscall_counts, &cgroup_id);
	if (count)
		*count += 1; /* this CPU's own counter: no atomics */
	else
		bpf_map_update_elem(&proc_syscall_counts, &cgroup_id, &one, BPF_NOEXIST);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
