"""CNI ADD: pod start to network-ready through containerd's CRI, Velvet vs Debian's bridge + host-local.

One run, one containerd of its own (bench/cri.py) in a network namespace of its own
(`velvet-bench-cni-<run>`, so the bridge plugin's bridge and forwarding stay there), two runtime
handlers: the default one whose CNI is velvet-cni attached to a sandbox of its own, and "bridge" whose
conflist is Debian's `bridge` (isGateway) + `host-local`. The handlers alternate on every repetition.
Measured:

- **RunPodSandbox** wall time (the CRI returns once CNI ADD has answered; the pod is network-ready);
- **plugin time**: each plugin executed as a runtime executes it (env + config on stdin) for ADD and
  DEL on a fresh namespace, as a whole process; for velvet-cni also the share of the interpreter start
  (`python -c pass`), of its imports, and of the agent's answer (the in-process relay).

    .venv/bin/python -m bench.cni_add [--pods 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.cri import Containerd, PodSpec, build_image
from velvet.cli.runner import SandboxCli, unique_name
from velvet.cni.install import PACKAGE_HOME

PLUGIN_DIR = Path("/usr/lib/cni")
BRIDGE_CONF = {"cniVersion": "1.0.0", "name": "bench-bridge", "plugins": [{
    "type": "bridge", "bridge": "vbench0", "isGateway": True, "ipMasq": False,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.250.0.0/16"}]],
             "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ""}}]}


def stats(samples: list[float]) -> dict[str, float]:
    """Median, p90 and min in milliseconds."""
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered) * 1e3, 1),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1e3, 1),
            "min_ms": round(ordered[0] * 1e3, 1), "n": len(ordered)}


def cri_start(cd: Containerd, pods: int) -> dict[str, list[float]]:
    """RunPodSandbox wall time per handler, alternating; every pod stopped and removed after."""
    samples: dict[str, list[float]] = {"velvet": [], "bridge": []}
    for i in range(pods):
        order = ["velvet", "bridge"] if i % 2 == 0 else ["bridge", "velvet"]
        for network in order:
            pod = PodSpec("bench", f"{network}-{i}", str(uuid.uuid4()), {"app": "bench"})
            handler = "" if network == "velvet" else "bridge"
            start = time.perf_counter()
            sandbox_id = cd.run_pod(pod, handler)
            samples[network].append(time.perf_counter() - start)
            _, ip, _ = cd.pod_status(sandbox_id)
            assert ip, f"{network} pod {i} has no address"
            cd.stop_pod(sandbox_id)
            cd.remove_pod(sandbox_id)
    return samples


class PluginRunner:
    """Executes a plugin as a runtime does, inside the bench's network namespace."""

    def __init__(self, netns: str, bin_dir: Path) -> None:
        self.netns = netns
        self.bin_dir = bin_dir
        self.made: list[str] = []

    def pod_netns(self) -> str:
        """A fresh pod namespace (removed by `close`)."""
        name = f"{self.netns}-p{len(self.made)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.made.append(name)
        return f"/run/netns/{name}"

    def call(self, plugin: str, command: str, container: str, netns: str, config: dict[str, Any]) -> float:
        """Seconds one plugin process took (exec to exit); raises when it failed."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container,
               "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": str(self.bin_dir),
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={container}"}
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", str(self.bin_dir / plugin)]
        start = time.perf_counter()
        done = subprocess.run(argv, input=json.dumps(config).encode(), env=env, capture_output=True)
        took = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{plugin} {command}: {done.stdout.decode()} {done.stderr.decode()}")
        return took

    def close(self) -> None:
        """Remove the pod namespaces made, by exact name."""
        for name in self.made:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def plugin_times(runner: PluginRunner, configs: dict[str, tuple[str, dict[str, Any]]],
                 rounds: int) -> dict[str, dict[str, list[float]]]:
    """ADD and DEL process times of each plugin, alternating, each on a fresh pod namespace."""
    samples: dict[str, dict[str, list[float]]] = {n: {"ADD": [], "DEL": []} for n in configs}
    for i in range(rounds):
        for network, (plugin, config) in (configs.items() if i % 2 == 0 else reversed(configs.items())):
            netns, container = runner.pod_netns(), f"{network}{i:04d}"
            samples[network]["ADD"].append(runner.call(plugin, "ADD", container, netns, config))
            samples[network]["DEL"].append(runner.call(plugin, "DEL", container, netns, config))
    return samples


def startup_shares(python: str, rounds: int) -> dict[str, list[float]]:
    """Process times of the interpreter alone and with the plugin's imports, started as the installed
    script starts them (-IS, the package's home on sys.path): what every call pays before its work."""
    path = f"import sys; sys.path.insert(0, {str(PACKAGE_HOME)!r})"
    cases = {"python -IS (start only)": f"{path}", "python -IS + import velvet.cni.plugin":
             f"{path}; import velvet.cni.plugin"}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, code in cases.items():
            start = time.perf_counter()
            subprocess.run([python, "-IS", "-c", code], check=True)
            samples[name].append(time.perf_counter() - start)
    return samples


def relay_times(socket: Path, runner: PluginRunner, rounds: int) -> list[float]:
    """In-process ADD relay (the agent's answer, no interpreter start), each followed by DEL."""
    from velvet.cni.plugin import invoke

    config = {"cniVersion": "1.0.0", "name": "velvet", "type": "velvet-cni", "socket": str(socket)}
    samples = []
    for i in range(rounds):
        netns = runner.pod_netns()
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"relay{i:04d}", "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0", "CNI_PATH": "/", "CNI_ARGS": f"K8S_POD_NAME=r{i}"}
        start = time.perf_counter()
        invoke(env, json.dumps(config).encode())
        samples.append(time.perf_counter() - start)
        invoke({**env, "CNI_COMMAND": "DEL"}, json.dumps(config).encode())
    return samples


