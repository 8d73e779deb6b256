/* SPDX-License-Identifier: GPL-2.0 */
/*
 * types.h - the one contract between the Velvet datapath and the control plane.
 *
 * Every struct, enum and constant that Python reads or writes lives here and nowhere else;
 * src/velvet/datapath/structs.py mirrors it (ctypes Structures with the same names and field
 * names, IntEnums with the same values) and tests/datapath/test_structs_btf.py checks the mirror
 * against the BTF of every built object and against the enum/#define values of this file.
 *
 * Conventions:
 *  - addresses and ports are in network byte order (__be32/__be16), everything else host order;
 *  - every struct is naturally aligned (no packing), explicit pad fields are zero;
 *  - timestamps are CLOCK_MONOTONIC nanoseconds (Python time.monotonic_ns()): bpf_ktime_get_ns() in events,
 *    the tick-resolution bpf_ktime_get_coarse_ns() in conntrack and affinity entries (lib/common.h).
 *
 * The includer provides the kernel's __u8..__u64/__be16/__be32 typedefs (vmlinux.h).
 *
 * Design decisions (datapath-wide):
 *  - Services: socket LB (cgroup connect4/sendmsg4 on the cgroup holding the pods) translates
 *    connections at the socket, so pod-to-service traffic is never NATed per packet and hairpin
 *    (a pod reaching itself through its service) stays inside the pod. lxc_from_pod repeats the
 *    lookup per packet for what the socket LB did not see (DNAT + a CT_SERVICE entry, reverse NAT
 *    in lxc_to_pod); that path cannot hairpin (no SNAT). A frontend without backends is
 *    REJECTED: the socket LB fails connect()/sendmsg() with ECONNREFUSED (EHOSTUNREACH when only a
 *    node-local backend set is empty: iTP/eTP=Local), the tc paths answer a TCP segment with a RST
 *    and a UDP datagram with ICMP port unreachable, sent straight back to the client; an empty
 *    node-local set at the tc paths drops silently (DROP_NO_LOCAL_BACKEND), like kube-proxy.
 *  - NodePort/ExternalIP/LoadBalancer from outside: node_from_uplink DNATs to the backend, without
 *    SNAT when the backend is a local pod (client IP preserved, as eTP=Local needs), and records
 *    two entries: CT_SERVICE on the original tuple (sticks the backend) and CT_NODEPORT on the
 *    translated tuple; the reverse NAT of replies happens in node_to_uplink. A backend on another
 *    node is reached SNATed to the node (see "NodePort to backends on other nodes" below).
 *    Reverse NAT (both tc paths) writes back the frontend the client used, recorded in the
 *    translated entry, as long as the frontend's lb4_revnat entry exists; without it replies are
 *    dropped (DROP_NAT_NO_MAPPING) instead of leaking untranslated.
 *  - The control plane gives the node's own addresses the IDENTITY_HOST identity in ipcache: the
 *    NodePort wildcard frontend (0.0.0.0) serves exactly those addresses.
 *  - Conntrack: one LRU map, the direction is part of the key. CT_EGRESS = connection opened by
 *    the local pod (forward tuple as the pod sent it, after service translation), CT_INGRESS =
 *    connection accepted by the local pod (forward tuple as it arrived), CT_SERVICE = original
 *    (pre-DNAT) tuple of a translated connection -> backend, CT_NODEPORT = translated tuple of a
 *    connection DNATed at the uplink -> frontend. Entries older than their lifetime count as
 *    absent; nothing deletes them on a timer (the LRU map evicts the least recently used when
 *    full, and the agent flushes the entries of backends a frontend dropped). ICMP errors
 *    quoting a tracked connection pass as related (not reverse-translated), except at the
 *    uplink: errors about connections DNATed there are translated back to name the frontend.
 *  - lxc_from_pod accepts only packets whose source is the endpoint registered for that address
 *    with this veth's ifindex (DROP_INVALID_SOURCE otherwise).
 *  - Tunnel mode (tunnel_config.ifindex != 0): what lxc_from_pod passes to an address whose
 *    ipcache entry has a tunnel_endpoint is encapsulated there (VXLAN, VNI = the source's
 *    identity) and redirected to the VXLAN device; the receiver takes the source identity from
 *    the VNI (the sender's HOST becomes REMOTE_NODE) instead of the ipcache.
 *  - Policy is decided once per connection on the backend pod's IP and port; replies and
 *    established packets pass through conntrack. Every policy entry allows (NetworkPolicy has
 *    no deny): an isolated endpoint's new connection passes iff some entry matches.
 *  - IP fragments: the first fragment records its ports in ipv4_frags keyed by
 *    {saddr, daddr, id, proto}; later fragments take their ports from there (a pod's later
 *    fragment without a recorded first one is dropped with DROP_FRAG_NOT_FOUND).
 *  - Unknown L4 protocols are handled with ports 0 (policy can allow them by protocol).
 *  - Events are aggregated like Cilium's "medium" monitor aggregation: a trace event when a
 *    connection is created, when a TCP flag of interest (SYN/FIN/RST) is first seen in a
 *    direction, and at most once per CT_REPORT_INTERVAL_S per connection otherwise; every drop; a
 *    policy-verdict event for every new connection of an endpoint isolated in that direction
 *    (endpoints not isolated have no verdict to report).
 */
