"""Test that podman (its CNI backend) attaches a container to a sandbox node through velvet-cni.

podman runs with a containers.conf, storage and CNI directories of the test's own (nothing under
/etc changes), a busybox-static root filesystem, and is torn down by container id; the empty
libpod_parent cgroups podman leaves are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Sandbox, echo_pod, namespace, sandbox
from runtime_manifests import deny_egress, runtime_pod, server_service

from velvet.connectivity.manifests import TCP_PORT

pytestmark = pytest.mark.privileged
NS = "pm"
SERVICE = server_service(NS)
CLIENT = runtime_pod("default", "pmclient")
DENY = deny_egress("default", "pmclient")
CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["{root}/bin"]
network_config_dir = "{root}/conf"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{root}/tmp"
"""


class Podman:
    """podman with the test's own config, storage and CNI directories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("conf", "bin", "tmp", "storage", "run", "rootfs/bin"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "containers.conf").write_text(CONF.format(root=root))
        shutil.copy("/bin/busybox", root / "rootfs/bin/busybox")
        for tool in ("sh", "sleep", "nc"):
            (root / "rootfs/bin" / tool).symlink_to("busybox")
        self.containers: list[str] = []

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """podman ARGS with this test's configuration."""
        argv = ["podman", "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
                "--storage-driver", "vfs", *args]
        env = {**os.environ, "CONTAINERS_CONF": str(self.root / "containers.conf")}
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=check, timeout=120)

    def start(self, name: str) -> str:
        """Run a sleeping busybox container on the velvet network; its id."""
        done = self.run("run", "-d", "--name", name, "--network", "velvet", "--rootfs",
                        str(self.root / "rootfs"), "/bin/sleep", "600", check=False)
        assert done.returncode == 0, done.stderr
        cid = done.stdout.strip()
        self.containers.append(cid)
        return cid

    def ask(self, name: str, host: str, port: int) -> str:
        """Send "hello" from the container to host:port with busybox nc; what came back."""
        return self.run("exec", name, "sh", "-c", f"echo hello | nc -w 2 {host} {port}", check=False).stdout

    def cleanup(self) -> None:
        """Remove our containers by id, then podman's empty libpod_parent cgroups."""
        for cid in self.containers:
            self.run("rm", "-f", "-t", "0", cid, check=False)
        for parent in Path("/sys/fs/cgroup").glob("*/libpod_parent"):
            for cgroup in [*sorted(parent.rglob("*/"), reverse=True), parent]:
                with contextlib.suppress(OSError):  # a busy one holds someone else's container
                    cgroup.rmdir()


@pytest.fixture
def podman_node() -> Iterator[tuple[Sandbox, Podman, str]]:
    """A sandbox with a server behind a Service, velvet-cni installed for a podman of the test's own."""
    tmp_path = Path(tempfile.mkdtemp(prefix="vpm", dir="/tmp"))  # short: conmon's socket paths must fit
    pm = Podman(tmp_path)
    with sandbox("pm") as sb:
        sb.apply(namespace(NS) + echo_pod(NS, "server", {"app": "server"}) + SERVICE)
        server_ip = sb.wait_ready([f"{NS}/server"])[f"{NS}/server"]
        sb.velvet("cni", "install", "--conf-dir", str(tmp_path / "conf"), "--bin-dir", str(tmp_path / "bin"),
                  "--sandbox", sb.name)
        try:
            yield sb, pm, server_ip
        finally:
            pm.cleanup()
            shutil.rmtree(tmp_path, ignore_errors=True)


def test_podman_container_is_a_velvet_pod(podman_node: tuple[Sandbox, Podman, str]) -> None:
    """Test that a podman container gets a pod IP, reaches pod and Service, obeys policy, goes on rm."""
    sb, pm, server_ip = podman_node
    sb.apply(CLIENT)
    cid = pm.start("pmclient")
    pods = {p["metadata"]["name"]: p for p in sb.pods("default")}
    ip = pods["pmclient"]["status"].get("podIP", "")
    assert ip.startswith("10.244.0.")
    inspected = json.loads(pm.run("inspect", cid).stdout)[0]["NetworkSettings"]["Networks"]["velvet"]
    assert inspected["IPAddress"] == ip
    rows = {row["pod"]: row for row in sb.json("endpoint", "list", "-o", "json")}
    assert rows["default/pmclient"]["labels"].get("k8s:app") == "pmclient"
    assert pm.ask("pmclient", server_ip, TCP_PORT).startswith("server ")
    service_ip = sb.json("get", "services", "-n", NS)["items"][0]["spec"]["clusterIP"]
    assert pm.ask("pmclient", service_ip, 80).startswith("server ")
    sb.apply(DENY)
    assert pm.ask("pmclient", server_ip, TCP_PORT) == ""
    sb.delete(DENY)

    pm.run("rm", "-f", "-t", "0", cid)
    assert "default/pmclient" not in {row["pod"] for row in sb.json("endpoint", "list", "-o", "json")}
    assert not {p["metadata"]["name"]: p for p in sb.pods("default")}["pmclient"]["status"].get("podIP")
    leases = json.loads(Path(f"/var/lib/velvet/{sb.name}/ipam.json").read_text())
    assert ip not in leases.values()
