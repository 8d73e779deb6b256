"""Velvet as a peer: a sandbox of its own, services applied with `velvet apply`, traffic pod -> ClusterIP.

The sandbox is named `bench<6 random>` (the sandbox names its namespaces `velvet-<name>-...`) and is
always taken down. Server pods run probe.py on CPU 1; the client pod's probes run on CPU 0 through
`velvet sandbox exec`, so their connect() goes through the socket LB on the node's cgroup. "Served"
means the service's frontend is in the pinned lb4_services map (read directly, no API round trip).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import string
import tempfile
import time
from pathlib import Path
from typing import Any

from velvet.api.client import ApiClient
from velvet.cli.runner import SandboxCli
from velvet.datapath.structs import Lb4Key, ipv4
from velvet.datapath.views import ServiceMap
from velvet.paths import AgentPaths

PROBE = str(Path(__file__).resolve().parent / "probe.py")
NS = "bench"
SERVERS = 4
FIRST_VIP = "10.96.1.0"
TCP = 6


def vip(index: int) -> str:
    """ClusterIP of service `index` (the same numbering as the kernel peers)."""
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address(FIRST_VIP)) + index))


def service_yaml(index: int, endpoints: int, selector: str | None = None) -> str:
    """A ClusterIP service s<index> on port 80 -> 8080 selecting 1 (srv0) or all server pods."""
    chosen = selector or ('{e1: "yes"}' if endpoints == 1 else "{app: srv}")
    return (f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{index:05d}, namespace: {NS}}}\n"
            f"spec:\n  clusterIP: {vip(index)}\n  selector: {chosen}\n"
            f"  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}\n")


def _pod(name: str, labels: str, command: str, node: str = "") -> str:
    placed = f"  nodeName: {node}\n" if node else ""
    return (f"---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n"
            f"  labels: {labels}\nspec:\n{placed}  terminationGracePeriodSeconds: 1\n  containers:\n"
            f"  - name: main\n    command: {command}\n")


def pods_yaml(node: str = "") -> str:
    """The namespace, SERVERS server pods (probe.py serve on CPU 1) and the client pod, on `node` if given."""
    text = f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"
    for i in range(SERVERS):
        labels = f'{{app: srv, idx: "{i}"' + (', e1: "yes"}' if i == 0 else "}")
        command = f'["taskset", "-c", "1", "python3", "{PROBE}", "serve", "--ports", "8080"]'
        text += _pod(f"srv{i}", labels, command, node)
        text += "    readinessProbe:\n      tcpSocket: {port: 8080}\n      periodSeconds: 1\n"
    return text + _pod("cli", "{app: cli}", '["sleep", "infinity"]', node)


class VelvetPeer:
    """One benchmark sandbox and what the benchmark does through it."""

    def __init__(self) -> None:
        name = "bench" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))
        self.sb = SandboxCli(name)
        self.pin_dir = AgentPaths(name).pin_dir
        self.api = ApiClient(AgentPaths(name).socket, timeout=3600)
        self.pod_ips: dict[str, str] = {}
        self.services: ServiceMap | None = None
        self.count = 0
        self.endpoints = 1
        self.highest = 0  # services s00000 .. s<highest - 1> may exist (a smaller N keeps the others)

    @property
    def name(self) -> str:
        """The sandbox name."""
        return str(self.sb.name)

    def up(self, nodes: int = 1) -> None:
        """Bring the sandbox up (`nodes` nodes on etcd when more than one) with the server and client pods
        ready on node 0."""
        if nodes > 1:
            self.sb.up("--nodes", str(nodes))
        else:
            self.sb.up()
        self.sb.apply(pods_yaml("velvet-node" if nodes > 1 else ""))
        ips = self.sb.wait_ready([f"{NS}/srv{i}" for i in range(SERVERS)] + [f"{NS}/cli"], timeout=120)
        self.pod_ips = {k.split("/")[1]: v for k, v in ips.items()}
        self.services = ServiceMap.from_pin(self.pin_dir)

    def down(self) -> None:
        """Take the sandbox down (never raises)."""
        if self.services is not None:
            self.services.close()
        self.sb.down()

    def _backends(self, index: int) -> tuple[int, ...] | None:
        """Backend ids of service `index`'s frontend in the kernel map, None when absent."""
        assert self.services is not None
        key = Lb4Key(address=ipv4(vip(index)), dport=80, proto=TCP)
        front = self.services.map.lookup(key)
        if front is None:
            return None
        ids = []
        for slot in range(1, front.count + 1):
            key.backend_slot = slot
            entry = self.services.map.lookup(key)
            ids.append(entry.backend_id if entry is not None else 0)
        return tuple(ids)

    def _frontend_count(self, index: int) -> int | None:
        ids = self._backends(index)
        return None if ids is None else len(ids)

    def _apply_text(self, text: str, *, delete: bool = False, api: bool = False) -> None:
        """`velvet apply|delete -f` of `text` as a user runs it, or (`api`) one POST to the agent's socket."""
        if api:
            self.api.post("/v1/delete" if delete else "/v1/apply",
                          {"documents": [{"path": "bench.yaml", "text": text}]})
            return
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
        try:
            self.sb.velvet("delete" if delete else "apply", "-f", f.name, timeout=3600)
        finally:
            os.unlink(f.name)

    def _wait(self, check: Any, deadline: float) -> bool:
        while not check():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def apply_services(self, count: int, endpoints: int, budget: float) -> dict[str, Any]:
        """Grow (or re-select) to `count` services of `endpoints`; seconds until the last one is served.

        Returns {"seconds": ..., "applied": k, "entries": lb4_services entries} or {"timeout": budget}.
        """
        start_index = 0 if endpoints != self.endpoints else self.count
        text = "".join(service_yaml(i, endpoints) for i in range(start_index, count))
        started = time.monotonic()
        self._apply_text(text)
        ok = self._wait(lambda: self._frontend_count(count - 1) == endpoints, started + budget)
        elapsed = time.monotonic() - started
        if not ok:
            return {"timeout": budget, "applied": count - start_index}
        self.count, self.endpoints = count, endpoints
        self.highest = max(self.highest, count)
        assert self.services is not None
        entries = self.services.map.count()
        return {"seconds": elapsed, "applied": count - start_index, "entries": entries}

    def add_remove_change(self, budget: float, *, api: bool = False) -> dict[str, float | None]:
        """Add one service at N, remove it again, and change the endpoints of the last service.

        Through the CLI (`velvet apply -f`, process start included) or, with `api`, one POST each to the
        agent's socket from this process; each timed until the kernel's lb4_services shows it.
        """
        extra = self.free_index()
        result: dict[str, float | None] = {}
        started = time.monotonic()
        self._apply_text(service_yaml(extra, self.endpoints), api=api)
        ok = self._wait(lambda: self._frontend_count(extra) == self.endpoints, started + budget)
        result["add_one"] = time.monotonic() - started if ok else None
        started = time.monotonic()
        self._apply_text(service_yaml(extra, self.endpoints), delete=True, api=api)
        ok = self._wait(lambda: self._frontend_count(extra) is None, started + budget)
        result["remove_one"] = time.monotonic() - started if ok else None
        last = self.count - 1
        before = self._backends(last)
        started = time.monotonic()
        self._apply_text(service_yaml(last, 1, '{app: srv, idx: "1"}'), api=api)
        ok = self._wait(lambda: self._backends(last) not in (before, None), started + budget)
        result["change_endpoints"] = time.monotonic() - started if ok else None
        self._apply_text(service_yaml(last, self.endpoints), api=api)  # put it back (slots may be reordered)
        back = sorted(before or ())
        self._wait(lambda: sorted(self._backends(last) or ()) == back, time.monotonic() + budget)
        return {f"{op}_api" if api else op: seconds for op, seconds in result.items()}

    def free_index(self) -> int:
        """The index of a service that does not exist (above every one applied so far)."""
        return self.highest

    def agent_pid(self) -> int:
        """The agent's pid."""
        return int((Path("/run/velvet") / self.name / "agent.pid").read_text().split()[0])

    def agent_hwm_kib(self, field: str = "VmHWM") -> int:
        """The agent's peak resident memory (VmHWM, KiB), or another /proc status field (VmRSS)."""
        for line in Path(f"/proc/{self.agent_pid()}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        return 0

    def cli(self, *args: str) -> list[str]:
        """argv of a `velvet` command for this sandbox."""
        return self.sb.argv(*args)

    def client(self, *args: str) -> list[str]:
        """argv running probe.py in the client pod on CPU 0."""
        return self.cli("sandbox", "exec", f"{NS}/cli", "--", "taskset", "-c", "0", "python3", PROBE, *args)

    def target(self) -> str:
        """The last service's ClusterIP:port."""
        return f"{vip(self.count - 1)}:80"

    def pod_target(self) -> str:
        """srv0's pod IP:port."""
        return f"{self.pod_ips['srv0']}:8080"

    def apply_policy(self, rules: int, budget: float) -> dict[str, Any]:
        """Isolate the server pods with `rules` ingress rules (one admits the client pod); 0 removes it."""
        name = "bench-isolate"
        text = (f"---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, "
                f"namespace: {NS}}}\nspec:\n  podSelector: {{matchLabels: {{app: srv}}}}\n"
                f"  policyTypes: [Ingress]\n  ingress:\n"
                f"  - from: [{{podSelector: {{matchLabels: {{app: cli}}}}}}]\n    ports: [{{port: 8080}}]\n")
        for i in range(rules - 1):
            peer = ipaddress.IPv4Address(int(ipaddress.IPv4Address("172.16.0.0")) + i)
            port = 9000 + i % 1000
            text += f"  - from: [{{ipBlock: {{cidr: {peer}/32}}}}]\n    ports: [{{port: {port}}}]\n"
        started = time.monotonic()
        if rules == 0:
            self._apply_text(text, delete=True)
        else:
            self._apply_text(text)
        want = 0 if rules == 0 else rules
        ok = self._wait(lambda: self._policy_entries() >= want if want else self._policy_entries() == 0,
                        started + budget)
        return {"seconds": time.monotonic() - started if ok else None, "entries": self._policy_entries()}

    def _policy_entries(self) -> int:
        status = self.sb.api.get("/v1/status")
        return int(status["counts"]["policy_entries"])

    def flow_stats(self) -> dict[str, Any]:
        """The agent's flow counters (seen, lost, ...)."""
        return dict(self.sb.api.get("/v1/status")["flows"])

    def pause_agent(self, paused: bool) -> None:
        """SIGSTOP/SIGCONT the agent (the event reader stops; the datapath runs on)."""
        os.kill(self.agent_pid(), signal.SIGSTOP if paused else signal.SIGCONT)