#ifndef VELVET_TYPES_H
#define VELVET_TYPES_H

/* ---- constants shared with the control plane -------------------------------------------- */

/* Maglev lookup table size (prime); the control plane computes the table. */
#define LB_MAGLEV_LUT_SIZE 1021

/* Conntrack lifetimes in seconds since the last packet. */
#define CT_LIFETIME_TCP_S 21600   /* established TCP (a reply was seen) */
#define CT_LIFETIME_SYN_S 60      /* TCP that has not seen a reply yet */
#define CT_LIFETIME_NONTCP_S 60   /* UDP, ICMP and other protocols */
#define CT_LIFETIME_CLOSE_S 10    /* TCP after RST, or FIN in both directions */

/* Minimum time between two trace events of one established flow direction. */
#define CT_REPORT_INTERVAL_S 5

/* ---- enums --------------------------------------------------------------------------------- */

/* Drop reasons: Cilium's numbers where Cilium has the reason; Velvet's own start at 230. */
enum drop_reason {
	DROP_INVALID_SOURCE = 132,     /* source IP is not the sending endpoint's address */
	DROP_POLICY_DENIED = 133,      /* isolated endpoint and no rule allows the connection */
	DROP_INVALID_PACKET = 134,     /* malformed or truncated IPv4/L4 header */
	DROP_CT_MAP_FULL = 138,        /* the conntrack entry could not be created */
	DROP_WRITE_ERROR = 141,        /* rewriting the packet failed */
	DROP_NO_SERVICE_BACKEND = 158, /* service frontend without backends (rejected) */
	DROP_NO_TUNNEL_ENDPOINT = 160, /* tunnel mode: no node to send the destination to */
	DROP_NAT_NO_MAPPING = 167,     /* reply of a translated flow whose reverse NAT is gone */
	DROP_FRAG_NOT_FOUND = 175,     /* later IP fragment whose first fragment was not seen */
	DROP_LB_SOURCE_RANGE = 177,    /* client not in loadBalancerSourceRanges */
	DROP_NO_LOCAL_BACKEND = 230,   /* traffic policy Local and no node-local backend */
	DROP_NO_FIB = 169,             /* a NodePort packet SNATed to another node has no route (or TTL 1) */
	DROP_SNAT_NO_PORT = 231,       /* no free SNAT port towards that backend */
};

/* Non-drop reasons of the metrics map (drop reasons are >= 130). */
enum metric_reason {
	METRIC_FORWARDED = 0,   /* packets passed on */
	METRIC_EVENTS_LOST = 1, /* events not written because the ring buffer was full */
};

/* Direction of a metrics entry, seen from the endpoint or the node. */
enum metric_dir {
	METRIC_INGRESS = 0, /* towards a pod (lxc_to_pod) or into the node (node_from_uplink) */
	METRIC_EGRESS = 1,  /* from a pod (lxc_from_pod, socket LB) or out of the node */
};

enum event_type {
	EVENT_TRACE = 1,          /* a packet of a flow was forwarded (aggregated) */
	EVENT_DROP = 2,           /* a packet was dropped (always reported) */
	EVENT_POLICY_VERDICT = 3, /* policy decided a new connection */
	EVENT_SOCK = 4,           /* the socket LB translated a service address */
};

/* Where an event was observed. */
enum obs_point {
	OBS_FROM_ENDPOINT = 1, /* lxc_from_pod: leaving a pod */
	OBS_TO_ENDPOINT = 2,   /* lxc_to_pod: entering a pod */
	OBS_FROM_NETWORK = 3,  /* node_from_uplink: entering the node from outside */
	OBS_TO_NETWORK = 4,    /* node_to_uplink: leaving the node */
	OBS_SOCK_CONNECT = 5,  /* sock_connect4 */
	OBS_SOCK_SENDMSG = 6,  /* sock_sendmsg4 */
};

enum verdict {
	VERDICT_FORWARDED = 1,
	VERDICT_DROPPED = 2,
	VERDICT_AUDIT = 3,      /* policy would drop, endpoint in audit mode: forwarded */
	VERDICT_TRANSLATED = 4, /* socket LB rewrote the destination */
};

/* flow_event.flags */
enum event_flags {
	EV_F_REPLY = 1 << 0,         /* packet of the reply direction of a tracked connection */
	EV_F_NEW_CT = 1 << 1,        /* this packet created the connection */
	EV_F_POLICY_L3 = 1 << 2,     /* verdict from a rule on the peer identity, any proto/port */
	EV_F_POLICY_L4 = 1 << 3,     /* verdict from a rule with a protocol or port */
	EV_F_POLICY_ANY_PEER = 1 << 4, /* verdict from a rule for any peer identity */
	EV_F_POLICY_DEFAULT = 1 << 5, /* no rule matched: default allow (not isolated) or deny */
	EV_F_REV_NAT = 1 << 6,       /* the source was translated back to the service frontend */
	EV_F_RELATED = 1 << 7,       /* ICMP error about a tracked connection */
};

