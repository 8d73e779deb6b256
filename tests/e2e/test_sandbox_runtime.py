"""Test that the sandbox builds a real node and real pods, and removes every trace of them, by name.

Real kernel, root: network namespaces, veths, routes, cgroup v2, processes. No eBPF is attached
here; pod-to-pod traffic goes through the node's plain IPv4 forwarding.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import string
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from velvet.api.client import ApiClient
from velvet.errors import SandboxError
from velvet.ipam import PodIpam
from velvet.sandbox import (
    ContainerLite,
    Node,
    PodRecord,
    PodRuntime,
    PodSpecLite,
    ProbeLite,
    SandboxConfig,
    Supervisor,
    cleanup,
    exec_in_pod,
    run_in_netns,
    run_in_pod,
    spawn_detached,
)
from velvet.sandbox import cgroups as cg
from velvet.sandbox.kubelet import Kubelet
from velvet.sandbox.naming import SandboxNames
from velvet.sandbox.process import alive
from velvet.system.netns import call_in_netns

pytestmark = pytest.mark.privileged

PY = sys.executable
ECHO = (PY, "-m", "velvet.sandbox.echo")


def unique_sandbox() -> str:
    """A sandbox name no other test run uses."""
    return "t" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))


def echo_spec(namespace: str, name: str, uid: str | None = None, **kw: object) -> PodSpecLite:
    """A pod running the echo server on TCP 8080 and UDP 8081."""
    container = ContainerLite("echo", ECHO, ("--tcp", "8080", "--udp", "8081"))
    return PodSpecLite(namespace, name, uid or f"uid-{namespace}-{name}", (container,), **kw)  # type: ignore[arg-type]


def py_container(name: str, code: str) -> ContainerLite:
    """A container running a Python snippet."""
    return ContainerLite(name, (PY, "-c", textwrap.dedent(code)))


def wait_for(predicate: object, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate()` until true."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def query(pod: PodRecord, url: str) -> str:
    """Run the echo client inside `pod` against `url`; return its reply."""
    out = run_in_pod(pod, [*ECHO, "--query", url], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return str(out.stdout)


def in_netns(netns: str, argv: list[str]) -> str:
    """Stdout of `argv` run in network namespace `netns`."""
    return str(run_in_netns(netns, argv, capture_output=True, text=True, timeout=10).stdout)


def root_ns_state() -> tuple[str, str, str]:
    """Links, IPv4 routes and ip_forward of the root namespace."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True)
    return links, routes.stdout, Path("/proc/sys/net/ipv4/ip_forward").read_text()


def assert_nothing_left(cfg: SandboxConfig) -> None:
    """Check with the kernel's own tools that nothing of the sandbox exists."""
    names = cfg.names
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert names.prefix not in netns
    assert cleanup.find_leftovers(cfg.sandbox).empty
    assert not names.cgroup_sandbox.exists()
    assert not names.pin_dir.exists()
    assert not names.state_dir.exists()
    assert not names.run_dir.exists()


@pytest.fixture(scope="module")
def root_before() -> tuple[str, str, str]:
    """The root namespace as it was before the module's sandbox existed."""
    return root_ns_state()


@pytest.fixture(scope="module")
def cfg(root_before: tuple[str, str, str]) -> Iterator[SandboxConfig]:
    """A node of a sandbox unique to this module, destroyed (and checked gone) even on failure."""
    config = SandboxConfig(sandbox=unique_sandbox())
    try:
        Node.create(config)
        yield config
    finally:
        Node.destroy(config)
    assert_nothing_left(config)


@pytest.fixture(scope="module")
def runtime(cfg: SandboxConfig) -> PodRuntime:
    """The pod runtime of the module's sandbox."""
    return PodRuntime(cfg)


