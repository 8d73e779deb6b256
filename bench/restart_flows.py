"""Cross-node traffic while a node's agent is killed (kill -9) and restarts: what was lost, and when.

    .venv/bin/python -m bench.restart_flows [--routing tunnel|native] [--restarts 10] [--busy 0] [--policy]

A two-node sandbox with pod c on node 0 and pod s on node 1 (echo servers). Each restart kills node 0's
(the client's) and node 1's (the server's) agent in turn while, from c, a probe opens a new TCP
connection to s and asks it every 5 ms, makes a round trip on one established connection every 5 ms
and sends s a UDP request every 5 ms (each waits up to 3 s), and the other node's pinned ipcache is read
every 20 ms. Timed from the kill: the new agent's `/v1/health` and `/v1/status`, every probe that failed
or took over 0.2 s, the moments the other node's ipcache lacked the killed node's pod; counted over the
restart: TCP retransmissions in both pods' namespaces and the nodes' drop counters. The probe runs
until 8 s after `/v1/status` answers (the first conntrack sweep and the kubelet's re-reports are in).
`--busy K` runs K busy loops meanwhile; `--policy` lets c send only to s, so a destination identity
lost for a moment drops a SYN.

Prints one JSON line per restart, then one per node killed summing them up.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from velvet.api.client import ApiClient
from velvet.cli.runner import SandboxCli, unique_name
from velvet.connectivity.manifests import echo_pod, namespace
from velvet.datapath import libbpf
from velvet.datapath.maps import untyped
from velvet.paths import AgentPaths
from velvet.sandbox.cleanup import read_pid
from velvet.sandbox.naming import node_config

NODES = ("velvet-node", "velvet-node-1")
INTERVAL = 0.005
SLOW = 0.2  # TCP's minimum RTO: slower than this, something was likely sent again
AFTER_STATUS = 8.0
POLICY = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-to-s, namespace: rf}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: s}}}]
    ports: [{port: 8080, protocol: TCP}, {port: 8081, protocol: UDP}]
"""
PROBE = """
import json, signal, socket, sys, threading, time
host, interval = sys.argv[1], float(sys.argv[2])
records, stop = [], threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())

def every(kind, attempt):
    while not stop.is_set():
        t0 = time.time()
        try:
            err = attempt()
        except OSError as exc:
            err = repr(exc)
        records.append((kind, t0, time.time() - t0, err))
        time.sleep(max(0.0, t0 + interval - time.time()))

def fresh():
    with socket.create_connection((host, 8080), timeout=3) as s:
        s.sendall(b"p\\n")
        return None if s.makefile("rb").readline() else "eof"

held = {}
def established():
    if "s" not in held:
        held["s"] = socket.create_connection((host, 8080), timeout=3)
        held["f"] = held["s"].makefile("rb")
    held["s"].sendall(b"l\\n")
    if held["f"].readline():
        return None
    del held["s"]
    return "eof"

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(3)
udp.connect((host, 8081))
def datagram():
    udp.send(b"u\\n")
    udp.recv(2048)

threads = [threading.Thread(target=every, args=a) for a in
           (("new", fresh), ("established", established), ("udp", datagram))]
for t in threads:
    t.start()
for t in threads:
    t.join()
json.dump(records, sys.stdout)
"""


def pinned_pod(name: str, node: int) -> str:
    """An echo pod app=`name` on node `node`."""
    pod = yaml.safe_load(echo_pod("rf", name, {"app": name}))
    pod["spec"]["nodeName"] = NODES[node]
    return yaml.safe_dump(pod)


def paths(sb: SandboxCli, node: int) -> AgentPaths:
    return AgentPaths(sb.name, f"node{node}" if node else "")


def retransmitted(netns: str) -> int:
    """Tcp RetransSegs of a namespace."""
    out = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"], capture_output=True,
                         text=True, check=True).stdout
    header, values = (line.split() for line in out.splitlines() if line.startswith("Tcp:"))
    return int(values[header.index("RetransSegs")])


def drops(sb: SandboxCli, node: int) -> dict[str, int]:
    """A node's datapath counters of every reason but 0 (forwarded), in packets."""
    counters = ApiClient(paths(sb, node).socket).get("/v1/status")["datapath"]["counters"]
    return {k: v for k, v in counters.items() if not k.startswith("0:") and k.endswith(":packets")}


def answers_status(sb: SandboxCli, node: int) -> bool:
    try:
        ApiClient(paths(sb, node).socket, timeout=0.5).get("/v1/status")
    except Exception:
        return False
    return True