/* Transport-layer flags as on the wire (flow_event.tcp_flags, ct4_entry.*_flags_seen). */
enum tcp_flag_bits {
	TCP_F_FIN = 0x01,
	TCP_F_SYN = 0x02,
	TCP_F_RST = 0x04,
	TCP_F_PSH = 0x08,
	TCP_F_ACK = 0x10,
	TCP_F_URG = 0x20,
};

/* lb4_service.flags (slot 0) */
enum svc_flags {
	SVC_CLUSTERIP = 1 << 0,
	SVC_NODEPORT = 1 << 1,      /* frontend is a node IP + nodePort */
	SVC_EXTERNAL_IP = 1 << 2,
	SVC_LOADBALANCER = 1 << 3,
	SVC_AFFINITY = 1 << 4,      /* sessionAffinity ClientIP, timeout in affinity_timeout */
	SVC_SOURCE_RANGE = 1 << 5,  /* check lb4_src_range at the uplink */
	SVC_MAGLEV = 1 << 6,        /* tc paths select through lb4_maglev (external scope's set) */
	SVC_TWO_SCOPES = 1 << 7,    /* an internal-scope frontend exists for internal clients */
	SVC_LOCAL_ONLY_EXT = 1 << 8, /* eTP=Local: external scope holds node-local backends only */
	SVC_LOCAL_ONLY_INT = 1 << 9, /* iTP=Local: internal scope holds node-local backends only */
};

/* lb4_key.scope */
enum lb_scope {
	LB_SCOPE_EXT = 0, /* external clients, and everybody when the service has one scope */
	LB_SCOPE_INT = 1, /* pods and node processes, when SVC_TWO_SCOPES */
};

/* lb4_backend.state */
enum backend_state {
	BE_ACTIVE = 0,
	BE_TERMINATING = 1, /* serving but terminating: kept for existing flows, no new affinity */
	BE_QUARANTINED = 2, /* unhealthy: never selected through affinity */
};

/* ct4_key.dir */
enum ct_dir {
	CT_EGRESS = 0,   /* connection opened by a local pod */
	CT_INGRESS = 1,  /* connection accepted by a local pod */
	CT_SERVICE = 2,  /* original tuple of a service connection -> selected backend */
	CT_NODEPORT = 3, /* translated tuple of a connection DNATed at the uplink -> frontend */
};

/* ct4_entry.flags */
enum ct_flags {
	CT_F_CLOSING = 1 << 0,    /* RST seen, or FIN seen in both directions */
	CT_F_SEEN_REPLY = 1 << 1, /* a packet of the reply direction was seen */
	CT_F_NODEPORT = 1 << 2,   /* created by node_from_uplink */
	CT_F_AUDIT = 1 << 3,      /* allowed only because the endpoint is in policy audit mode */
	CT_F_NO_UPLINK_NAT = 1 << 4, /* TCP opened by a pure SYN, untranslated at this uplink (Host routing) */
};

/* endpoint_info.flags */
enum ep_flags {
	EP_POLICY_INGRESS = 1 << 0, /* isolated for ingress: only policy-allowed traffic enters */
	EP_POLICY_EGRESS = 1 << 1,  /* isolated for egress */
	EP_POLICY_AUDIT = 1 << 2,   /* report policy drops as AUDIT and forward */
};

/* policy_key.direction */
enum policy_dir {
	POLICY_INGRESS = 0,
	POLICY_EGRESS = 1,
};

/* policy_entry.flags; bits 0-1 stay unused (an older agent's pinned entries may set them) */
enum policy_flags {
	POLICY_L4 = 1 << 2, /* the entry names a protocol (and maybe ports): reported as L3-L4 */
};

/* Reserved security identities; allocated identities start at IDENTITY_FIRST_ALLOCATED. */
enum reserved_identity {
	IDENTITY_ANY = 0, /* policy_key.identity wildcard */
	IDENTITY_HOST = 1,
	IDENTITY_WORLD = 2,
	IDENTITY_UNMANAGED = 3,
	IDENTITY_HEALTH = 4,
	IDENTITY_INIT = 5,
	IDENTITY_REMOTE_NODE = 6,
	IDENTITY_FIRST_ALLOCATED = 256,
};

/* process_event.type */
enum proc_event_type {
	PROC_EXEC = 1,
	PROC_EXIT = 2,
	PROC_FORK = 4,
	PROC_TRACEPOINT = 8, /* a tracing policy's syscall hook matched (process_event.hook) */
};