@pytest.fixture(scope="module")
def pods(runtime: PodRuntime) -> dict[str, PodRecord]:
    """Three echo pods in two namespaces, keyed by name."""
    specs = [echo_spec("team-a", "web-1"), echo_spec("team-a", "web-2"), echo_spec("team-b", "api-1")]
    records = {}
    for spec in specs:
        t0 = time.perf_counter()
        records[spec.name] = runtime.create_pod(spec)
        print(f"create_pod {spec.name}: {(time.perf_counter() - t0) * 1000:.0f} ms")
    for rec in records.values():
        wait_for(lambda r=rec: runtime.probe_ready(r, ProbeLite(tcp_port=8080)), what=f"{rec.name} listening")
    return records


@pytest.fixture
def crash_cfg() -> Iterator[SandboxConfig]:
    """A second, throw-away sandbox; destroyed by name whatever the test did."""
    config = SandboxConfig(sandbox=unique_sandbox())
    try:
        yield config
    finally:
        Node.destroy(config)


def test_node_is_wired_inside_its_namespaces_only(
    cfg: SandboxConfig, pods: dict[str, PodRecord], root_before: tuple[str, str, str]
) -> None:
    """Test that the node forwards, owns the gateway and uplink, and the root namespace is untouched."""
    names = cfg.names
    assert in_netns(names.node_netns, ["cat", "/proc/sys/net/ipv4/ip_forward"]).strip() == "1"
    addrs = in_netns(names.node_netns, ["ip", "-4", "-o", "addr"])
    assert "velvet_host    inet 10.244.0.1/32" in addrs
    assert "uplink0    inet 192.168.77.2/24" in addrs
    node_routes = in_netns(names.node_netns, ["ip", "route"])
    assert "10.96.0.0/16 dev velvet_host proto static scope link src 10.244.0.1" in node_routes
    assert "default" not in node_routes
    for rec in pods.values():
        assert f"{rec.ip} dev {rec.host_veth} proto static scope link src 10.244.0.1" in node_routes
    ext_routes = in_netns(names.ext_netns, ["ip", "route"])
    assert "10.244.0.0/24 via 192.168.77.2 dev eth0 proto static" in ext_routes
    assert "10.96.0.0/16 via 192.168.77.2 dev eth0 proto static" in ext_routes
    assert root_ns_state() == root_before


def test_pod_to_pod_tcp_and_udp_preserve_the_source(pods: dict[str, PodRecord]) -> None:
    """Test that pods reach each other over the node, across namespaces, with their own IP as source."""
    a, b, c = pods["web-1"], pods["web-2"], pods["api-1"]
    assert query(a, f"tcp://{c.ip}:8080").startswith(f"api-1 {a.ip}:")
    assert query(c, f"udp://{b.ip}:8081").startswith(f"web-2 {c.ip}:")
    assert query(b, f"tcp://{a.ip}:8080").startswith(f"web-1 {b.ip}:")


def test_external_client_reaches_pods_through_the_uplink(
    cfg: SandboxConfig, pods: dict[str, PodRecord]
) -> None:
    """Test that the external namespace reaches a pod via the node, seen as 192.168.77.1."""
    out = in_netns(cfg.names.ext_netns, [*ECHO, "--query", f"udp://{pods['api-1'].ip}:8081"])
    assert out.startswith("api-1 192.168.77.1:")


def test_node_create_is_idempotent(cfg: SandboxConfig, pods: dict[str, PodRecord]) -> None:
    """Test that creating an existing node again changes nothing that running pods depend on."""
    assert Node.exists(cfg)
    Node.create(cfg)
    assert query(pods["web-1"], f"tcp://{pods['api-1'].ip}:8080").startswith("api-1 ")


def test_failed_create_leaves_nothing(runtime: PodRuntime) -> None:
    """Test that a pod whose command cannot start is rolled back: no netns, cgroup, lease or record."""
    broken = ContainerLite("broken", ("/nonexistent/server",))
    with pytest.raises(SandboxError, match="nonexistent"):
        runtime.create_pod(PodSpecLite("team-c", "broken", "uid-broken", (broken,)))
    pn = runtime.names.pod("team-c", "broken")
    assert not pn.netns_path.exists()
    assert not pn.cgroup.exists()
    assert not pn.state_dir.exists()
    assert "uid-broken" not in runtime.ipam.leases()


