/* SPDX-License-Identifier: GPL-2.0 */
/*
 * tracing_policy.h - VelvetTracingPolicy in proc.bpf.o: sched/sched_process_exec (proc_exec) and the
 * syscalls/sys_enter_* hooks (proc_openat, proc_setuid, proc_ptrace, proc_mount, proc_execve, proc_open).
 *
 * At exec the new binary's full path (as executed) gives its binary sets: rt_bin_paths (exact paths,
 * matchBinaries In/NotIn) OR rt_bin_prefixes (LPM trie on the path bytes, matchBinaries Prefix; the agent
 * stores under each prefix the sets of every shorter prefix too, since the trie returns the longest only).
 * They are kept in proc_binsets, which the syscall hooks read for matchBinaries. A syscall's string argument
 * is matched the same way against the arg sets (rt_arg_paths: Equal, rt_arg_prefixes: Prefix, and
 * rt_arg_postfixes: Postfix, a trie of the reversed strings, as Tetragon does); an int argument against
 * the rule's own numbers (Equal, GT, LT). The
 * candidate rules are rt_config.global_rules OR rt_cgroup_rules of the process's cgroup (its pod's); each
 * is one selector of one hook: binary set, pids, path argument, then its action. Sigkill and Signal are
 * bpf_send_signal to the current process, delivered when it returns to user space: after the exec or the
 * syscall itself (this kernel has no LSM or override) — a kill after the fact, never a denial.
 */
#ifndef VELVET_LIB_TRACING_POLICY_H
#define VELVET_LIB_TRACING_POLICY_H

#include "lib/common.h"
#include "lib/runtime.h"

#define RT_BIN_PATHS_MAX 1024
#define RT_BIN_PREFIXES_MAX 1024
#define RT_ARG_PATHS_MAX 1024
#define RT_ARG_PREFIXES_MAX 1024
#define RT_CGROUPS_MAX 4096
#define SIGKILL 9

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RT_MAX_RULES);
	__type(key, __u32);
	__type(value, struct rt_rule);
} rt_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rt_config);
} rt_config SEC(".maps");

/* cgroup id (a pod's) -> the rules that apply to its processes */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RT_CGROUPS_MAX);
	__type(key, __u64);
	__type(value, __u64);
} rt_cgroup_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RT_BIN_PATHS_MAX);
	__type(key, struct rt_path);
	__type(value, __u64);
} rt_bin_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, RT_BIN_PREFIXES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct rt_path_lpm);
	__type(value, __u64);
} rt_bin_prefixes SEC(".maps");

/* a syscall's path argument: exact paths and prefixes -> arg sets (matchArgs Equal / Prefix) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RT_ARG_PATHS_MAX);
	__type(key, struct rt_path);
	__type(value, __u64);
} rt_arg_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, RT_ARG_PREFIXES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct rt_path_lpm);
	__type(value, __u64);
} rt_arg_prefixes SEC(".maps");

/* postfixes, each reversed (the string's last byte first) -> arg sets, as rt_arg_prefixes */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, RT_ARG_PREFIXES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct rt_path_lpm);
	__type(value, __u64);
} rt_arg_postfixes SEC(".maps");

/* The path being matched: a zero-padded hash key, and the same bytes as an LPM key (per CPU scratch). */
struct rt_scratch {
	struct rt_path_lpm lpm;
	struct rt_path exact;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rt_scratch);
} rt_scratch SEC(".maps");

/* The sets of the path in `scratch->exact` (`len` bytes with its NUL) in an exact map and a prefix trie. */
static __always_inline __u64 rt_sets_of_path(struct rt_scratch *scratch, long len, void *exact, void *prefixes)
{
	__u64 sets = 0, *found;

	if (len <= 1)
		return 0;
	found = bpf_map_lookup_elem(exact, &scratch->exact);
	if (found)
		sets |= *found;
	/* the trie compares bits up to prefixlen: the path without its NUL */
	__builtin_memcpy(scratch->lpm.path, scratch->exact.path, sizeof(scratch->lpm.path));
	scratch->lpm.prefixlen = (len - 1) * 8;
	found = bpf_map_lookup_elem(prefixes, &scratch->lpm);
	if (found)
		sets |= *found;
	return sets;
}