/* process_event.flags */
enum proc_event_flags {
	PROC_F_ARGS_TRUNC = 1,  /* the arguments were longer than process_event.args */
	PROC_F_ARGS_ERROR = 2,  /* the arguments could not be read (page not present) */
	PROC_F_CWD_TRUNC = 4,   /* the cwd had more components than process_event.cwd holds */
};

#define PROC_CWD_DEPTH 12 /* path components of process_event.cwd */
#define PROC_CWD_NAME 32  /* bytes per component (longer names are cut, NUL-terminated) */

/* ---- service load balancing ---------------------------------------------------------------- */

/*
 * lb4_services key: slot 0 is the frontend, slots 1..count name its backends. A NodePort
 * frontend with address 0 (0.0.0.0) is the wildcard: it serves every address whose ipcache
 * identity is IDENTITY_HOST, when no frontend with the exact address exists.
 */
struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 backend_slot;
	__u8 proto;
	__u8 scope; /* enum lb_scope */
	__u8 pad[2];
};

/* lb4_services value: slot 0 fills count/flags/rev_nat_index/affinity_timeout, slots >0 backend_id. */
struct lb4_service {
	__u32 backend_id;
	__u32 affinity_timeout; /* seconds */
	__u16 count;            /* number of backend slots */
	__u16 rev_nat_index;    /* this frontend's id in lb4_revnat, never 0 */
	__u16 flags;            /* enum svc_flags */
	__u16 pad;
};

/* lb4_backends value, keyed by a __u32 backend id (never 0). */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 state; /* enum backend_state */
};

/*
 * lb4_revnat value, keyed by a __u16 rev_nat_index: the frontend (0.0.0.0 for the NodePort
 * wildcard). Its presence keeps replies of translated connections flowing; the datapath writes
 * back the address/port the client actually used, recorded in the connection's ct4_entry.
 */
struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

/* lb4_affinity key: the client is a netns cookie (socket LB) or an IPv4 address in host order (tc LB). */
struct lb4_affinity_key {
	__u64 client;
	__u16 rev_nat_index;
	__u8 netns_cookie; /* 1 when client is a netns cookie */
	__u8 pad[5];
};

struct lb4_affinity_val {
	__u64 last_used_ns;
	__u32 backend_id;
	__u32 pad;
};

/* lb4_src_range LPM key: prefixlen = 32 + CIDR length (rev_nat_index and pad always match). */
struct lb4_src_range_key {
	__u32 prefixlen;
	__u16 rev_nat_index;
	__u16 pad;
	__be32 address;
};

/* lb4_maglev value, keyed by __u16 rev_nat_index. */
struct lb4_maglev_lut {
	__u32 backend_ids[LB_MAGLEV_LUT_SIZE];
};

/* lb4_sock_revnat key: a socket and the backend it was translated to. */
struct lb4_sock_revnat_key {
	__u64 cookie;
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct lb4_sock_revnat_val {
	__be32 address; /* the service frontend */
	__be16 port;
	__u16 rev_nat_index;
};

/* lb4_sock_revnat_sk value: the socket-local storage of a socket connect4 translated (one per socket;
 * a re-connect replaces it): the backend it was sent to, and the frontend it answers with. */
struct lb4_sock_revnat_sk {
	__be32 backend_address;
	__be32 address; /* the service frontend */
	__be16 backend_port;
	__be16 port;
	__u16 rev_nat_index;
	__u16 pad;
};

/* ---- conntrack ----------------------------------------------------------------------------- */

struct ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport; /* ICMP echo: identifier as sport of requests, as dport of replies */
	__be16 dport;
	__u8 proto;
	__u8 dir; /* enum ct_dir */
	__u16 pad;
};

struct ct4_entry {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u64 last_report_ns;
	__u64 packets; /* forward direction (as in the key) */
	__u64 bytes;
	__u64 rx_packets; /* reply direction */
	__u64 rx_bytes;
	__be32 nat_addr;      /* CT_SERVICE: backend; translated entries: original frontend */
	__be16 nat_port;
	__u16 rev_nat_index;  /* != 0: replies are translated back to nat_addr/nat_port */
	__u32 src_identity;   /* identities of the forward direction's source and destination when */
	__u32 dst_identity;   /* the connection was created (0: not resolved); its events reuse them */
	__u32 policy_id;      /* policy that allowed the connection, 0 if none */
	__u32 backend_id;     /* CT_SERVICE: the selected backend */
	__u8 tx_flags_seen;   /* TCP flags seen in the forward direction */
	__u8 rx_flags_seen;   /* TCP flags seen in the reply direction */
	__u8 flags;           /* enum ct_flags */
	__u8 pad;
};

/* ipv4_frags: ports of a fragmented datagram, recorded from its first fragment. */
struct ipv4_frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

struct ipv4_frag_ports {
	__be16 sport;
	__be16 dport;
};

/* ---- identity, endpoints, policy ------------------------------------------------------------ */

/* ipcache LPM key: prefixlen is the CIDR length (0..32). A miss means IDENTITY_WORLD. */
struct ipcache_key {
	__u32 prefixlen;
	__be32 ip;
};