def test_untranslated_service_vip_is_dropped_not_unreachable(cfg: SandboxConfig) -> None:
    """Test that a node process connecting to a VIP without socket LB sends a packet (then times out)."""

    def connect() -> str:
        try:
            socket.create_connection(("10.96.0.10", 80), timeout=0.5)
        except OSError as exc:
            return type(exc).__name__
        return "connected"

    assert call_in_netns(cfg.names.netns_path(cfg.names.node_netns), connect) == "TimeoutError"


def test_pod_processes_are_in_the_pod_cgroup_and_netns(pods: dict[str, PodRecord]) -> None:
    """Test that every container process lives in its pod's cgroup and network namespace."""
    for rec in pods.values():
        pid = rec.pids["echo"]
        assert cg.cgroup_of(pid) == Path(rec.cgroup)
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == rec.netns_inode
        assert os.stat(rec.cgroup).st_ino == rec.cgroup_id
        assert os.getsid(pid) == pid
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"HOSTNAME={rec.name}".encode() in environ
        assert PodRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


def test_exec_passes_stdio_and_exit_code(pods: dict[str, PodRecord], tmp_path: Path) -> None:
    """Test that exec runs in the pod's netns and cgroup, on the given stdin/stdout, returning the code."""
    rec = pods["web-2"]
    (tmp_path / "in").write_text("hello pod\n")
    code = """
        import os, sys
        data = sys.stdin.read()
        cgroup = open("/proc/self/cgroup").read().strip().split("::")[-1]
        print(data.upper().strip(), os.stat("/proc/self/ns/net").st_ino, cgroup)
        sys.exit(7)
    """
    with open(tmp_path / "in", "rb") as stdin, open(tmp_path / "out", "wb") as stdout:
        rc = exec_in_pod(rec, [PY, "-c", textwrap.dedent(code)], stdin=stdin, stdout=stdout)
    assert rc == 7
    text, inode, cgroup = (tmp_path / "out").read_text().rsplit(" ", 2)
    assert text == "HELLO POD"
    assert int(inode) == rec.netns_inode
    assert rec.cgroup.endswith(cgroup.strip())
    assert exec_in_pod(rec, ["sh", "-c", "kill -TERM $$"]) == 128 + signal.SIGTERM
    with pytest.raises(SandboxError):
        exec_in_pod(rec, ["/nonexistent/binary"])


def test_readiness_probes_tcp_and_exec(runtime: PodRuntime, pods: dict[str, PodRecord]) -> None:
    """Test that tcpSocket and exec probes run from inside the pod and report its state."""
    rec = pods["api-1"]
    assert runtime.probe_ready(rec, ProbeLite(tcp_port=8080))
    assert not runtime.probe_ready(rec, ProbeLite(tcp_port=8089, timeout_seconds=0.5))
    assert runtime.probe_ready(rec, ProbeLite(exec_command=("true",)))
    assert not runtime.probe_ready(rec, ProbeLite(exec_command=("false",)))
    in_pod = f"import os, sys; sys.exit(os.stat('/proc/self/ns/net').st_ino != {rec.netns_inode})"
    assert runtime.probe_ready(rec, ProbeLite(exec_command=(PY, "-c", in_pod), timeout_seconds=5))


def test_readiness_follows_the_probe_over_time(runtime: PodRuntime) -> None:
    """Test that a pod is unready until its server listens, then ready; Running throughout."""
    late = py_container(
        "late",
        """
        import time, runpy, sys
        time.sleep(1.0)
        sys.argv = ["echo", "--tcp", "8090"]
        runpy.run_module("velvet.sandbox.echo", run_name="__main__")
        """,
    )
    probe = ProbeLite(tcp_port=8090, period_seconds=0.1, timeout_seconds=0.5)
    rec = runtime.create_pod(PodSpecLite("team-c", "late", "uid-late", (late,), readiness=probe))
    try:
        first = runtime.pod_status(rec)
        assert first.phase == "Running"
        assert not first.ready
        wait_for(lambda: runtime.pod_status(rec).ready, timeout=10, what="readiness")
    finally:
        runtime.delete_pod(rec, grace_seconds=0)


