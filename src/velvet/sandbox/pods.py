"""The pod runtime (the kubelet's part of the sandbox): netns, veth, IP, routes, cgroup and processes.

Works from any namespace: every netlink call names its namespace, and processes join the pod's
netns (setns) and cgroup (cgroup.procs) themselves. Pod records live in the state directory, so a
restarted supervisor adopts the pods its predecessor created. Not thread-safe: one caller at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from velvet.errors import SandboxError
from velvet.ipam import CNI_LEASE_PREFIX, PodIpam
from velvet.sandbox import cgroups, netlink, process, routing
from velvet.sandbox.naming import NETNS_RE, POD_IF, PodNames, SandboxConfig
from velvet.sandbox.readiness import ReadinessTracker, check
from velvet.sandbox.spec import (
    PHASE_FAILED,
    PHASE_RUNNING,
    PHASE_SUCCEEDED,
    ContainerLite,
    ContainerStatusLite,
    PodRecord,
    PodSpecLite,
    PodStatusLite,
    ProbeLite,
)
from velvet.system.netns import NETNS_RUN_DIR, netns_inode

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PodRuntime:
    """Creates, inspects, adopts and deletes the pods of one sandbox node."""

    def __init__(self, cfg: SandboxConfig | None = None) -> None:
        """Bind to sandbox `cfg` (its node must exist before pods are created)."""
        self.cfg = cfg or SandboxConfig()
        self.names = self.cfg.names
        self.ipam = PodIpam(
            self.names.ipam_file, self.cfg.pod_cidr, self.cfg.first_pod_host, (self.cfg.pod_gateway,)
        )
        self.readiness = ReadinessTracker()
        self.mtu = routing.pod_mtu(self.cfg.sandbox)

    def create_pod(self, spec: PodSpecLite) -> PodRecord:
        """Create pod `spec` and start its containers; return its record (idempotent per uid).

        A running pod with the same uid is returned as is; leftovers of the same name that are not
        running (crash, failed pod) are removed first. A running pod of the same name with another uid
        is an error: delete it first. A uid keeps its IP across re-creations until it is deleted.
        """
        pn = self.names.pod(spec.namespace, spec.name)
        old = self._load(pn.record_file)
        if old is not None and self._running(old):
            if old.uid == spec.uid:
                return old
            raise SandboxError(f"pod {old.key} already runs with uid {old.uid}; delete it first")
        self._teardown(pn, old.uid if old is not None and old.uid != spec.uid else None)
        if not netlink.netns_exists(self.names.node_netns):
            raise SandboxError(f"sandbox {self.cfg.sandbox} has no node: create it first")
        try:
            return self._build(spec, pn)
        except BaseException:
            self._teardown(pn, spec.uid)
            raise

    def delete_pod(self, record: PodRecord, grace_seconds: float | None = None) -> None:
        """Stop the pod (SIGTERM, `grace_seconds` to exit, then SIGKILL) and remove all of it; idempotent."""
        pn = self.names.pod(record.namespace, record.name)
        grace = record.termination_grace_seconds if grace_seconds is None else grace_seconds
        if pn.cgroup.is_dir():
            cgroups.signal_all(pn.cgroup, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while cgroups.populated(pn.cgroup) and time.monotonic() < deadline:
                time.sleep(0.02)
        self._teardown(pn, record.uid)

    def pod_status(self, record: PodRecord) -> PodStatusLite:
        """Phase from the containers' processes and exit codes; readiness from the probe (run if due)."""
        pn = self.names.pod(record.namespace, record.name)
        containers = []
        for name, pid in record.pids.items():
            status = process.ExitStatus.read(pn.exit_file(name))
            running = process.alive(pid, Path(record.cgroup))
            containers.append(ContainerStatusLite(name, running, pid, status.exit_code if status else None))
        if any(c.running for c in containers):
            phase = PHASE_RUNNING
        elif all(c.exit_code == 0 for c in containers):
            phase = PHASE_SUCCEEDED
        else:
            phase = PHASE_FAILED
        ready = all(c.running for c in containers)
        if ready and record.readiness is not None:
            run = partial(self.probe_ready, record, record.readiness)
            ready = self.readiness.observe(record.uid, record.readiness, record.started_at, run)
        return PodStatusLite(phase=phase, ready=ready, pod_ip=record.ip, containers=tuple(containers))

    def probe_ready(self, record: PodRecord, probe: ProbeLite) -> bool:
        """Run `probe` once from inside the pod (tcpSocket: connect to pod IP:port; exec: exit 0)."""
        return check(probe, NETNS_RUN_DIR / record.netns, Path(record.cgroup), record.ip)

    def list_records(self) -> list[PodRecord]:
        """Every pod record in the state directory."""
        records = []
        for path in sorted(self.names.pods_dir.glob("*/record.json")):
            record = self._load(path)
            if record is not None:
                records.append(record)
        return records

    def find(self, namespace: str, name: str) -> PodRecord | None:
        """The record of pod `namespace/name`, if it exists."""
        return self._load(self.names.pod(namespace, name).record_file)

    def adopt(self) -> list[PodRecord]:
        """After a supervisor restart: keep the pods whose netns exists, remove remnants of the others.

        Also removes pod namespaces and cgroups that have no record (a create interrupted by a crash)
        and IPAM leases of unknown uids (never the agent's leases of runtime pods). Kept pods may have
        exited: `pod_status` tells.
        """
        kept = []
        for record in self.list_records():
            pn = self.names.pod(record.namespace, record.name)
            if netlink.netns_exists(pn.netns) and pn.cgroup.is_dir():
                kept.append(record)
            else:
                self._teardown(pn, record.uid)
        known = {self.names.pod(r.namespace, r.name).hash8 for r in kept}
        for h in self._pod_hashes() - known:
            self._teardown(self.names.pod_by_hash(h), None)
        uids = {r.uid for r in kept}
        for uid in set(self.ipam.leases()) - uids:
            if not uid.startswith(CNI_LEASE_PREFIX):
                self.ipam.release(uid)
        return kept

    def _build(self, spec: PodSpecLite, pn: PodNames) -> PodRecord:
        """Create the pod's objects in order, then its processes, then persist the record."""
        ip = self.ipam.allocate(spec.uid)
        netlink.create_netns(pn.netns)
        host_ifindex, host_mac = self._wire_host_side(pn, ip)
        pod_mac = self._wire_pod_side(pn, ip)
        cgroup_id = cgroups.create(pn.cgroup)
        pn.state_dir.mkdir(parents=True, exist_ok=True)
        started_at = time.time()
        pids = {c.name: self._start(spec, c, pn, ip) for c in spec.containers}
        record = PodRecord(
            namespace=spec.namespace,
            name=spec.name,
            uid=spec.uid,
            ip=ip,
            host_veth=pn.host_veth,
            host_ifindex=host_ifindex,
            host_mac=host_mac,
            pod_mac=pod_mac,
            netns=pn.netns,
            netns_inode=netns_inode(pn.netns_path),
            cgroup=str(pn.cgroup),
            cgroup_id=cgroup_id,
            pids=pids,
            started_at=started_at,
            labels=dict(spec.labels),
            readiness=spec.readiness,
            termination_grace_seconds=spec.termination_grace_seconds,
        )
        tmp = pn.record_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record.to_dict(), indent=1))
        os.replace(tmp, pn.record_file)
        return record

    def _wire_host_side(self, pn: PodNames, ip: str) -> tuple[int, str]:
        """In the node: the veth (peer created directly in the pod as eth0, both at the sandbox's pod MTU),
        up, /32 route to the pod. Its ifindex and MAC."""
        with netlink.ipr(self.names.node_netns) as ipr:
            idx = netlink.add_link(ipr, pn.host_veth, "veth", mtu=self.mtu,
                                   peer={"ifname": POD_IF, "net_ns_fd": pn.netns, "mtu": self.mtu})
            netlink.set_up(ipr, pn.host_veth)
            netlink.replace_route(
                ipr, dst=ip, dst_len=32, oif=idx, scope="link", prefsrc=self.cfg.pod_gateway
            )
            return idx, netlink.link_mac(ipr, idx)

    def _wire_pod_side(self, pn: PodNames, ip: str) -> str:
        """In the pod: lo and eth0 up, ip/32, gateway /32 on-link, default route via the gateway; eth0's
        MAC."""
        gw = self.cfg.pod_gateway
        with netlink.ipr(pn.netns) as ipr:
            netlink.set_up(ipr, "lo")
            eth = netlink.require_ifindex(ipr, POD_IF)
            netlink.add_address(ipr, eth, ip, 32)
            netlink.set_up(ipr, POD_IF)
            netlink.replace_route(ipr, dst=gw, dst_len=32, oif=eth, scope="link")
            netlink.replace_route(ipr, dst="0.0.0.0", dst_len=0, gateway=gw, oif=eth)
            return netlink.link_mac(ipr, eth)

    def _start(self, spec: PodSpecLite, c: ContainerLite, pn: PodNames, ip: str) -> int:
        """Start container `c` detached, in the pod's netns and cgroup, with a shim recording its exit."""
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": spec.name, **c.env}
        return process.spawn(
            c.argv,
            log=pn.log_file(c.name),
            env=env,
            netns=pn.netns_path,
            cgroup=pn.cgroup,
            exit_file=pn.exit_file(c.name),
            shim_cgroup=self.names.cgroup_shims,
        )

    def _teardown(self, pn: PodNames, uid: str | None) -> None:
        """Remove whatever exists of a pod, by name: processes, cgroup, veth, netns, lease, state.

        Every step is tried even when an earlier one failed; the first failure is raised at the end.
        """
        errors: list[Exception] = []
        for step in (
            partial(cgroups.kill, pn.cgroup),
            partial(cgroups.remove_tree, pn.cgroup),
            partial(self._delete_host_veth, pn),
            partial(netlink.remove_netns, pn.netns),
            partial(self._forget, uid),
            partial(_rmtree, pn.state_dir),
        ):
            try:
                step()
            except (OSError, SandboxError) as exc:
                errors.append(exc)
        if errors:
            raise SandboxError(f"pod {pn.netns} not fully removed: {errors}") from errors[0]

    def _delete_host_veth(self, pn: PodNames) -> None:
        """Delete the pod's veth from the node (synchronously, unlike removing the pod's netns).

        Without the pod's netns there is nothing to do: the veth is created with its peer already
        in that namespace, and removing the namespace removes the pair.
        """
        if netlink.netns_exists(pn.netns) and netlink.netns_exists(self.names.node_netns):
            with netlink.ipr(self.names.node_netns) as ipr:
                netlink.delete_link(ipr, pn.host_veth)

    def _forget(self, uid: str | None) -> None:
        """Release the IP lease and the readiness state of `uid`."""
        if uid is not None:
            self.ipam.release(uid)
            self.readiness.forget(uid)

    def _running(self, record: PodRecord) -> bool:
        """Whether any container process of `record` still runs in the pod's cgroup."""
        return any(process.alive(pid, Path(record.cgroup)) for pid in record.pids.values())

    def _pod_hashes(self) -> set[str]:
        """Hashes of every pod netns, pod cgroup and pod state dir of this sandbox."""
        found = set()
        for name in netlink.list_netns():
            m = NETNS_RE.fullmatch(name)
            role = self.names.pod_role
            if m and m["sandbox"] == self.cfg.sandbox and m["role"].startswith(role):
                found.add(m["role"][len(role):])
        if self.names.cgroup_node.is_dir():
            found |= {p.name[4:] for p in self.names.cgroup_node.glob("pod-*")}
        if self.names.pods_dir.is_dir():
            found |= {p.name for p in self.names.pods_dir.iterdir() if p.is_dir()}
        return found

    @staticmethod
    def _load(path: Path) -> PodRecord | None:
        """Read a record; None when missing or unreadable."""
        try:
            return PodRecord.from_dict(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None


def _rmtree(path: Path) -> None:
    """rm -rf that tolerates a shim writing an exit file while the directory goes."""
    for _ in range(50):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.01)
    raise SandboxError(f"cannot remove {path}")