struct ipcache_info {
	__u32 identity;
	__be32 tunnel_endpoint; /* underlay IP of the node the address lives on; 0 for local or outside */
	__u32 flags;
};

/*
 * tunnel_config value (an array of one, key 0). Tunnel mode when ifindex != 0: packets to an
 * address whose ipcache entry names a tunnel_endpoint are encapsulated (VXLAN, VNI = source
 * identity) towards that node through the device ifindex; native routing when 0.
 */
struct tunnel_config {
	__u32 ifindex; /* the node's VXLAN device (external / collect_md mode) */
	__u32 pad;
};

/* lxc_endpoints value, keyed by the pod's __be32 IPv4 address. */
struct endpoint_info {
	__u32 ifindex;  /* host-side veth; packets from the pod must arrive there */
	__u32 identity;
	__u16 ep_id;    /* policy_key.ep_id */
	__u8 flags;     /* enum ep_flags */
	__u8 pad;
	__u8 mac[6];      /* the pod's interface; all zero: not known (host routing asks the FIB) */
	__u8 node_mac[6]; /* the host-side veth's */
};

/*
 * policy LPM key. The bytes after prefixlen are matched most significant bit first:
 * prefixlen 64 = (ep_id, direction, identity) with any protocol and port, 80 = protocol with
 * any port, 80 + N = the first N bits of the port (port ranges are split into such prefixes).
 * identity 0 matches any peer. pad0/pad1 are zero.
 */
struct policy_key {
	__u32 prefixlen;
	__u16 ep_id;
	__u8 direction; /* enum policy_dir */
	__u8 pad0;
	__u32 identity;
	__u8 proto;
	__u8 pad1;
	__be16 dport;
};

/* policy value: its presence allows the key's connections. */
struct policy_entry {
	__u32 flags;     /* enum policy_flags */
	__u32 policy_id; /* the control plane maps it to the NetworkPolicies that allow the key */
};

/* ---- observability --------------------------------------------------------------------------- */

/* metrics (per-CPU) key: reason is enum metric_reason (< 130) or enum drop_reason. */
struct metrics_key {
	__u16 reason;
	__u8 direction; /* enum metric_dir */
	__u8 pad[5];
};

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* events ring buffer record (64 bytes). */
struct flow_event {
	__u64 ts_ns;
	__u64 cookie;       /* socket events: cgroup id of the process; 0 for packet events */
	__be32 saddr;
	__be32 daddr;
	__be32 orig_daddr;  /* service frontend before translation, 0 if none */
	__be16 sport;
	__be16 dport;
	__be16 orig_dport;
	__u16 rev_nat_index;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 policy_id;
	__u32 ifindex;
	__u32 bytes;        /* length of the packet (0 for socket events) */
	__u16 drop_reason;  /* enum drop_reason, 0 unless dropped */
	__u8 type;          /* enum event_type */
	__u8 obs_point;     /* enum obs_point */
	__u8 proto;
	__u8 tcp_flags;
	__u8 verdict;       /* enum verdict */
	__u8 flags;         /* enum event_flags */
};

/*
 * proc_events ring buffer record (proc.bpf.o, loaded by the agent's process monitor). Bytes after the
 * filename's NUL, past args_len in args and past cwd_depth in cwd are undefined.
 */
struct process_event {
	__u64 ts_ns;     /* bpf_ktime_get_ns() of the exec, fork or exit */
	__u64 cgroup_id;
	__u32 netns_ino; /* inode of the network namespace: attributes the process to its pod */
	__u32 pid;       /* thread-group id (the child's for PROC_FORK) */
	__u32 tid;
	__u32 ppid;      /* the parent's thread-group id (the forking process for PROC_FORK) */
	__u32 uid;
	__s32 exit_code; /* PROC_EXIT: wait(2) status (code << 8 | signal) */
	__u8 type;       /* enum proc_event_type */
	__u8 flags;      /* enum proc_event_flags */
	__u8 action;     /* PROC_EXEC, PROC_TRACEPOINT: enum rt_action of the strongest matching policy (0: none) */
	__u8 hook;       /* PROC_TRACEPOINT: enum rt_hook */
	__u32 args_len;  /* PROC_EXEC: bytes of args used */
	__u8 cwd_depth;  /* PROC_EXEC: components used in cwd */
	__u8 pad;
	__u16 policy;    /* with an action: the policy index (the agent maps it to the policy's name) */
	char comm[16];
	char filename[256]; /* PROC_EXEC: path of the executed file as given to execve, NUL-terminated;
			     * PROC_TRACEPOINT: the first string argument the policy reports */
	char args[512];     /* PROC_EXEC: argv NUL-separated (argv[0] included), from mm->arg_start;
			     * PROC_TRACEPOINT: the syscall's six arguments, __u64 each (args_len 48), then
			     * the second string argument the policy reports (256 bytes) */
	char cwd[PROC_CWD_DEPTH][PROC_CWD_NAME]; /* PROC_EXEC: cwd components, the innermost first */
};