class IpcacheGaps:
    """A node's pinned ipcache read every 20 ms on a thread: when `address` went missing and came back."""

    def __init__(self, pin: Path, address: str) -> None:
        self.map = untyped(libbpf.check(libbpf.bpf_obj_get(str(pin).encode()), str(pin)), "ipcache")
        self.key = (32).to_bytes(4, sys.byteorder) + socket.inet_aton(address)
        self.changes: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        present = True
        while not self._stop.is_set():
            now = self.key in {bytes(k) for k in self.map}
            if now != present:
                self.changes.append((time.time(), now))
                present = now
            time.sleep(0.02)

    def stop(self) -> list[tuple[float, bool]]:
        self._stop.set()
        self._thread.join()
        self.map.close()
        return self.changes


def restart(sb: SandboxCli, victim: int, pods: dict[str, str]) -> dict[str, Any]:
    """One kill -9 of node `victim`'s agent with the probe running; what it saw."""
    names = {k: node_config(sb.name, k).names for k in (0, 1)}
    client_ns, server_ns = names[0].pod("rf", "c").netns, names[1].pod("rf", "s").netns
    retrans0 = (retransmitted(client_ns), retransmitted(server_ns))
    drops0 = {k: drops(sb, k) for k in (0, 1)}
    other = 1 - victim
    gaps = IpcacheGaps(paths(sb, other).pin_dir / "ipcache", pods["s" if victim else "c"])
    probe = subprocess.Popen(["ip", "netns", "exec", client_ns, sys.executable, "-c", PROBE, pods["s"],
                              str(INTERVAL)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        pid_file = paths(sb, victim).run_dir / "agent.pid"
        old = read_pid(pid_file)
        assert old is not None
        killed = time.time()
        os.kill(old, signal.SIGKILL)
        health: float | None = None
        status: float | None = None
        while status is None:
            assert time.time() - killed < 60, f"node {victim}'s agent did not restart within 60 s"
            if health is None and read_pid(pid_file) not in (None, old) and ApiClient(
                    paths(sb, victim).socket, timeout=0.5).healthy():
                health = time.time() - killed
            if health is not None and answers_status(sb, victim):
                status = time.time() - killed
            time.sleep(0.01)
        time.sleep(AFTER_STATUS)
    finally:
        probe.terminate()
        out, _ = probe.communicate(timeout=60)
        changes = gaps.stop()
    assert health is not None
    assert status is not None
    records = json.loads(out)
    retrans1 = (retransmitted(client_ns), retransmitted(server_ns))
    drops1 = {k: drops(sb, k) for k in (0, 1)}
    return {
        "victim": victim, "health_s": round(health, 3), "status_s": round(status, 3),
        "probes": {kind: sum(r[0] == kind for r in records) for kind in ("new", "established", "udp")},
        "failed": [(kind, round(t - killed, 3), err) for kind, t, _, err in records if err],
        "slow": [(kind, round(t - killed, 3), round(took, 3)) for kind, t, took, err in records
                 if not err and took > SLOW],
        "tcp_retransmissions": {"client": retrans1[0] - retrans0[0], "server": retrans1[1] - retrans0[1]},
        "drops": {k: {r: n - drops0[k].get(r, 0) for r, n in drops1[k].items() if n != drops0[k].get(r, 0)}
                  for k in (0, 1)},
        "other_node_ipcache": [(round(t - killed, 3), "back" if back else "missing") for t, back in changes],
    }


def summary(rows: list[dict[str, Any]], victim: int) -> dict[str, Any]:
    """The restarts of one node's agent summed up."""
    mine = [r for r in rows if r["victim"] == victim]
    return {"victim": victim, "restarts": len(mine),
            "probes": sum(sum(r["probes"].values()) for r in mine),
            "failed": sum(len(r["failed"]) for r in mine), "slow": sum(len(r["slow"]) for r in mine),
            "tcp_retransmissions": sum(sum(r["tcp_retransmissions"].values()) for r in mine),
            "restarts_with_drops": sum(any(r["drops"].values()) for r in mine),
            "restarts_with_ipcache_gaps": sum(bool(r["other_node_ipcache"]) for r in mine)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--routing", choices=("tunnel", "native"), default="tunnel")
    p.add_argument("--restarts", type=int, default=10)
    p.add_argument("--busy", type=int, default=0, help="busy loops running meanwhile")
    p.add_argument("--policy", action="store_true", help="c may send only to s")
    args = p.parse_args()
    sb = SandboxCli(unique_name("rf"))
    busy: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    try:
        sb.up("--nodes", "2", "--routing", args.routing)
        sb.apply("\n---\n".join([namespace("rf").strip(), pinned_pod("c", 0), pinned_pod("s", 1),
                                 *([POLICY] if args.policy else [])]))
        pods = {key.split("/")[1]: ip for key, ip in sb.wait_ready(["rf/c", "rf/s"]).items()}
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        for n in range(args.restarts):
            rows.append(restart(sb, n % 2, pods))
            print(json.dumps({"routing": args.routing, "busy": args.busy, **rows[-1]}), flush=True)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
        sb.down()
    for victim in (0, 1):
        print(json.dumps({"routing": args.routing, "busy": args.busy, **summary(rows, victim)}))


if __name__ == "__main__":
    main()