/* The binary sets of the path at `filename` (a kernel string), recorded for process `tgid`. */
static __always_inline __u64 rt_binsets_at_exec(const void *filename, __u32 tgid)
{
	struct rt_scratch *scratch;
	__u32 zero = 0;
	__u64 sets;
	long len;

	scratch = bpf_map_lookup_elem(&rt_scratch, &zero);
	if (!scratch)
		return 0;
	__builtin_memset(&scratch->exact, 0, sizeof(scratch->exact));
	len = bpf_probe_read_kernel_str(scratch->exact.path, sizeof(scratch->exact.path), filename);
	sets = rt_sets_of_path(scratch, len, &rt_bin_paths, &rt_bin_prefixes);
	if (sets)
		bpf_map_update_elem(&proc_binsets, &tgid, &sets, BPF_ANY);
	else
		bpf_map_delete_elem(&proc_binsets, &tgid);
	return sets;
}

/* The arg sets of a syscall's string argument (a user string): exact, prefixes, and postfixes reversed. */
static __always_inline __u64 rt_argsets_of(const void *user_path)
{
	struct rt_scratch *scratch;
	__u32 zero = 0, n;
	__u64 sets, *found;
	long len;

	scratch = bpf_map_lookup_elem(&rt_scratch, &zero);
	if (!scratch)
		return 0;
	__builtin_memset(&scratch->exact, 0, sizeof(scratch->exact));
	len = bpf_probe_read_user_str(scratch->exact.path, sizeof(scratch->exact.path), user_path);
	sets = rt_sets_of_path(scratch, len, &rt_arg_paths, &rt_arg_prefixes);
	if (len <= 1)
		return sets;
	n = (__u32)(len - 1);
	for (__u32 i = 0; i < RT_PATH_MAX; i++) {
		if (i >= n)
			break;
		scratch->lpm.path[i] = scratch->exact.path[(n - 1 - i) & (RT_PATH_MAX - 1)];
	}
	found = bpf_map_lookup_elem(&rt_arg_postfixes, &scratch->lpm);
	if (found)
		sets |= *found;
	return sets;
}

/* Whether `tgid` (or, following forks, one of its ancestors) is one of the rule's pids. */
static __always_inline bool rt_pid_listed(const struct rt_rule *rule, struct task_struct *task, __u32 tgid)
{
	__u32 depth = rule->pid_follow ? RT_PID_DEPTH : 1;

	for (__u32 level = 0; level < RT_PID_DEPTH; level++) {
		if (level >= depth || !tgid)
			break;
		for (__u32 i = 0; i < RT_MAX_PIDS; i++) {
			if (i >= rule->npids)
				break;
			if (rule->pids[i] == tgid)
				return true;
		}
		task = BPF_CORE_READ(task, real_parent);
		tgid = task ? BPF_CORE_READ(task, tgid) : 0;
	}
	return false;
}

/* What the rule loop (bpf_loop) works on. */
struct rt_eval {
	__u64 candidates;
	__u64 binsets;
	__u64 argsets;  /* the arg sets of the string argument `str_pos` */
	__u64 args[6];  /* the syscall's arguments */
	struct task_struct *task;
	__u32 tgid;
	__u32 span;     /* rule numbers to walk */
	__u16 policy;   /* out: the policy of the strongest action */
	__u8 action;    /* out: enum rt_action, the strongest of the policies that matched */
	__u8 hook;      /* enum rt_hook */
	__u8 str_pos;   /* the argument `argsets` belong to (RT_NO_ARG: none read yet) */
	__u8 report_str[2]; /* out: the strongest rule's string arguments to report */
};