/*
 * proc_sock_events ring buffer record (proc_tcp_connect): a TCP socket of a monitored process was
 * connected or accepted (ESTABLISHED), closed (CLOSE), or is a listener (LISTEN, its close); or
 * (proc_udp_send/recv) a UDP socket is in use by a process (ESTABLISHED; saddr 0 when unbound). Its own
 * small record: connection storms must not fill the process events' ring.
 */
struct sock_event {
	__u64 ts_ns;
	__u32 netns_ino;
	__u32 pid;       /* the connecting or listening process; 0 for an accepted connection */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 old_state;  /* kernel TCP states */
	__u8 new_state;
	__u8 protocol;   /* IPPROTO_TCP or IPPROTO_UDP (0: TCP, a record of an older agent's programs) */
	__u8 pad;
};

/* proc_config value (one entry): which processes the node's monitor reports. */
struct proc_config {
	__u64 cgroup_id; /* the node's cgroup: only its subtree is reported; 0: every process */
	__u32 level;     /* depth of that cgroup below the cgroup v2 root */
	__u32 pad;
};

/* ---- runtime policy (VelvetTracingPolicy on exec and syscall tracepoints) ------------------- */

#define RT_MAX_RULES 64    /* selectors of every exec policy together: bits of a u64 mask */
#define RT_MAX_PIDS 16     /* values of one matchPIDs entry */
#define RT_PID_DEPTH 8     /* ancestors looked at for matchPIDs followForks */
#define RT_PATH_MAX 256    /* bytes of a binary path key, NUL included */
#define RT_MAX_ARG_NUMS 4  /* values of a numeric matchArgs Equal */
#define RT_NO_ARG 0xff

/* what an exec policy's selector does; a larger value wins when several policies match */
enum rt_action {
	RT_ACTION_NONE = 0,
	RT_ACTION_NOPOST = 1,
	RT_ACTION_POST = 2,
	RT_ACTION_SIGNAL = 3,
	RT_ACTION_SIGKILL = 4,
};

/* rt_rule.hook: the tracepoint a rule belongs to */
enum rt_hook {
	RT_HOOK_EXEC = 0,   /* sched/sched_process_exec */
	RT_HOOK_OPENAT = 1, /* syscalls/sys_enter_openat */
	RT_HOOK_SETUID = 2, /* syscalls/sys_enter_setuid */
	RT_HOOK_PTRACE = 3, /* syscalls/sys_enter_ptrace */
	RT_HOOK_MOUNT = 4,  /* syscalls/sys_enter_mount */
	RT_HOOK_EXECVE = 5, /* syscalls/sys_enter_execve */
	RT_HOOK_OPEN = 6,   /* syscalls/sys_enter_open */
};

/* rt_rule.bin_op, pid_op and arg_op */
enum rt_match_op {
	RT_MATCH_ANY = 0,  /* no matchBinaries / matchPIDs */
	RT_MATCH_IN = 1,   /* the binary is in set `binset` / the pid is one of `pids` */
	RT_MATCH_NOT_IN = 2,
	RT_MATCH_PREFIX = 3, /* arg_op: the string argument starts with one of arg set `argset`'s prefixes */
	RT_MATCH_POSTFIX = 4, /* arg_op: the string argument ends with one of arg set `argset`'s postfixes */
	RT_MATCH_EQ = 5,   /* arg_op: the int argument (low 32 bits, signed) is one of `arg_nums` */
	RT_MATCH_GT = 6,   /* arg_op: it is greater than arg_nums[0] */
	RT_MATCH_LT = 7,   /* arg_op: it is less than arg_nums[0] */
};

/* rt_rules value: one selector of a tracing policy's hook (a policy's first matching selector acts alone) */
struct rt_rule {
	__u64 policy_rules; /* bits of this policy's rules: cleared from the candidates once one acts */
	__u32 policy;       /* policy index, reported in process_event.policy */
	__u8 action;        /* enum rt_action */
	__u8 signal;        /* RT_ACTION_SIGNAL: the signal number */
	__u8 bin_op;        /* enum rt_match_op on proc_binsets' bit `binset` */
	__u8 binset;
	__u8 pid_op;        /* enum rt_match_op on `pids` */
	__u8 pid_follow;    /* matchPIDs followForks: a descendant of a listed pid matches as the pid */
	__u8 npids;
	__u8 hook;          /* enum rt_hook */
	__u8 arg_op;        /* enum rt_match_op on syscall argument `arg_pos`: a string's IN (Equal), PREFIX or
			     * POSTFIX in arg set `argset`, or an int's EQ, GT, LT on `arg_nums` */
	__u8 argset;
	__u8 arg_pos;       /* the syscall argument (0-5) matchArgs compares */
	__u8 arg_nnums;     /* values used in arg_nums */
	__u32 pids[RT_MAX_PIDS];
	__s64 arg_nums[RT_MAX_ARG_NUMS];
	__u8 report_str[2]; /* the syscall arguments (0-5; 0xff: none) the policy reports as strings */
	__u8 pad[6];
};

