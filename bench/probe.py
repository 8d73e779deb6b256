"""The benchmark's traffic: a small epoll server and the clients that measure through it (stdlib only).

Runs inside the namespaces or pods of the benchmark, pinned with taskset by the caller:

    probe.py serve --ports 8080,8081      accept; echo what arrives (RR), discard bulk, close on EOF
    probe.py connect IP:PORT --count K    K sequential connect()+close(); per-connect ns (--times: every
                                          connect's CLOCK_MONOTONIC start and duration, ns)
    probe.py rr IP:PORT --seconds S       1-byte request/response on one open connection
    probe.py suite SVC:PORT POD:PORT      connect to both (M1, M2), then rr through the service (M3)
    probe.py bulk IP:PORT --mib M         M MiB through one connection; Gbit/s and machine CPU s/GiB

Every client prints one JSON object on stdout. The client pays the same Python cost in every peer, so
compare ratios; the no-rules peer shows the floor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import struct
import sys
import time
from typing import Any

LINGER_RST = struct.pack("ii", 1, 0)  # close() sends RST: no TIME_WAIT piles up over many connects
CHUNK = 1 << 20


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def summary(values: list[float]) -> dict[str, float]:
    """Median, p10, p90, p99 and mean of samples."""
    ordered = sorted(values)
    return {"median": percentile(ordered, 0.5), "p10": percentile(ordered, 0.1),
            "p90": percentile(ordered, 0.9), "p99": percentile(ordered, 0.99),
            "mean": sum(ordered) / len(ordered) if ordered else float("nan")}


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def serve(ports: list[int]) -> None:
    """Accept on every port; echo small reads back, swallow bulk, close when the client closes."""
    ep = select.epoll()
    listeners: dict[int, socket.socket] = {}
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(4096)
        s.setblocking(False)
        listeners[s.fileno()] = s
        ep.register(s.fileno(), select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        for fd, _ in ep.poll():
            if fd in listeners:
                while True:
                    try:
                        conn, _ = listeners[fd].accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[conn.fileno()] = conn
                    ep.register(conn.fileno(), select.EPOLLIN)
                continue
            conn = conns[fd]
            try:
                n = conn.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                n = 0
            if n == 0:
                ep.unregister(fd)
                conns.pop(fd).close()
            elif n <= 64:
                with contextlib.suppress(OSError):
                    conn.send(view[:n])


def connect(target: str, count: int, times: bool = False) -> dict[str, Any]:
    """`count` sequential connect()+close(); latency of each connect() in microseconds (`times`: also
    each one's start on CLOCK_MONOTONIC, which perf_counter reads on Linux, and duration, in ns)."""
    addr = _address(target)
    samples: list[float] = []
    spans: list[tuple[int, int]] = []
    failures = 0
    started = time.perf_counter_ns()
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        t0 = time.perf_counter_ns()
        try:
            s.connect(addr)
        except OSError:
            failures += 1
        else:
            ns = time.perf_counter_ns() - t0
            samples.append(ns / 1000)
            if times:
                spans.append((t0, ns))
        s.close()
    elapsed = (time.perf_counter_ns() - started) / 1e9
    return {"unit": "us", **summary(samples), "per_s": len(samples) / elapsed, "count": count,
            "failures": failures, **({"times": spans} if times else {})}


def rr(target: str, seconds: float) -> dict[str, Any]:
    """1-byte request/response transactions on one connection for `seconds`."""
    s = socket.create_connection(_address(target), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(200):
            s.send(b"x")
            if not s.recv(64):
                raise SystemExit("server closed the connection")
        done += 200
    elapsed = time.perf_counter() - started
    s.close()
    return {"unit": "trans/s", "per_s": done / elapsed, "transactions": done}


def _busy_seconds() -> float:
    """Machine-wide non-idle CPU seconds so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def bulk(target: str, mib: int) -> dict[str, Any]:
    """Send `mib` MiB through one connection; throughput and machine CPU seconds per GiB."""
    s = socket.create_connection(_address(target), timeout=10)
    payload = b"\0" * CHUNK
    cpu0, t0 = _busy_seconds(), time.perf_counter()
    for _ in range(mib):
        s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # wait for the server to read everything and close
    elapsed = time.perf_counter() - t0
    cpu = _busy_seconds() - cpu0
    s.close()
    return {"unit": "Gbit/s", "per_s": mib * CHUNK * 8 / elapsed / 1e9, "cpu_s_per_gib": cpu / (mib / 1024),
            "mib": mib}


def suite(service: str, pod: str, count: int, seconds: float) -> dict[str, Any]:
    """M1 (connect to the service), M2 (connect to the pod IP) and M3 (RR through the service)."""
    return {"M1": connect(service, count), "M2": connect(pod, count), "M3": rr(service, seconds)}


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("--ports", required=True)
    st = sub.add_parser("suite")
    st.add_argument("target")
    st.add_argument("pod")
    st.add_argument("--count", type=int, default=1000)
    st.add_argument("--seconds", type=float, default=1.0)
    for name in ("connect", "rr", "bulk"):
        p = sub.add_parser(name)
        p.add_argument("target")
        p.add_argument("--count", type=int, default=1000)
        p.add_argument("--seconds", type=float, default=1.0)
        p.add_argument("--mib", type=int, default=256)
        p.add_argument("--times", action="store_true")
    args = parser.parse_args()
    if args.cmd == "serve":
        serve([int(p) for p in args.ports.split(",")])
        return
    if args.cmd == "suite":
        result = suite(args.target, args.pod, args.count, args.seconds)
    elif args.cmd == "connect":
        result = connect(args.target, args.count, args.times)
    elif args.cmd == "rr":
        result = rr(args.target, args.seconds)
    else:
        result = bulk(args.target, args.mib)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
