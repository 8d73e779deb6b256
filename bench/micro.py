"""M6 (map update rate through Velvet's binding) and M7 (ns/packet of each tc program) on fresh objects.

Both load build/bpf/*.bpf.o unpinned, so nothing of a running agent is touched (needs root and BPF).
M7 runs each program with BPF_PROG_TEST_RUN `repeat` times on one frame: "hit" is a packet whose
service or connection is in the maps (after the first run the conntrack entry exists, so this is the
per-packet cost of an established, translated flow), "miss" a packet to no service; "new" is the
median of single runs each on a SYN of a new connection (another source port every run: conntrack
creation, policy, identities, the flow event), a single run's timing included. The socket-LB
programs (cgroup sock_addr) cannot be test-run by the kernel; M1 measures them end to end.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import time
from typing import Any

from velvet.datapath import build
from velvet.datapath.bpfobject import BpfObject
from velvet.datapath.structs import Lb4Backend, SvcFlag
from velvet.datapath.tablemaps import TableMaps
from velvet.datapath.tables import BackendValue, EndpointEntry, RevNatValue, ServiceKey, ServiceValue
from velvet.datapath.testrun import skb_ctx, test_run
from velvet.datapath.views import BackendMap, open_views

POD_A, POD_B, NODE_IP, WORLD = "10.244.0.10", "10.244.0.20", "172.18.0.2", "192.0.2.7"
LO_IFINDEX = 1


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_frame(src: str, dst: str, sport: int, dport: int) -> bytes:
    """An Ethernet/IPv4/TCP SYN with valid checksums."""
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 0x02, 65535, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(seg))
    seg = seg[:16] + struct.pack("!H", _csum(pseudo + seg)) + seg[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 1, 0, 64, 6, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return bytes.fromhex("0a00000000020a0000000001") + b"\x08\x00" + ip + seg


def _vip(i: int) -> str:
    return socket.inet_ntoa(struct.pack("!I", (10 << 24 | 96 << 16 | 1 << 8) + i))


def _fill_services(tables: TableMaps, n: int) -> None:
    """n ClusterIP services (port 80, one backend POD_B:8080) and NodePorts 30000+i, in batches."""
    tables.write("lb4_backends", {1: BackendValue(POD_B, 8080, 6)}, ())
    services: dict[ServiceKey, ServiceValue] = {}
    for i in range(n):
        rev = i % 65535 + 1
        for address, port in ((_vip(i), 80), (NODE_IP, 30000 + i % 30000)):
            flags = SvcFlag.CLUSTERIP if port == 80 else SvcFlag.NODEPORT
            services[ServiceKey(address, port, 0, 6)] = ServiceValue(count=1, rev_nat_index=rev,
                                                                     flags=int(flags))
            services[ServiceKey(address, port, 1, 6)] = ServiceValue(backend_id=1, rev_nat_index=rev)
    tables.write("lb4_services", services, ())
    tables.write("lb4_revnat", {i + 1: RevNatValue(_vip(i), 80) for i in range(min(n, 65535))}, ())


def prog_ns(counts: list[int], repeat: int) -> list[dict[str, Any]]:
    """M7: mean ns per run of lxc_from_pod, lxc_to_pod, node_from_uplink on hit and miss, at each N."""
    rows: list[dict[str, Any]] = []
    for n in counts:
        for obj_name, program, hit, miss in (
            ("lxc", "lxc_from_pod", syn_frame(POD_A, _vip(n - 1), 40000, 80),
             syn_frame(POD_A, "10.244.0.99", 40001, 8080)),
            ("lxc", "lxc_to_pod", syn_frame(POD_A, POD_B, 40002, 8080), syn_frame(WORLD, POD_B, 40003, 8080)),
            ("node", "node_from_uplink", syn_frame(WORLD, NODE_IP, 40004, 30000 + (n - 1) % 30000),
             syn_frame(WORLD, NODE_IP, 40005, 22)),
        ):
            with BpfObject.open(build.object_path(obj_name)) as obj:
                obj.load()
                views = open_views(obj)
                tables = TableMaps(views)
                try:
                    for ip, ident, ep in ((POD_A, 1000, 10), (POD_B, 2000, 20)):
                        if obj_name == "lxc":
                            tables.write("lxc_endpoints", {ip: EndpointEntry(LO_IFINDEX, ident, ep, 0)}, ())
                        tables.write("ipcache", {f"{ip}/32": ident}, ())
                    _fill_services(tables, n)
                    for case, frame in (("hit", hit), ("miss", miss)):
                        prog = obj.program(program)
                        test_run(prog, frame, ctx=skb_ctx())  # warm-up, creates the conntrack entry
                        runs = sorted(test_run(prog, frame, ctx=skb_ctx(), repeat=repeat).duration_ns
                                      for _ in range(5))
                        rows.append({"metric": "M7", "program": program, "case": case, "n": n,
                                     "ns": runs[2], "p10": runs[0], "p90": runs[4]})
                    if obj_name == "lxc":
                        rows.append(_new_connections(obj, program, n))
                finally:
                    views.close()
    return rows


def _new_connections(obj: BpfObject, program: str, n: int, count: int = 301) -> dict[str, Any]:
    """M7 "new": single runs of `program` on SYNs POD_A -> POD_B:8080, a new source port each."""
    prog = obj.program(program)
    runs = sorted(test_run(prog, syn_frame(POD_A, POD_B, 20000 + i, 8080), ctx=skb_ctx()).duration_ns
                  for i in range(count))
    return {"metric": "M7", "program": program, "case": "new", "n": n, "ns": runs[count // 2],
            "p10": runs[count // 10], "p90": runs[count * 9 // 10]}


def map_rates(entries: int) -> list[dict[str, Any]]:
    """M6: updates/s into a fresh lb4_backends map, one syscall each and batched."""
    rows: list[dict[str, Any]] = []
    with BpfObject.open(build.object_path("lxc")) as obj:
        obj.load()
        views = open_views(obj)
        try:
            m = views.get(BackendMap).map
            keys = [ctypes.c_uint32(i + 1) for i in range(entries)]
            values = [Lb4Backend(address=i, port=8080, proto=6) for i in range(entries)]
            for mode in ("single", "batch", "single", "batch"):
                if mode == "single":
                    m.clear()
                started = time.perf_counter()
                if mode == "single":
                    for k, v in zip(keys, values, strict=True):
                        m.update(k, v)
                else:
                    m.update_batch(keys, values)
                elapsed = time.perf_counter() - started
                rows.append({"metric": "M6", "mode": mode, "entries": entries, "seconds": elapsed,
                             "per_s": entries / elapsed})
        finally:
            views.close()
    return rows
