"""A containerd of its own, driven through its CRI API over gRPC as the kubelet drives it.

Used by the CRI e2e test and the CNI benchmark. Everything containerd keeps (config, root, state,
sockets, runc's root, CNI conf and bin dirs, the pods' netns mounts) lives under one temporary
directory; nothing under /etc changes. `close()` removes the pods it ran by id, stops containerd by its
exact PID, ends the shims that name its socket, unmounts what is mounted under its directory, removes
the pods' cgroups by their exact parent name, and deletes the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1.api_pb2_grpc import RuntimeServiceStub

IMAGE = "localhost/velvet-busybox:1"
"""The one image: Debian's busybox-static; its command sleeps, so it is the sandbox ("pause") image too."""
BUSYBOX = Path("/bin/busybox")
LOOPBACK = Path("/usr/lib/cni/loopback")
SHIM_DIR = Path("/run/containerd")
"""Where containerd 1.6's shims put their sockets whatever the config says (`s/<hash>`)."""
TOOLS = ("sh", "sleep", "nc", "echo", "cat", "ip", "ifconfig", "wget")
CONFIG = """version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "{image}"
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
{runtimes}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{root}/cni/bin"
    conf_dir = "{root}/cni/conf"
    max_conf_num = 1
"""
RUNTIME = """    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
      runtime_type = "io.containerd.runc.v2"
      cni_conf_dir = "{conf_dir}"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}.options]
        Root = "{root}/runc"
"""


def build_image(work: Path) -> Path:
    """A docker archive of IMAGE built with umoci + skopeo from Debian's busybox-static (no registry)."""
    layout, bundle, archive = work / "oci", work / "bundle", work / "busybox.tar"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:busybox"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:busybox", str(bundle)], check=True,
                   capture_output=True)
    bin_dir = bundle / "rootfs/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, bin_dir / "busybox")
    for tool in TOOLS:
        (bin_dir / tool).symlink_to("busybox")
    subprocess.run(["umoci", "repack", "--image", f"{layout}:busybox", str(bundle)], check=True)
    subprocess.run(["umoci", "config", "--image", f"{layout}:busybox", "--os", "linux", "--architecture",
                    "amd64", "--config.cmd", "/bin/sleep", "--config.cmd", "2147483647"], check=True)
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:busybox",
                    f"docker-archive:{archive}:{IMAGE}"], check=True)
    shutil.rmtree(bundle)
    return archive


