// Fixture the verifier must refuse: reads a hash map value without the NULL check.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} rej_values SEC(".maps");

SEC("tc")
int tc_unchecked(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u64 *v = bpf_map_lookup_elem(&rej_values, &key);

	return (int)*v;
}