/* rt_config value (one entry): the rules that apply to every process of the node (no podSelector) */
struct rt_config {
	__u64 global_rules;
	__u32 rule_span; /* the highest rule number in use + 1: how far the rule walk goes */
	__u32 pad;
	__u64 bin_in_rules; /* the rules with matchBinaries In: none can match a process in no binary set */
};

/* rt_bin_paths key (exact binary paths) and rt_bin_prefixes key (LPM trie: prefixlen in bits) */
struct rt_path {
	char path[RT_PATH_MAX];
};

struct rt_path_lpm {
	__u32 prefixlen;
	char path[RT_PATH_MAX];
};

/* ---- NodePort to backends on other nodes (SNAT) --------------------------------------------- */

/*
 * A NodePort/ExternalIP/LoadBalancer connection (eTP=Cluster) whose backend is not a local
 * endpoint is SNATed at the uplink: node_from_uplink rewrites the source to node_config.snat_addr
 * and a port from [snat_port_min, snat_port_max] chosen for the connection (random start, then
 * the next ports; a port whose connection has expired is free again), and forwards the packet
 * itself after a FIB lookup (the kernel refuses to forward a packet whose source is its own).
 * The reply comes back to the uplink addressed to that port: node_from_uplink restores the client
 * as destination and the frontend as source and sends it back towards the client the same way.
 * snat4 holds two entries per connection; both live exactly as long as the connection's
 * CT_NODEPORT entry (client -> backend), which also records the frontend for the reverse NAT.
 * snat_addr 0 disables SNAT (remote backends are then DNATed only, as on a single node).
 */

/* snat4_key.dir */
enum snat_dir {
	SNAT_OUT = 0, /* DNATed tuple client -> backend; entry: node address and port of the connection */
	SNAT_IN = 1,  /* reply tuple backend -> node address:port; entry: the client's address and port */
};

struct snat4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir; /* enum snat_dir */
	__u16 pad;
};