def test_ipam_reuses_per_uid_and_releases(runtime: PodRuntime, pods: dict[str, PodRecord]) -> None:
    """Test that a pod keeps its IP while re-created under the same uid and frees it on delete."""
    spec = echo_spec("team-c", "ipam")
    rec = runtime.create_pod(spec)
    assert runtime.create_pod(spec) == rec
    cg.kill(Path(rec.cgroup))
    wait_for(lambda: runtime.pod_status(rec).phase == "Failed", what="pod failure after SIGKILL")
    again = runtime.create_pod(spec)
    assert again.ip == rec.ip
    assert again.pids != rec.pids
    with pytest.raises(SandboxError):
        runtime.create_pod(echo_spec("team-c", "ipam", uid="another-uid"))
    runtime.delete_pod(again, grace_seconds=1)
    assert "uid-team-c-ipam" not in runtime.ipam.leases()
    assert runtime.find("team-c", "ipam") is None
    assert set(runtime.ipam.leases().values()) == {r.ip for r in pods.values()}


def test_ipam_allocation_order_and_exhaustion(tmp_path: Path) -> None:
    """Test the allocator: lowest free address from the first host, reuse per uid, exhaustion error."""
    ipam = PodIpam(tmp_path / "ipam.json", "10.1.0.0/29", first_host=2, reserved=("10.1.0.3",))
    assert [ipam.allocate(u) for u in "abc"] == ["10.1.0.2", "10.1.0.4", "10.1.0.5"]
    assert ipam.allocate("a") == "10.1.0.2"
    ipam.release("a")
    assert ipam.allocate("d") == "10.1.0.2"
    assert ipam.allocate("e") == "10.1.0.6"
    with pytest.raises(SandboxError):
        ipam.allocate("f")