/* Whether the rule's matchArgs holds: a string argument in its arg set, or an int compared with its values. */
static __always_inline bool rt_arg_matches(const struct rt_rule *rule, struct rt_eval *eval)
{
	__u32 pos = rule->arg_pos;
	__s64 value;

	if (pos >= 6)
		return false;
	/* the bound again, where the verifier sees it: an index into the stack must be bounded */
	pos &= 7;
	value = (__s32)eval->args[pos]; /* int arguments: the low 32 bits, signed, as events show */

	if (rule->arg_op == RT_MATCH_GT)
		return value > rule->arg_nums[0];
	if (rule->arg_op == RT_MATCH_LT)
		return value < rule->arg_nums[0];
	if (rule->arg_op == RT_MATCH_EQ) {
		for (__u32 i = 0; i < RT_MAX_ARG_NUMS; i++)
			if (i < rule->arg_nnums && rule->arg_nums[i] == value)
				return true;
		return false;
	}
	if (eval->str_pos != pos) {
		eval->argsets = rt_argsets_of((const void *)eval->args[pos]);
		eval->str_pos = pos;
	}
	return rule->argset < 64 && (eval->argsets >> rule->argset) & 1;
}

/* Whether one rule (a selector) matches the current process and the hook's arguments: the cheap checks
 * (binary set, pids) first, the argument (maybe a string read and three lookups) last. A global function:
 * the verifier checks it once per program, not in every pass over the rule loop's callback. */
__attribute__((noinline)) int rt_rule_matches(const struct rt_rule *rule, struct rt_eval *eval)
{
	bool in_set;

	if (!rule || !eval)
		return false;
	in_set = rule->binset < 64 && (eval->binsets >> rule->binset) & 1;

	if (rule->bin_op == RT_MATCH_IN && !in_set)
		return false;
	if (rule->bin_op == RT_MATCH_NOT_IN && in_set)
		return false;
	if (rule->pid_op != RT_MATCH_ANY &&
	    rt_pid_listed(rule, eval->task, eval->tgid) != (rule->pid_op == RT_MATCH_IN))
		return false;
	return rule->arg_op == RT_MATCH_ANY || rt_arg_matches(rule, eval);
}

/* One candidate rule `i`: act when it matches; a matching selector ends its policy's evaluation. */
static long rt_eval_rule(__u32 i, void *ctx)
{
	struct rt_eval *eval = ctx;
	struct rt_rule *rule;

	if (!eval->candidates)
		return 1;
	if (!((eval->candidates >> (i & 63)) & 1))
		return 0;
	rule = bpf_map_lookup_elem(&rt_rules, &i);
	if (!rule || rule->hook != eval->hook || !rt_rule_matches(rule, eval))
		return 0;
	eval->candidates &= ~rule->policy_rules;
	if (rule->action == RT_ACTION_SIGKILL)
		bpf_send_signal(SIGKILL);
	else if (rule->action == RT_ACTION_SIGNAL)
		bpf_send_signal(rule->signal);
	if (rule->action > eval->action) {
		eval->action = rule->action;
		eval->policy = rule->policy;
		eval->report_str[0] = rule->report_str[0];
		eval->report_str[1] = rule->report_str[1];
	}
	return 0;
}

/*
 * The rules that may apply to the current process: the node's and its cgroup's (0: none, the usual case);
 * `span` gets how many rule numbers to walk (the agent's highest in use + 1), `bin_in` the rules with
 * matchBinaries In.
 */
static __always_inline __u64 rt_candidates(__u32 *span, __u64 *bin_in)
{
	__u64 cgroup_id = bpf_get_current_cgroup_id(), candidates = 0, *rules;
	__u32 zero = 0;
	struct rt_config *cfg = bpf_map_lookup_elem(&rt_config, &zero);

	if (!cfg)
		return 0;
	candidates = cfg->global_rules;
	*span = cfg->rule_span < RT_MAX_RULES ? cfg->rule_span : RT_MAX_RULES;
	*bin_in = cfg->bin_in_rules;
	rules = bpf_map_lookup_elem(&rt_cgroup_rules, &cgroup_id);
	if (rules)
		candidates |= *rules;
	return candidates;
}

/* The candidates still alive for a process of binary sets `binsets`: in no set, no In rule can match. */
static __always_inline __u64 rt_alive(__u64 candidates, __u64 binsets, __u64 bin_in)
{
	return binsets ? candidates : candidates & ~bin_in;
}

