/* SPDX-License-Identifier: GPL-2.0 */
/* common.h - includes and small definitions every Velvet BPF object needs. */
#ifndef VELVET_LIB_COMMON_H
#define VELVET_LIB_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "types.h"

/* uapi #defines that vmlinux.h (BTF) cannot carry */
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define ETH_HLEN 14
#define ETH_ALEN 6
#define ETH_P_IP 0x0800
#define IP_MF 0x2000
#define IP_DF 0x4000
#define IP_OFFSET 0x1fff
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_SOURCE_QUENCH 4
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMP_PORT_UNREACH 3
#define ECONNREFUSED 111
#define EHOSTUNREACH 113
#define NSEC_PER_SEC 1000000000ULL

#endif /* VELVET_LIB_COMMON_H */