def test_delete_sends_sigterm_then_sigkill_after_grace(runtime: PodRuntime, tmp_path: Path) -> None:
    """Test that delete gives SIGTERM first, waits out the grace period, then kills and removes all."""
    marker = tmp_path / "got-term"
    polite = py_container(
        "polite",
        f"""
        import signal, sys, time
        def bye(*_):
            open({str(marker)!r}, "w").write("TERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        while True:
            time.sleep(1)
        """,
    )
    stubborn = py_container(
        "stubborn",
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring TERM", flush=True)
        while True:
            time.sleep(1)
        """,
    )
    rec = runtime.create_pod(PodSpecLite("team-c", "grace", "uid-grace", (polite, stubborn)))
    log = runtime.names.pod("team-c", "grace").log_file("stubborn")
    wait_for(lambda: "ignoring TERM" in log.read_text(), what="handlers installed")
    t0 = time.monotonic()
    runtime.delete_pod(rec, grace_seconds=1.5)
    elapsed = time.monotonic() - t0
    assert marker.read_text() == "TERM"
    assert 1.5 <= elapsed < 4.0
    assert not any(alive(pid) for pid in rec.pids.values())
    assert not Path(rec.cgroup).exists()
    assert not Path("/run/netns", rec.netns).exists()
    assert rec.host_veth not in in_netns(runtime.names.node_netns, ["ip", "-o", "link"])
    runtime.delete_pod(rec, grace_seconds=0)  # idempotent


def test_delete_is_quick_when_processes_exit_on_sigterm(runtime: PodRuntime) -> None:
    """Test that delete does not wait out the grace period once every process has exited."""
    rec = runtime.create_pod(echo_spec("team-c", "quick"))
    t0 = time.monotonic()
    runtime.delete_pod(rec, grace_seconds=20)
    assert time.monotonic() - t0 < 3
    assert runtime.find("team-c", "quick") is None


def test_exit_codes_give_the_phase(runtime: PodRuntime) -> None:
    """Test that finished containers make the pod Succeeded (all 0) or Failed (any non-zero)."""
    ok = runtime.create_pod(PodSpecLite("team-c", "job-ok", "uid-ok", (py_container("main", "pass"),)))
    bad = runtime.create_pod(PodSpecLite("team-c", "job-bad", "uid-bad", (py_container("main", "exit(3)"),)))
    try:
        wait_for(lambda: runtime.pod_status(ok).phase == "Succeeded", what="job-ok to succeed")
        wait_for(lambda: runtime.pod_status(bad).phase == "Failed", what="job-bad to fail")
        assert runtime.pod_status(bad).containers[0].exit_code == 3
    finally:
        runtime.delete_pod(ok, grace_seconds=0)
        runtime.delete_pod(bad, grace_seconds=0)


def test_pod_survives_its_creator_and_is_adopted(cfg: SandboxConfig, runtime: PodRuntime) -> None:
    """Test that a pod outlives the process (in the node) that created it, and is adopted afterwards."""
    creator = textwrap.dedent(
        f"""
        import os, signal, sys
        from velvet.sandbox import ContainerLite, PodRuntime, PodSpecLite, SandboxConfig
        rt = PodRuntime(SandboxConfig(sandbox={cfg.sandbox!r}))
        echo = ContainerLite("echo", {ECHO!r}, ("--tcp", "8080"))
        rec = rt.create_pod(PodSpecLite("team-d", "orphan", "uid-orphan", (echo,)))
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    # the creator runs inside the node, as the supervisor does
    proc = run_in_netns(cfg.names.node_netns, [PY, "-c", creator], capture_output=True, text=True, timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    creator_pid = int(proc.stdout.split()[0])
    adopted = {r.name: r for r in runtime.adopt()}
    rec = adopted["orphan"]
    try:
        pid = rec.pids["echo"]
        assert alive(pid, Path(rec.cgroup))
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        assert ppid not in (creator_pid, os.getpid())
        wait_for(lambda: runtime.probe_ready(rec, ProbeLite(tcp_port=8080)), what="orphan listening")
        out = in_netns(cfg.names.ext_netns, [*ECHO, "--query", f"tcp://{rec.ip}:8080"])
        assert out.startswith("orphan 192.168.77.1:")
        assert runtime.pod_status(rec).phase == "Running"
    finally:
        runtime.delete_pod(rec, grace_seconds=0)


def test_spawn_detached_and_supervisor_restart(cfg: SandboxConfig) -> None:
    """Test that a detached daemon runs in the node, and the supervisor restarts a dying agent."""
    names = cfg.names
    log = names.log_file("detached")
    pid = spawn_detached(["sleep", "60"], names.node_netns, names.cgroup_node, log)
    try:
        assert alive(pid, names.cgroup_node)
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(names.netns_path(names.node_netns)).st_ino
    finally:
        os.kill(pid, signal.SIGKILL)
    sup = Supervisor(
        ["sleep", "60"],
        netns=names.node_netns,
        cgroup=names.cgroup_node,
        log=names.log_file("agent"),
        pid_file=names.pid_file("agent"),
        min_backoff=0.1,
    )
    sup.start()
    try:
        wait_for(lambda: sup.pid is not None and names.pid_file("agent").exists(), what="agent start")
        first = sup.pid
        assert first is not None
        assert cleanup.status(cfg.sandbox)["daemons"]["agent"] == {"pid": first, "running": True}
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: sup.pid not in (None, first), what="agent restart")
        assert sup.restarts == 1
        assert cg.cgroup_of(sup.pid or 0) == names.cgroup_node
    finally:
        sup.stop(timeout=2)
    assert sup.pid is None
    assert not names.pid_file("agent").exists()


def test_leftovers_of_a_crash_are_found_and_removed(crash_cfg: SandboxConfig) -> None:
    """Test that cleanup removes a half-built sandbox: pods, a half-created pod, stray processes, pins."""
    before = root_ns_state()
    names = crash_cfg.names
    Node.create(crash_cfg)
    rt = PodRuntime(crash_cfg)
    rt.create_pod(echo_spec("x", "p1"))
    rt.create_pod(echo_spec("y", "p2"))
    half = names.pod("x", "half")  # as if the runtime died right after the veth
    subprocess.run(["ip", "netns", "add", half.netns], check=True)
    subprocess.run(
        ["ip", "-n", names.node_netns, "link", "add", half.host_veth, "type", "veth", "peer", "name", "eth0",
         "netns", half.netns],
        check=True,
    )
    cg.create(half.cgroup)
    (names.pin_dir / "lb").mkdir()
    stray_in_netns = spawn_detached(["sleep", "60"], names.node_netns, None, names.log_file("stray"))
    stray_in_cgroup = spawn_detached(["sleep", "60"], None, names.cgroup_node, names.log_file("stray"))

    found = cleanup.find_leftovers(crash_cfg.sandbox)
    assert {names.node_netns, names.ext_netns, half.netns} <= set(found.netns)
    assert {stray_in_netns, stray_in_cgroup} <= set(found.pids)
    assert found.cgroups == (names.cgroup_sandbox,)
    assert found.pin_dirs == (names.pin_dir,)
    assert crash_cfg.sandbox in cleanup.find_leftovers(None).sandboxes

    cleanup.remove(found)
    assert_nothing_left(crash_cfg)
    assert not alive(stray_in_netns)
    assert not alive(stray_in_cgroup)
    assert root_ns_state() == before
    Node.destroy(crash_cfg)  # idempotent on nothing


def test_names_are_derived_and_bounded() -> None:
    """Test the naming contract: interface names fit IFNAMSIZ, sandbox names cannot alias prefixes."""
    names = SandboxNames("abc")
    pod = names.pod("default", "nginx")
    assert pod.netns == f"velvet-abc-p-{pod.hash8}"
    assert len(pod.host_veth) <= 15
    assert names.cgroup_node == names.cgroup_sandbox / "node"
    assert str(names.cgroup_sandbox).endswith("/velvet/abc")
    assert names.pin_dir == Path("/sys/fs/bpf/velvet/abc")
    with pytest.raises(SandboxError):
        SandboxConfig(sandbox="a-b")


class _NodePods:
    """The agent's side of the kubelet's calls: this node's pods as the store has them; calls recorded."""

    def __init__(self, pods: list[dict[str, object]]) -> None:
        self.pods = pods
        self.calls: list[tuple[str, str]] = []

    def get(self, path: str) -> object:
        return {"started_at": 1.0} if path == "/v1/health" else self.pods

    def put(self, path: str, body: object) -> None:
        self.calls.append(("PUT", path))

    def call(self, method: str, path: str) -> None:
        self.calls.append((method, path))


def test_the_kubelet_replaces_a_running_pod_whose_name_went_to_a_new_pod(runtime: PodRuntime) -> None:
    """Test that when the store removed a pod before it stopped (its grace period ran out) and a new pod of
    the same name arrived, the kubelet stops the old one, tells the agent it is gone, then runs the new one
    (it used to retry creating the new one forever: "already runs with uid ...")."""
    old = runtime.create_pod(echo_spec("team-k", "again", "uid-old"))
    new_pod: dict[str, object] = {
        "metadata": {"namespace": "team-k", "name": "again", "uid": "uid-new"},
        "spec": {"containers": [{"name": "echo", "command": list(ECHO), "args": ["--tcp", "8080"]}],
                 "terminationGracePeriodSeconds": 1}}
    agent = _NodePods([new_pod])
    kubelet = Kubelet(cast(ApiClient, agent), runtime, "192.168.77.2")
    try:
        def replaced() -> bool:
            kubelet.sync_once()
            record = runtime.find("team-k", "again")
            return record is not None and record.uid == "uid-new"

        wait_for(replaced, timeout=30, what="the new pod in place of the old one")
        assert not any(alive(pid, Path(old.cgroup)) for pid in old.pids.values())
        gone = agent.calls.index(("DELETE", "/v1/node/pods/team-k/again"))
        assert ("PUT", "/v1/node/endpoints/team-k/again") in agent.calls[gone:]
    finally:
        record = runtime.find("team-k", "again")
        if record is not None:
            runtime.delete_pod(record, grace_seconds=0)