/* Evaluate the hook's candidate rules; act, and note the strongest action and its policy. */
static __always_inline void rt_evaluate(struct rt_eval *eval)
{
	eval->task = (struct task_struct *)bpf_get_current_task();
	eval->tgid = bpf_get_current_pid_tgid() >> 32;
	if (eval->candidates)
		bpf_loop(eval->span, rt_eval_rule, eval, 0);
}

/*
 * Evaluate the exec policies for the current process, which just executed `filename`; act, and note in
 * `ev` (may be NULL: the ring was full, the policy still acts) the strongest action and its policy.
 */
static __always_inline void rt_exec_policies(const void *filename, struct process_event *ev)
{
	struct rt_eval eval = { .hook = RT_HOOK_EXEC };
	__u64 bin_in = 0;

	eval.binsets = rt_binsets_at_exec(filename, bpf_get_current_pid_tgid() >> 32);
	eval.candidates = rt_alive(rt_candidates(&eval.span, &bin_in), eval.binsets, bin_in);
	rt_evaluate(&eval);
	if (ev) {
		ev->action = eval.action;
		ev->policy = eval.policy;
	}
}

/* Copy the user string of syscall argument `pos` into `to` (RT_PATH_MAX bytes; "" when none or unreadable). */
static __always_inline void rt_report_str(char *to, __u8 pos, const __u64 *args)
{
	if (pos >= 6 || bpf_probe_read_user_str(to, RT_PATH_MAX, (const void *)args[pos & 7]) < 0)
		to[0] = 0;
}

/*
 * The rules of a syscall hook that may apply to the current process (0: none, the usual case, in two or
 * three lookups): its pod's or the node's, its binary sets allowing; `eval` gets them and the binary sets.
 */
static __always_inline __u64 rt_syscall_candidates(struct rt_eval *eval)
{
	__u64 bin_in = 0;

	eval->candidates = rt_candidates(&eval->span, &bin_in);
	if (!eval->candidates)
		return 0;
	eval->binsets = rt_binsets_of(bpf_get_current_pid_tgid() >> 32);
	eval->candidates = rt_alive(eval->candidates, eval->binsets, bin_in);
	return eval->candidates;
}

/*
 * The policies of a syscall hook for the candidates of `eval` (rt_syscall_candidates, not 0), the
 * arguments read only now; an event (PROC_TRACEPOINT) when a Post, Signal or Sigkill acted, with the six
 * arguments and the strings the policy reports.
 */
static __always_inline void rt_syscall_policies(struct trace_event_raw_sys_enter *ctx, struct rt_eval *eval,
						 void *ring, __u64 ring_bytes, void *lost_map)
{
	struct process_event *ev;
	struct task_struct *task;
	__u8 hook = eval->hook;

	/* a copy: the verifier allows no computed offsets into the context */
	if (bpf_probe_read_kernel(eval->args, sizeof(eval->args), ctx->args))
		return;
	rt_evaluate(eval);
	if (eval->action < RT_ACTION_POST)
		return;
	ev = bpf_ringbuf_reserve(ring, sizeof(*ev), 0);
	if (!ev) {
		ringbuf_count_lost(lost_map);
		return;
	}
	__builtin_memset(ev, 0, __builtin_offsetof(struct process_event, filename));
	ev->ts_ns = bpf_ktime_get_ns();
	ev->type = PROC_TRACEPOINT;
	ev->hook = hook;
	ev->action = eval->action;
	ev->policy = eval->policy;
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->pid = eval->tgid;
	ev->tid = (__u32)bpf_get_current_pid_tgid();
	task = eval->task;
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->uid = (__u32)bpf_get_current_uid_gid();
	ev->netns_ino = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	rt_report_str(ev->filename, eval->report_str[0], eval->args);
	rt_report_str(ev->args + sizeof(eval->args), eval->report_str[1], eval->args);
	__builtin_memcpy(ev->args, eval->args, sizeof(eval->args));
	ev->args_len = sizeof(eval->args);
	ringbuf_submit_lazy(ev, ring, ring_bytes);
}

#endif /* VELVET_LIB_TRACING_POLICY_H */
