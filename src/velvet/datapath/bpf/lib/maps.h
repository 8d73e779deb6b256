/* SPDX-License-Identifier: GPL-2.0 */
/*
 * maps.h - the maps shared by lxc, node and sock objects.
 *
 * Every object includes the same definitions so that the agent, which sets a pin path for each
 * map under /sys/fs/bpf/velvet/<sandbox>/ before loading, re-adopts one set of maps across
 * objects and restarts. No LIBBPF_PIN_BY_NAME here: the loader decides where maps live.
 */
#ifndef VELVET_LIB_MAPS_H
#define VELVET_LIB_MAPS_H

#include "common.h"

#define LB4_SERVICES_MAX (65536 * 8)
#define LB4_BACKENDS_MAX 65536
#define LB4_REVNAT_MAX 65536
#define LB4_AFFINITY_MAX 65536
#define LB4_SRC_RANGE_MAX 16384
#define LB4_MAGLEV_MAX 4096
#define LB4_SOCK_REVNAT_MAX 262144
#define CT4_MAX 262144
#define IPV4_FRAGS_MAX 8192
#define IPCACHE_MAX 65536
#define LXC_ENDPOINTS_MAX 4096
#define POLICY_MAX 65536
#define METRICS_MAX 1024
#define EVENTS_RINGBUF_BYTES (4 * 1024 * 1024)
#define SNAT4_MAX 131072

/* Service frontends (slot 0) and their backend slots. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, LB4_SERVICES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb4_services SEC(".maps");

/* Backend id -> address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, LB4_BACKENDS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb4_backends SEC(".maps");

/* rev_nat_index -> frontend that replies are translated back to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, LB4_REVNAT_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb4_revnat SEC(".maps");

/* ClientIP session affinity. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb4_affinity_val);
	__uint(max_entries, LB4_AFFINITY_MAX);
} lb4_affinity SEC(".maps");

/* loadBalancerSourceRanges per frontend. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lb4_src_range_key);
	__type(value, __u8);
	__uint(max_entries, LB4_SRC_RANGE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb4_src_range SEC(".maps");

/* Maglev lookup tables per frontend. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb4_maglev_lut);
	__uint(max_entries, LB4_MAGLEV_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb4_maglev SEC(".maps");

/* Socket LB reverse translation for recvmsg4 of datagrams sendmsg4 translated
 * (an unconnected UDP socket may talk to several frontends). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_sock_revnat_key);
	__type(value, struct lb4_sock_revnat_val);
	__uint(max_entries, LB4_SOCK_REVNAT_MAX);
} lb4_sock_revnat SEC(".maps");

/* The same for sockets connect4 translated, in the socket's own storage: freed with the socket, no
 * LRU update on the connect path. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__type(key, int);
	__type(value, struct lb4_sock_revnat_sk);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb4_sock_revnat_sk SEC(".maps");

/* Connection tracking: a preallocated hash, not an LRU. The common LRU list hands a CPU free entries 128
 * at a time, and that refill (tens of us, every 64th connection between two pods) was the connect() p99.
 * Nothing is evicted: the agent sweeps expired entries (agent/daemon.py), and a full table drops new
 * connections (DROP_CT_MAP_FULL) while tracked ones go on. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct4_entry);
	__uint(max_entries, CT4_MAX);
} ct4 SEC(".maps");

/* Ports of fragmented datagrams. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_frag_key);
	__type(value, struct ipv4_frag_ports);
	__uint(max_entries, IPV4_FRAGS_MAX);
} ipv4_frags SEC(".maps");

/* Prefix -> security identity. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_info);
	__uint(max_entries, IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipcache SEC(".maps");

/* Policy CIDR prefix -> node-local CIDR identity (ipBlock peers); 0.0.0.0/0 -> WORLD. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_info);
	__uint(max_entries, IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipcache_cidr SEC(".maps");

/* Tunnel mode: key 0 names the VXLAN device (ifindex 0: native routing). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct tunnel_config);
	__uint(max_entries, 1);
} tunnel_config SEC(".maps");

/* Local pods by IPv4 address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct endpoint_info);
	__uint(max_entries, LXC_ENDPOINTS_MAX);
} lxc_endpoints SEC(".maps");

/* Per-endpoint policy rules. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} policy SEC(".maps");

/* Forwarded/dropped packet and byte counters per reason and direction. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_MAX);
} metrics SEC(".maps");

/* Flow events (struct flow_event records). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RINGBUF_BYTES);
} events SEC(".maps");

/* NodePort SNAT towards backends on other nodes: two entries per connection (enum snat_dir). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct snat4_key);
	__type(value, struct snat4_entry);
	__uint(max_entries, SNAT4_MAX);
} snat4 SEC(".maps");

/* The node's settings for the uplink programs (key 0), written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(max_entries, 1);
} node_config SEC(".maps");

#endif /* VELVET_LIB_MAPS_H */
