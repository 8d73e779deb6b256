/* SPDX-License-Identifier: GPL-2.0 */
/*
 * runtime.h - what the runtime-security objects share: the binary sets of every process.
 *
 * proc.bpf.o's exec hook records, per process (tgid), the bitmap of the binary sets its binary belongs
 * to (bit i = set i of the policies' matchBinaries); fork copies it, exit deletes it. guard.bpf.o reads
 * it to apply a rule to given binaries only. Both objects pin it under the same name, so they share it.
 */
#ifndef VELVET_LIB_RUNTIME_H
#define VELVET_LIB_RUNTIME_H

#define RT_BINSETS_MAX 64 /* bits of a proc_binsets value */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);   /* tgid */
	__type(value, __u64); /* binary sets the process's binary belongs to */
} proc_binsets SEC(".maps");

#endif /* VELVET_LIB_RUNTIME_H */
