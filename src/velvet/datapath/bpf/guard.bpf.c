// SPDX-License-Identifier: GPL-2.0
/*
 * guard.bpf.c - runtime enforcement where this kernel lets an operation be refused: cgroup hooks.
 *
 *   guard_connect4/6:  connect() (TCP, UDP) to a destination prefix, port range and protocol
 *   guard_sendmsg4/6:  sendto()/sendmsg() of UDP datagrams that name their destination
 *   guard_sock_create: socket() of AF_INET/AF_INET6 by family, type and protocol
 *   guard_sysctl:      reads or writes of /proc/sys by name prefix
 *   guard_dev:         open/mknod of a device by type, major, minor and access
 *
 * Rules and how they are found are described in types.h (guard_rule). Without kprobes, fentry, LSM or
 * bpf_override_return here, these hooks are the only places where Velvet can refuse an operation:
 * returning 0 makes the call fail with EPERM. Every match of a rule writes a guard_event to the
 * guard_events ring and counts in guard_stats (slot; GUARD_RULES_MAX counts events lost).
 * Loaded and attached to the node's cgroup by velvet.runtime.guard.
 */
#include "lib/common.h"
#include "lib/runtime.h"

#define GUARD_EVENTS_RINGBUF_BYTES (256 * 1024)
#define AF_INET 2
#define AF_INET6 10
#define GUARD_VERDICT_ALLOW 1
#define GUARD_VERDICT_DENY 0
#define GUARD_NO_SLOT 0xff

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GUARD_RULES_MAX);
	__type(key, __u32);
	__type(value, struct guard_rule);
} guard_rules SEC(".maps");

/* (cgroup id, hook) -> slots of the rules of that hook for that cgroup's processes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct guard_scope_key);
	__type(value, __u64);
} guard_scope SEC(".maps");

/* Destination prefix -> slots of the connect/sendmsg rules whose prefixes contain it. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct guard_cidr4_key);
	__type(value, __u64);
} guard_cidr4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct guard_cidr6_key);
	__type(value, __u64);
} guard_cidr6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, GUARD_EVENTS_RINGBUF_BYTES);
} guard_events SEC(".maps");

/* Matches per slot, and (at GUARD_RULES_MAX) events the ring had no room for. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GUARD_RULES_MAX + 1);
	__type(key, __u32);
	__type(value, __u64);
} guard_stats SEC(".maps");

/* What the operation is: filled by each hook, read by the matching and the event. */
struct guard_op {
	__u8 hook;
	__u8 access;
	__u16 family;
	__u16 sock_type; /* the socket type; dev: BPF_DEVCG_DEV_* (as guard_event.sock_type) */
	__u16 protocol;
	__u16 port;      /* host order */
	__u32 major;
	__u32 minor;
	__u8 addr[16];
};

/* What guard_decide's loop reads and finds (bpf_loop verifies its callback once, whatever the rules). */
struct guard_search {
	struct guard_op op;
	char name[GUARD_NAME_MAX]; /* sysctl: the name; elsewhere unused */
	__u64 slots;
	__u64 binsets;
	__u32 deny;  /* the lowest matching deny rule's slot, GUARD_NO_SLOT if none */
	__u32 audit; /* the lowest matching audit rule's slot, GUARD_NO_SLOT if none */
};

/* Slots of `hook`'s rules that apply to the current process's cgroup (its own, and every cgroup's). */
static __always_inline __u64 guard_scope_slots(__u8 hook)
{
	struct guard_scope_key key = { .cgroup_id = bpf_get_current_cgroup_id(), .hook = hook };
	__u64 slots = 0, *found;

	found = bpf_map_lookup_elem(&guard_scope, &key);
	if (found)
		slots = *found;
	key.cgroup_id = 0;
	found = bpf_map_lookup_elem(&guard_scope, &key);
	if (found)
		slots |= *found;
	return slots;
}

/* Count one in guard_stats at `index` (a slot, or GUARD_RULES_MAX for a lost event). */
static __always_inline void guard_count(__u32 index)
{
	__u64 *count = bpf_map_lookup_elem(&guard_stats, &index);

	if (count)
		*count += 1;
}