def main() -> None:
    """Run the benchmark and print one JSON document of medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=20, help="pods per network through the CRI")
    parser.add_argument("--rounds", type=int, default=30, help="direct plugin calls per network")
    args = parser.parse_args()
    run = unique_name("cni")
    netns = f"velvet-bench-{run}"
    work = Path(tempfile.mkdtemp(prefix="vbench", dir="/tmp"))
    sb = SandboxCli(unique_name("bcni"))
    cd = Containerd(work, runtimes={"bridge": work / "cni/bridge-conf"}, netns=netns)
    runner = PluginRunner(netns, cd.cni_bin)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        sb.up()
        sb.velvet("cni", "install", "--conf-dir", str(cd.cni_conf), "--bin-dir", str(cd.cni_bin),
                  "--sandbox", sb.name)
        bridge_conf = json.loads(json.dumps(BRIDGE_CONF))
        bridge_conf["plugins"][0]["ipam"]["dataDir"] = str(work / "host-local")
        (work / "cni/bridge-conf").mkdir(parents=True)
        (work / "cni/bridge-conf/10-bridge.conflist").write_text(json.dumps(bridge_conf))
        for name in ("bridge", "host-local"):
            (cd.cni_bin / name).symlink_to(PLUGIN_DIR / name)
        velvet_conf = json.loads((cd.cni_conf / "10-velvet.conflist").read_text())
        configs = {"velvet": ("velvet-cni", {"cniVersion": velvet_conf["cniVersion"], "name": "velvet",
                                             **velvet_conf["plugins"][0]}),
                   "bridge": ("bridge", {"cniVersion": "1.0.0", "name": "bench-bridge",
                                         **bridge_conf["plugins"][0]})}
        cd.start()
        cd.import_image(build_image(work))
        cri = cri_start(cd, args.pods)
        plugin = plugin_times(runner, configs, args.rounds)
        startup = startup_shares(sys.executable, args.rounds)
        relay = relay_times(sb.api.socket_path, runner, args.rounds)
        report = {
            "cri_run_pod_sandbox": {n: stats(s) for n, s in cri.items()},
            "plugin_process": {n: {c: stats(s) for c, s in by.items()} for n, by in plugin.items()},
            "velvet_cni_shares": {**{n: stats(s) for n, s in startup.items()},
                                  "agent relay (in-process ADD)": stats(relay)},
            "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        }
        print(json.dumps(report, indent=2))
    finally:
        cd.close()
        runner.close()
        sb.down()
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


if __name__ == "__main__":
    main()