@dataclass(frozen=True)
class PodSpec:
    """What the kubelet tells the CRI about a pod: metadata (name, namespace, uid) and labels."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]

    def config(self, cgroup_parent: str) -> cri.PodSandboxConfig:
        """The PodSandboxConfig the kubelet sends: metadata, labels, pod-scoped network namespace."""
        labels = {**self.labels, "io.kubernetes.pod.name": self.name,
                  "io.kubernetes.pod.namespace": self.namespace, "io.kubernetes.pod.uid": self.uid}
        return cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=self.name, namespace=self.namespace, uid=self.uid),
            hostname=self.name, labels=labels,
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=f"{cgroup_parent}/pod{self.uid}",
                security_context=cri.LinuxSandboxSecurityContext(namespace_options=cri.NamespaceOption(
                    network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD))))


class Containerd:
    """containerd + runc with a config, root, state, socket and CNI directories under `root`."""

    def __init__(self, root: Path, runtimes: Mapping[str, Path] | None = None, netns: str = "") -> None:
        """`runtimes`: extra runtime handlers, each with its own CNI conf dir; `netns`: run in that netns."""
        self.root = root
        self.cni_bin = root / "cni/bin"
        self.cni_conf = root / "cni/conf"
        self.cgroup_parent = f"/{root.name}"
        self.netns = netns
        self.pods: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.made_shim_dir = not SHIM_DIR.exists()
        for path in (self.cni_bin, self.cni_conf, root / "logs"):
            path.mkdir(parents=True, exist_ok=True)
        (self.cni_bin / "loopback").symlink_to(LOOPBACK)
        handlers = {"runc": self.cni_conf, **(runtimes or {})}
        blocks = "".join(RUNTIME.format(name=name, conf_dir=conf, root=root)
                         for name, conf in handlers.items())
        (root / "config.toml").write_text(CONFIG.format(root=root, image=IMAGE, runtimes=blocks))
        self.channel: grpc.Channel | None = None
        self.runtime: Any = None  # the generated stub is untyped; its messages (cri.*) are typed

    @property
    def socket(self) -> Path:
        """containerd's gRPC socket."""
        return self.root / "containerd.sock"

    def start(self, timeout: float = 30.0) -> None:
        """Start containerd and wait until its CRI answers Version."""
        argv = ["containerd", "--config", str(self.root / "config.toml")]
        if self.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv]
        with (self.root / "containerd.log").open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.runtime = RuntimeServiceStub(self.channel)  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"containerd exited {self.process.returncode}: {self.log_tail()}")
            try:
                self.runtime.Version(cri.VersionRequest(), timeout=2)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of containerd's log (for failure messages)."""
        path = self.root / "containerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def import_image(self, archive: Path) -> None:
        """Import a docker archive into the CRI's "k8s.io" namespace (ctr, no registry)."""
        subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", "images", "import",
                        str(archive)], check=True, capture_output=True)

    def network_ready(self) -> bool:
        """Whether the CRI says its network (the CNI config) is ready."""
        status = self.runtime.Status(cri.StatusRequest(), timeout=10)
        return any(c.type == "NetworkReady" and c.status for c in status.status.conditions)

    def run_pod(self, pod: PodSpec, handler: str = "") -> str:
        """RunPodSandbox (this is where the CRI calls CNI ADD); the sandbox id."""
        answer = self.runtime.RunPodSandbox(cri.RunPodSandboxRequest(
            config=pod.config(self.cgroup_parent), runtime_handler=handler), timeout=60)
        self.pods.append(answer.pod_sandbox_id)
        return str(answer.pod_sandbox_id)

    def start_container(self, sandbox_id: str, pod: PodSpec, name: str, command: list[str]) -> str:
        """CreateContainer + StartContainer of IMAGE running `command` in the pod; the container id."""
        config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name=name, attempt=0),
                                     image=cri.ImageSpec(image=IMAGE), command=command,
                                     log_path=f"{name}.log", linux=cri.LinuxContainerConfig())
        sandbox = pod.config(self.cgroup_parent)
        sandbox.log_directory = str(self.root / "logs" / pod.uid)
        created = self.runtime.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox), timeout=60)
        self.runtime.StartContainer(cri.StartContainerRequest(container_id=created.container_id), timeout=60)
        return str(created.container_id)

    def exec(self, container_id: str, cmd: list[str], timeout: int = 10) -> tuple[int, str]:
        """ExecSync: (exit code, stdout)."""
        request = cri.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout)
        answer = self.runtime.ExecSync(request, timeout=timeout + 10)
        return int(answer.exit_code), answer.stdout.decode(errors="replace")

    def pod_status(self, sandbox_id: str) -> tuple[str, str, dict[str, Any]]:
        """(state name, pod IP, verbose info) of a sandbox, as PodSandboxStatus tells."""
        answer = self.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id,
                                                                           verbose=True), timeout=10)
        info = json.loads(answer.info.get("info", "{}"))
        return cri.PodSandboxState.Name(answer.status.state), str(answer.status.network.ip), info

    def pod_ids(self) -> list[str]:
        """Ids of the sandboxes the CRI lists."""
        return [p.id for p in self.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items]

    def stop_pod(self, sandbox_id: str) -> None:
        """StopPodSandbox: containers killed, network torn down (CNI DEL)."""
        self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)

    def remove_pod(self, sandbox_id: str) -> None:
        """RemovePodSandbox: the second CNI DEL (with an empty CNI_NETNS), then the sandbox is forgotten."""
        self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
        with contextlib.suppress(ValueError):
            self.pods.remove(sandbox_id)

    def close(self) -> None:
        """Remove every pod this test ran, stop containerd and its shims, and remove all they left."""
        if self.runtime is not None and self.process is not None and self.process.poll() is None:
            for sandbox_id in list(self.pods):
                with contextlib.suppress(grpc.RpcError):
                    self.stop_pod(sandbox_id)
                    self.remove_pod(sandbox_id)
        if self.channel is not None:
            self.channel.close()
        if self.process is not None:
            _stop(self.process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        for pid in self.shims():
            _stop(pid)
        for mount in reversed(mounts_under(self.root)):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        remove_cgroups(self.cgroup_parent)
        if self.made_shim_dir:  # only if empty: another containerd may have started meanwhile
            for path in (SHIM_DIR / "s", SHIM_DIR):
                with contextlib.suppress(OSError):
                    path.rmdir()
        shutil.rmtree(self.root, ignore_errors=True)

    def shims(self) -> list[int]:
        """PIDs of containerd-shim processes started for this containerd (their -address is its socket)."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(self.socket).encode() in argv:
                found.append(int(proc.name))
        return found


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL after 10 s, one process by its exact PID."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            time.sleep(0.1)
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
                return
        os.kill(pid, signal.SIGKILL)


def mounts_under(root: Path) -> list[str]:
    """Mount points below `root`, in the order they were mounted."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(f"{root}/"):
            points.append(point)
    return points


def remove_cgroups(parent: str) -> None:
    """Remove cgroup `parent` (and what runc left below it) from every mounted hierarchy, deepest first."""
    base = Path("/sys/fs/cgroup")
    for hierarchy in [base, *(p for p in base.iterdir() if p.is_dir())] if base.is_dir() else []:
        top = hierarchy / parent.lstrip("/")
        if not top.is_dir() or top == hierarchy:
            continue
        for cgroup in [*sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True), top]:
            with contextlib.suppress(OSError):
                cgroup.rmdir()
