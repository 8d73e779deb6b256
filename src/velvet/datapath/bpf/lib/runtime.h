/* SPDX-License-Identifier: GPL-2.0 */
/*
 * runtime.h - what the runtime-security objects share: the binary sets of every process.
 *
 * proc_binsets: tgid -> u64 bitmap, bit i set when the process's binary (the full path it executed) is in
 * binary set i of the agent's tracing-policy compiler (a matchBinaries In or Prefix list). proc.bpf.o
 * writes it at exec, copies the parent's at fork and deletes it at exit; other objects (cgroup hooks
 * that deny for given binaries) read the same pinned map. A process that ran before the agent gets its
 * entry from the agent (/proc).
 */
#ifndef VELVET_LIB_RUNTIME_H
#define VELVET_LIB_RUNTIME_H

#define PROC_BINSETS_MAX 65536

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PROC_BINSETS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} proc_binsets SEC(".maps");

/* The binary sets of process `tgid` (0: none, or not known). */
static __always_inline __u64 rt_binsets_of(__u32 tgid)
{
	__u64 *sets = bpf_map_lookup_elem(&proc_binsets, &tgid);

	return sets ? *sets : 0;
}

#endif /* VELVET_LIB_RUNTIME_H */