struct snat4_entry {
	__u64 created_ns;
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* ---- Host routing ------------------------------------------------------------------------- */

/*
 * With NODE_F_HOST_ROUTING (the agent's --host-routing bpf, or auto on a kernel that has the
 * helpers), the tc programs forward what they pass themselves, as Cilium's BPF host routing does:
 * bpf_fib_lookup in the node's namespace, TTL decremented, bpf_redirect / bpf_redirect_neigh out of
 * the interface the FIB names (lib/fib.h), so the node's IP stack never sees the packet.
 *  - lxc_from_pod: everything it passes (after the tunnel redirect in tunnel mode), to another
 *    node's pods through the uplink, to a local pod through its host veth.
 *  - node_from_uplink, overlay_from_tunnel: what they pass to a local endpoint (lxc_endpoints),
 *    out of its host veth.
 * A local pod's packet forwarded by any of them, its MAC known, gets the to-pod datapath (ingress
 * policy, conntrack, events: lib/endpoint.h) there and enters the pod by bpf_redirect_peer; the rest
 * redirected to a host veth meets lxc_to_pod on its tc egress, as without the flag. A local pod whose
 * MACs are in its endpoint_info (the runtime reported them) needs no FIB lookup: its MACs are set from
 * there, the TTL decremented, and it is entered at once (TTL about to expire: the stack).
 * Whatever the FIB does not forward (the node's own addresses, no route, MTU exceeded, TTL about
 * to expire, forwarding off) goes to the node's stack as without the flag.
 * A pod's packet lxc_from_pod redirects out of an interface, and which it knows node_to_uplink has
 * nothing to do for (no ICMP error; a TCP connection whose entry has CT_F_NO_UPLINK_NAT: opened by
 * a pure SYN, by the pod or towards it, that no NodePort DNAT of this node translated, so no
 * CT_NODEPORT entry names it), carries skb->mark HOST_ROUTED_MARK: node_to_uplink counts it,
 * clears the mark and passes it at once.
 */

/* node_config.flags */
enum node_flags {
	NODE_F_HOST_ROUTING = 1, /* forward with FIB lookups and redirects (above) */
};

/* node_config (array, key 0): what the programs need to know about the node. */
struct node_config {
	__be32 snat_addr;     /* the node's uplink address; 0: no SNAT */
	__u16 snat_port_min;  /* SNAT source ports, host order, inclusive */
	__u16 snat_port_max;
	__u32 flags;          /* enum node_flags */
};

/* ---- Runtime enforcement in cgroup hooks (guard.bpf.o) ---------------------------------------- */

/*
 * Rules live in GUARD_RULES_MAX slots of guard_rules. A rule applies to the processes of the cgroups
 * guard_scope names for its hook (cgroup id 0: every cgroup under the attach point), whose binary is in
 * one of its binary sets (proc_binsets; 0: any binary), and to operations its hook's fields match.
 * connect/sendmsg rules also need their destination in one of their prefixes (guard_cidr4/6, whose
 * values are the slots whose prefixes contain the key's prefix). A match of a GUARD_DENY rule fails the
 * operation with EPERM; a GUARD_AUDIT rule lets it through. Both write a guard_event.
 */
#define GUARD_RULES_MAX 64 /* slots of guard_rules: bits of the u64 slot bitmaps */
#define GUARD_NAME_MAX 64  /* bytes of a sysctl name prefix (and of guard_event.name) */

/* guard_rule.hook, guard_scope_key.hook and guard_event.hook */
enum guard_hook {
	GUARD_HOOK_CONNECT = 1,     /* cgroup/connect4, cgroup/connect6 */
	GUARD_HOOK_SENDMSG = 2,     /* cgroup/sendmsg4, cgroup/sendmsg6 (UDP datagrams with an address) */
	GUARD_HOOK_SOCK_CREATE = 3, /* cgroup/sock_create (AF_INET and AF_INET6 sockets) */
	GUARD_HOOK_SYSCTL = 4,      /* cgroup/sysctl (reads and writes of /proc/sys) */
	GUARD_HOOK_DEV = 5,         /* cgroup/dev (open and mknod of device files) */
};

/* guard_rule.action, guard_event.action */
enum guard_action {
	GUARD_DENY = 1,  /* the operation fails with EPERM */
	GUARD_AUDIT = 2, /* the operation goes on; only the event */
};

/* guard_rule.access for GUARD_HOOK_SYSCTL (dev rules use the kernel's BPF_DEVCG_ACC_* bits) */
enum guard_sysctl_access {
	GUARD_SYSCTL_READ = 1,
	GUARD_SYSCTL_WRITE = 2,
};

/* guard_rules value (array, key = slot). A zero field matches anything unless said otherwise. */
struct guard_rule {
	__u64 binsets;     /* binary sets (bit i = set i of proc_binsets) the rule applies to; 0: any */
	__u32 policy;      /* index of the policy that made the rule (reported in events) */
	__u8 hook;         /* enum guard_hook; 0: an empty slot */
	__u8 action;       /* enum guard_action */
	__u8 access;       /* sysctl: enum guard_sysctl_access bits; dev: BPF_DEVCG_ACC_* bits */
	__u8 dev_type;     /* dev: BPF_DEVCG_DEV_BLOCK (1) or BPF_DEVCG_DEV_CHAR (2) */
	__u16 protocol;    /* connect/sendmsg/sock_create: IPPROTO_* */
	__u16 family;      /* sock_create: AF_INET (2) or AF_INET6 (10) */
	__u16 sock_type;   /* sock_create: SOCK_STREAM (1), SOCK_DGRAM (2), SOCK_RAW (3), ... */
	__u16 port_lo;     /* connect/sendmsg: destination port range, host order, inclusive (0-65535: any) */
	__u16 port_hi;
	__u16 name_len;    /* sysctl: bytes of name_prefix to compare; 0: every name */
	__s32 major;       /* dev: -1 any */
	__s32 minor;       /* dev: -1 any */
	char name_prefix[GUARD_NAME_MAX]; /* sysctl: name prefix as the kernel gives it ("net/ipv4/") */
	__u32 pad;
};

/* guard_scope key: the rules of one hook for the processes of one cgroup (0: of every cgroup). */
struct guard_scope_key {
	__u64 cgroup_id;
	__u32 hook;        /* enum guard_hook */
	__u32 pad;
};

/* guard_cidr4 key (LPM trie): a destination prefix of connect/sendmsg rules. */
struct guard_cidr4_key {
	__u32 prefixlen;
	__be32 addr;
};

/* guard_cidr6 key (LPM trie). */
struct guard_cidr6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* guard_events ring buffer record: an operation a rule denied or audited. */
struct guard_event {
	__u64 ts_ns;
	__u64 cgroup_id;
	__u32 pid;         /* thread-group id */
	__u32 tid;
	__u32 uid;
	__u32 policy;      /* guard_rule.policy of the rule that matched */
	__u8 hook;         /* enum guard_hook */
	__u8 action;       /* enum guard_action */
	__u8 slot;         /* the rule's slot */
	__u8 access;       /* sysctl: GUARD_SYSCTL_READ or _WRITE; dev: BPF_DEVCG_ACC_* of the access */
	__u16 family;      /* connect/sendmsg/sock_create: AF_INET or AF_INET6 */
	__u16 sock_type;   /* socket type; dev: BPF_DEVCG_DEV_* */
	__u16 protocol;
	__u16 port;        /* connect/sendmsg: destination port, host order */
	__u32 major;       /* dev */
	__u32 minor;
	__u8 addr[16];     /* connect/sendmsg: destination (IPv4 in the first 4 bytes, network order) */
	char comm[16];
	char name[GUARD_NAME_MAX]; /* sysctl: the name (NUL-terminated, cut at GUARD_NAME_MAX - 1) */
	__u32 pad;
};

#endif /* VELVET_TYPES_H */