/* Count the match of the rule in `slot` and report the operation. */
static __always_inline void guard_report(const struct guard_search *search, const struct guard_rule *rule,
					 __u32 slot)
{
	const struct guard_op *op = &search->op;
	struct guard_event *ev;
	__u64 pid_tgid;

	guard_count(slot);
	ev = bpf_ringbuf_reserve(&guard_events, sizeof(*ev), 0);
	if (!ev) {
		guard_count(GUARD_RULES_MAX);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	pid_tgid = bpf_get_current_pid_tgid();
	ev->ts_ns = bpf_ktime_get_ns();
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->uid = (__u32)bpf_get_current_uid_gid();
	ev->policy = rule->policy;
	ev->hook = op->hook;
	ev->action = rule->action;
	ev->slot = slot;
	ev->access = op->access;
	ev->family = op->family;
	ev->sock_type = op->sock_type;
	ev->protocol = op->protocol;
	ev->port = op->port;
	ev->major = op->major;
	ev->minor = op->minor;
	__builtin_memcpy(ev->addr, op->addr, sizeof(ev->addr));
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	__builtin_memcpy(ev->name, search->name, sizeof(ev->name));
	ev->name[GUARD_NAME_MAX - 1] = 0;
	ringbuf_submit_lazy(ev, &guard_events, GUARD_EVENTS_RINGBUF_BYTES);
}

/* Whether a rule's hook-specific fields match the operation (the sysctl name is checked apart). */
static __always_inline bool guard_fields_match(const struct guard_rule *rule, const struct guard_op *op)
{
	switch (op->hook) {
	case GUARD_HOOK_CONNECT:
	case GUARD_HOOK_SENDMSG:
		return (!rule->protocol || rule->protocol == op->protocol) &&
		       op->port >= rule->port_lo && op->port <= rule->port_hi;
	case GUARD_HOOK_SOCK_CREATE:
		return (!rule->family || rule->family == op->family) &&
		       (!rule->sock_type || rule->sock_type == op->sock_type) &&
		       (!rule->protocol || rule->protocol == op->protocol);
	case GUARD_HOOK_SYSCTL:
		return rule->access & op->access;
	case GUARD_HOOK_DEV:
		return (!rule->dev_type || rule->dev_type == op->sock_type) &&
		       (rule->major < 0 || (__u32)rule->major == op->major) &&
		       (rule->minor < 0 || (__u32)rule->minor == op->minor) && (rule->access & op->access);
	}
	return false;
}

/* Whether the first name_len bytes of a sysctl rule's prefix begin `name` (NUL-padded). */
static __always_inline bool guard_name_match(const struct guard_rule *rule, const char *name)
{
	__u32 len = rule->name_len;

	for (__u32 i = 0; i < GUARD_NAME_MAX; i++) {
		if (i >= len)
			return true;
		if (rule->name_prefix[i] != name[i])
			return false;
	}
	return true;
}

/* bpf_loop callback: look at slot `slot`; stop at the first matching deny rule. */
static long guard_try_slot(__u32 slot, void *data)
{
	struct guard_search *search = data;
	const struct guard_rule *rule;
	__u32 key = slot;

	if (slot >= GUARD_RULES_MAX || !(search->slots & (1ULL << slot)))
		return 0;
	rule = bpf_map_lookup_elem(&guard_rules, &key);
	if (!rule || rule->hook != search->op.hook)
		return 0;
	if (rule->binsets && !(rule->binsets & search->binsets))
		return 0;
	if (!guard_fields_match(rule, &search->op))
		return 0;
	if (search->op.hook == GUARD_HOOK_SYSCTL && !guard_name_match(rule, search->name))
		return 0;
	if (rule->action == GUARD_DENY) {
		search->deny = slot;
		return 1;
	}
	if (search->audit == GUARD_NO_SLOT)
		search->audit = slot;
	return 0;
}

/*
 * The verdict for an operation among the candidate slots: the lowest deny rule that matches fails it
 * (its event), else the lowest matching audit rule reports it and it goes on.
 */
static __always_inline int guard_decide(struct guard_search *search)
{
	const struct guard_rule *rule;
	__u32 slot;

	if (!search->slots)
		return GUARD_VERDICT_ALLOW;
	search->binsets = rt_binsets_of(bpf_get_current_pid_tgid() >> 32);
	search->deny = search->audit = GUARD_NO_SLOT;
	bpf_loop(GUARD_RULES_MAX, guard_try_slot, search, 0);
	slot = search->deny != GUARD_NO_SLOT ? search->deny : search->audit;
	if (slot == GUARD_NO_SLOT)
		return GUARD_VERDICT_ALLOW;
	rule = bpf_map_lookup_elem(&guard_rules, &slot);
	if (!rule)
		return GUARD_VERDICT_ALLOW;
	guard_report(search, rule, slot);
	return search->deny != GUARD_NO_SLOT ? GUARD_VERDICT_DENY : GUARD_VERDICT_ALLOW;
}

/* connect/sendmsg over IPv4: the destination's prefixes narrow the candidates. */
static __always_inline int guard_sock_addr4(struct bpf_sock_addr *ctx, __u8 hook)
{
	struct guard_search search = { .op = { .hook = hook, .family = AF_INET } };
	struct guard_cidr4_key key = { .prefixlen = 32 };
	__u64 slots = guard_scope_slots(hook), *found;

	if (!slots)
		return GUARD_VERDICT_ALLOW;
	key.addr = ctx->user_ip4;
	found = bpf_map_lookup_elem(&guard_cidr4, &key);
	if (!found)
		return GUARD_VERDICT_ALLOW;
	search.slots = slots & *found;
	search.op.sock_type = ctx->type;
	search.op.protocol = ctx->protocol;
	search.op.port = bpf_ntohs((__u16)ctx->user_port);
	__builtin_memcpy(search.op.addr, &key.addr, 4);
	return guard_decide(&search);
}

/* connect/sendmsg over IPv6 (IPv4-mapped destinations are matched as IPv6 addresses). */
static __always_inline int guard_sock_addr6(struct bpf_sock_addr *ctx, __u8 hook)
{
	struct guard_search search = { .op = { .hook = hook, .family = AF_INET6 } };
	struct guard_cidr6_key key = { .prefixlen = 128 };
	__u64 slots = guard_scope_slots(hook), *found;
	__u32 word;

	if (!slots)
		return GUARD_VERDICT_ALLOW;
	/* the context allows only 4-byte reads of user_ip6 */
	word = ctx->user_ip6[0];
	__builtin_memcpy(&key.addr[0], &word, 4);
	word = ctx->user_ip6[1];
	__builtin_memcpy(&key.addr[4], &word, 4);
	word = ctx->user_ip6[2];
	__builtin_memcpy(&key.addr[8], &word, 4);
	word = ctx->user_ip6[3];
	__builtin_memcpy(&key.addr[12], &word, 4);
	found = bpf_map_lookup_elem(&guard_cidr6, &key);
	if (!found)
		return GUARD_VERDICT_ALLOW;
	search.slots = slots & *found;
	search.op.sock_type = ctx->type;
	search.op.protocol = ctx->protocol;
	search.op.port = bpf_ntohs((__u16)ctx->user_port);
	__builtin_memcpy(search.op.addr, key.addr, 16);
	return guard_decide(&search);
}

SEC("cgroup/connect4")
int guard_connect4(struct bpf_sock_addr *ctx)
{
	return guard_sock_addr4(ctx, GUARD_HOOK_CONNECT);
}

SEC("cgroup/connect6")
int guard_connect6(struct bpf_sock_addr *ctx)
{
	return guard_sock_addr6(ctx, GUARD_HOOK_CONNECT);
}

SEC("cgroup/sendmsg4")
int guard_sendmsg4(struct bpf_sock_addr *ctx)
{
	return guard_sock_addr4(ctx, GUARD_HOOK_SENDMSG);
}

SEC("cgroup/sendmsg6")
int guard_sendmsg6(struct bpf_sock_addr *ctx)
{
	return guard_sock_addr6(ctx, GUARD_HOOK_SENDMSG);
}

SEC("cgroup/sock_create")
int guard_sock_create(struct bpf_sock *ctx)
{
	struct guard_search search = { .op = { .hook = GUARD_HOOK_SOCK_CREATE } };

	search.slots = guard_scope_slots(GUARD_HOOK_SOCK_CREATE);
	search.op.family = ctx->family;
	search.op.sock_type = ctx->type;
	search.op.protocol = ctx->protocol;
	return guard_decide(&search);
}

SEC("cgroup/sysctl")
int guard_sysctl(struct bpf_sysctl *ctx)
{
	struct guard_search search = { .op = { .hook = GUARD_HOOK_SYSCTL } };

	search.slots = guard_scope_slots(GUARD_HOOK_SYSCTL);
	if (!search.slots)
		return GUARD_VERDICT_ALLOW;
	search.op.access = ctx->write ? GUARD_SYSCTL_WRITE : GUARD_SYSCTL_READ;
	/* a longer name is cut (-E2BIG) and still compared on its first bytes */
	bpf_sysctl_get_name(ctx, search.name, sizeof(search.name), 0);
	return guard_decide(&search);
}

SEC("cgroup/dev")
int guard_dev(struct bpf_cgroup_dev_ctx *ctx)
{
	struct guard_search search = { .op = { .hook = GUARD_HOOK_DEV } };

	search.slots = guard_scope_slots(GUARD_HOOK_DEV);
	search.op.sock_type = ctx->access_type & 0xffff; /* BPF_DEVCG_DEV_* */
	search.op.access = ctx->access_type >> 16;       /* BPF_DEVCG_ACC_* */
	search.op.major = ctx->major;
	search.op.minor = ctx->minor;
	return guard_decide(&search);
}

char LICENSE[] SEC("license") = "GPL";