def _target(pod: PodRecord | PodNames) -> tuple[Path, Path]:
    """(netns path, cgroup) of a pod given by record or by names."""
    if isinstance(pod, PodRecord):
        return NETNS_RUN_DIR / pod.netns, Path(pod.cgroup)
    return pod.netns_path, pod.cgroup


def exec_in_pod(
    pod: PodRecord | PodNames,
    argv: Sequence[str],
    *,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> int:
    """`kubectl exec`: run `argv` in the pod's netns and cgroup on the caller's stdio; return its exit code.

    stdin/stdout/stderr default to the caller's (pass a file, fd or subprocess constant to redirect);
    env defaults to the caller's. Exit code 128+N means killed by signal N.
    """
    ns, cgroup = _target(pod)
    if not ns.exists():
        raise SandboxError(f"pod network namespace {ns} does not exist")
    return process.exec_in(
        ns, cgroup, argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env, timeout=timeout
    )


def run_in_pod(
    pod: PodRecord | PodNames, argv: Sequence[str], **kwargs: Any
) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run(argv, **kwargs)` inside the pod's netns and cgroup (e.g. capture_output=True)."""
    ns, cgroup = _target(pod)
    if not ns.exists():
        raise SandboxError(f"pod network namespace {ns} does not exist")
    return subprocess.run(list(argv), preexec_fn=process.enter(ns, cgroup), **kwargs)
