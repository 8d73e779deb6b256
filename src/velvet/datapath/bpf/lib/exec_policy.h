/* SPDX-License-Identifier: GPL-2.0 */
/*
 * exec_policy.h - VelvetTracingPolicy on sched/sched_process_exec, evaluated in proc_exec.
 *
 * At exec the new binary's full path (as executed) gives its binary sets: rt_bin_paths (exact paths,
 * matchBinaries In/NotIn) OR rt_bin_prefixes (LPM trie on the path bytes, matchBinaries Prefix; the agent
 * stores under each prefix the sets of every shorter prefix too, since the trie returns the longest only).
 * They are kept in proc_binsets. The candidate rules are rt_config.global_rules OR rt_cgroup_rules of the
 * process's cgroup (its pod's); each is one selector: binary set, pids, then its action. Sigkill and Signal
 * are bpf_send_signal to the exec'ing process: the signal is delivered before the new image runs an
 * instruction, but after the exec itself (files opened, the image mapped) — a kill after the fact.
 */
#ifndef VELVET_LIB_EXEC_POLICY_H
#define VELVET_LIB_EXEC_POLICY_H

#include "lib/runtime.h"

#define RT_BIN_PATHS_MAX 1024
#define RT_BIN_PREFIXES_MAX 1024
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

/* The binary sets of the path at `filename` (a kernel string), recorded for process `tgid`. */
static __always_inline __u64 rt_binsets_at_exec(const void *filename, __u32 tgid)
{
	struct rt_scratch *scratch;
	__u64 sets = 0, *found;
	__u32 zero = 0;
	long len;

	scratch = bpf_map_lookup_elem(&rt_scratch, &zero);
	if (!scratch)
		return 0;
	__builtin_memset(&scratch->exact, 0, sizeof(scratch->exact));
	len = bpf_probe_read_kernel_str(scratch->exact.path, sizeof(scratch->exact.path), filename);
	if (len > 1) {
		found = bpf_map_lookup_elem(&rt_bin_paths, &scratch->exact);
		if (found)
			sets |= *found;
		/* the trie compares bits up to prefixlen: the path without its NUL */
		__builtin_memcpy(scratch->lpm.path, scratch->exact.path, sizeof(scratch->lpm.path));
		scratch->lpm.prefixlen = (len - 1) * 8;
		found = bpf_map_lookup_elem(&rt_bin_prefixes, &scratch->lpm);
		if (found)
			sets |= *found;
	}
	if (sets)
		bpf_map_update_elem(&proc_binsets, &tgid, &sets, BPF_ANY);
	else
		bpf_map_delete_elem(&proc_binsets, &tgid);
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

/* Whether one rule (a selector) matches the exec'ing process. */
static __always_inline bool rt_rule_matches(const struct rt_rule *rule, __u64 binsets, struct task_struct *task,
					    __u32 tgid)
{
	bool in_set = rule->binset < 64 && (binsets >> rule->binset) & 1;

	if (rule->bin_op == RT_MATCH_IN && !in_set)
		return false;
	if (rule->bin_op == RT_MATCH_NOT_IN && in_set)
		return false;
	if (rule->pid_op == RT_MATCH_ANY)
		return true;
	return rt_pid_listed(rule, task, tgid) == (rule->pid_op == RT_MATCH_IN);
}

/* What the rule loop (bpf_loop) works on. */
struct rt_eval {
	__u64 candidates;
	__u64 binsets;
	struct task_struct *task;
	struct process_event *ev;
	__u32 tgid;
};

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
	if (!rule || !rt_rule_matches(rule, eval->binsets, eval->task, eval->tgid))
		return 0;
	eval->candidates &= ~rule->policy_rules;
	if (rule->action == RT_ACTION_SIGKILL)
		bpf_send_signal(SIGKILL);
	else if (rule->action == RT_ACTION_SIGNAL)
		bpf_send_signal(rule->signal);
	if (eval->ev && rule->action > eval->ev->action) {
		eval->ev->action = rule->action;
		eval->ev->policy = rule->policy;
	}
	return 0;
}

/*
 * Evaluate the exec policies for the current process, which just executed `filename`; act, and note in
 * `ev` (may be NULL: the ring was full, the policy still acts) the strongest action and its policy.
 */
static __always_inline void rt_exec_policies(const void *filename, struct process_event *ev)
{
	struct rt_eval eval = {
		.task = (struct task_struct *)bpf_get_current_task(),
		.tgid = bpf_get_current_pid_tgid() >> 32,
		.ev = ev,
	};
	__u64 cgroup_id = bpf_get_current_cgroup_id(), *rules;
	__u32 zero = 0;
	struct rt_config *cfg = bpf_map_lookup_elem(&rt_config, &zero);

	eval.binsets = rt_binsets_at_exec(filename, eval.tgid);
	if (cfg)
		eval.candidates = cfg->global_rules;
	rules = bpf_map_lookup_elem(&rt_cgroup_rules, &cgroup_id);
	if (rules)
		eval.candidates |= *rules;
	if (eval.candidates)
		bpf_loop(RT_MAX_RULES, rt_eval_rule, &eval, 0);
}

#endif /* VELVET_LIB_EXEC_POLICY_H */
