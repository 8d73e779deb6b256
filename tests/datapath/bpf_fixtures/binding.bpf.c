// Fixture for the libbpf binding tests: maps of every kind the agent uses, a tc program that
// rewrites a packet, a counter program for tcx/cgroup attach and a ring buffer producer.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

struct pair {
	__u32 a;
	__u16 b;
	__u8 c;
	__u8 d;
	__u64 e;
};

struct lpm_v4 {
	__u32 prefixlen;
	__u32 addr;
};

struct event {
	__u64 seq;
	__u32 cpu;
	__u32 tag;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct pair);
} test_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} test_small SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4);
	__type(value, __u32);
} test_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} test_percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} test_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} test_events SEC(".maps");

// Which counter slot a program bumps: lets a test tell two programs apart.
static __always_inline void bump(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&test_counters, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

// Rewrite byte 12..13 (ethertype) to 0x88b5 and return TC_ACT_SHOT (2) when the mark is 7.
SEC("tc")
int tc_rewrite(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	eth->h_proto = bpf_htons(0x88b5);
	if (skb->mark == 7)
		return 2;
	return skb->ifindex == 1 ? 5 : 0;
}

SEC("tc")
int tc_count_a(struct __sk_buff *skb)
{
	bump(0);
	return 0; // TC_ACT_OK
}

SEC("tc")
int tc_count_b(struct __sk_buff *skb)
{
	bump(1);
	return 0;
}

// Refuse every IPv4 connect() of the cgroup and count it.
SEC("cgroup/connect4")
int cg_connect4(struct bpf_sock_addr *ctx)
{
	bump(2);
	return 0;
}

// Emit the number of records asked for in the first packet byte (at most 64), numbered; when the
// second byte is non-zero every record numbered 2 mod 3 is discarded after reserve, so the reader
// must skip DISCARD records.
SEC("tc")
int tc_events(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u8 *want = data;
	__u32 slot = 3;
	__u64 *seq = bpf_map_lookup_elem(&test_counters, &slot);
	__u32 lost = 4;

	if ((void *)(want + 2) > data_end || !seq)
		return 0;
	for (int i = 0; i < 64 && i < *want; i++) {
		struct event *e = bpf_ringbuf_reserve(&test_events, sizeof(*e), 0);

		if (!e) {
			bump(lost);
			continue;
		}
		e->seq = *seq;
		e->cpu = bpf_get_smp_processor_id();
		e->tag = (__u32)(e->seq % 3);
		*seq += 1;
		if (e->tag == 2 && want[1])
			bpf_ringbuf_discard(e, 0);
		else
			bpf_ringbuf_submit(e, 0);
	}
	return 0;
}

// Emit one variable-length record of 1 + (first byte & 15) bytes for read_raw.
SEC("tc")
int tc_raw_event(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u8 buf[16] = {};
	__u8 *p = data;

	if ((void *)(p + 16) > data_end)
		return 0;
	__builtin_memcpy(buf, p, 16);
	bpf_ringbuf_output(&test_events, buf, 1 + (buf[0] & 15), 0);
	return 0;
}

// Count getppid() calls system-wide (slot 5) for the tracepoint attach test.
SEC("tracepoint/syscalls/sys_enter_getppid")
int tp_getppid(void *ctx)
{
	bump(5);
	return 0;
}
