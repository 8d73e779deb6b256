"""The kernel `Datapath`: loads Velvet's BPF objects with pinned maps and attaches them as pinned links.

Needs root, bpffs, BTF and tcx (Linux >= 6.6) or clsact. Maps and the cgroup and uplink links are pinned
under the pin directory and pod veths carry clsact filters, so programs keep forwarding and enforcing
while the agent is down; a restarted agent loads fresh programs that reuse the pinned maps and swaps
them into the pinned links and the filters in place.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from velvet.datapath import attach, build, features
from velvet.datapath.bpfobject import BpfObject, Program, load_over_pins
from velvet.datapath.protocol import DatapathStatus, KernelInfo, MapStatus, ProgramStatus
from velvet.datapath.structs import MetricReason
from velvet.datapath.tablemaps import TableMaps
from velvet.datapath.tables import ConntrackSweep, StaleBackend
from velvet.datapath.views import EventsRing, MetricsMap, ProcEventsRing, Views, open_views
from velvet.model.endpoint import EndpointRecord
from velvet.system import mounts

log = logging.getLogger("velvet.datapath")
OBJECTS = ("lxc", "sock", "node", "overlay")  # proc.bpf.o is the process monitor's (velvet.runtime.source)
SOCK_HOOKS = {
    "sock_connect4": attach.BPF_CGROUP_INET4_CONNECT,
    "sock_sendmsg4": attach.BPF_CGROUP_UDP4_SENDMSG,
    "sock_recvmsg4": attach.BPF_CGROUP_UDP4_RECVMSG,
    "sock_getpeername4": attach.BPF_CGROUP_INET4_GETPEERNAME,
}


class KernelDatapath:
    """Velvet's programs in this kernel, for one node (the agent runs in the node's network namespace)."""

    def __init__(self, pin_dir: Path, *, cgroup: Path | None, uplink: str | None,
                 tunnel: str | None = None) -> None:
        """Programs pinned under `pin_dir`; `tunnel` names the VXLAN device of tunnel mode (None: native)."""
        self.pin_dir = pin_dir
        self.links_dir = pin_dir / "links"
        self.cgroup = cgroup
        self.uplink = uplink
        self.tunnel = tunnel
        self.objects: dict[str, BpfObject] = {}
        self.views: Views | None = None
        self.tables = TableMaps(Views({}))
        self._attachments: dict[str, list[str]] = {}
        self._kernel = KernelInfo(features.kernel_release())

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Probe the kernel, build if stale, load with pinned maps, attach the cgroup and uplink hooks."""
        self._kernel = KernelInfo(features.kernel_release(), tuple(features.probe()))
        self.preload()
        mounts.ensure_pin_dir(self.links_dir)
        self.views = open_views(self.pin_dir, skip=(ProcEventsRing.name,))  # velvet.runtime.source reads it
        self.tables = TableMaps(self.views)
        self._drop_dead_links()
        if self.cgroup is not None:
            sock = self.objects["sock"]
            for prog_name, hook in SOCK_HOOKS.items():
                attach.attach_cgroup(sock.program(prog_name), self.cgroup, hook, self.links_dir / prog_name)
                self._attachments[prog_name] = [f"cgroup {self.cgroup}"]
        if self.uplink is not None:
            ifindex = socket.if_nametoindex(self.uplink)
            node = self.objects["node"]
            for prog_name, direction in (("node_from_uplink", "ingress"), ("node_to_uplink", "egress")):
                attach.attach_tcx(node.program(prog_name), ifindex, direction,  # type: ignore[arg-type]
                                  self.links_dir / f"uplink-{direction}")
                self._attachments[prog_name] = [f"{self.uplink} ({direction})"]
        self._attach_tunnel()

    def preload(self) -> None:
        """Load the objects `start` has not loaded yet over the pins, attaching nothing.

        The agent calls it on a thread while its store loads: the kernel verifies the programs without
        holding the GIL.
        """
        mounts.ensure_bpffs()
        mounts.ensure_pin_dir(self.pin_dir)
        for name in OBJECTS:
            if name not in self.objects:
                self.objects[name] = self._load(name)

    def _attach_tunnel(self) -> None:
        """Tunnel mode: the overlay programs on the VXLAN device and its ifindex in tunnel_config, which
        makes lxc_from_pod encapsulate; native routing: neither (a previous tunnel mode's are removed)."""
        ifindex = 0
        if self.tunnel is not None:
            ifindex = socket.if_nametoindex(self.tunnel)
            overlay = self.objects["overlay"]
            for prog_name, direction in (("overlay_from_tunnel", "ingress"), ("overlay_to_tunnel", "egress")):
                attach.attach_tcx(overlay.program(prog_name), ifindex, direction,  # type: ignore[arg-type]
                                  self.links_dir / f"tunnel-{direction}")
        else:
            for direction in ("ingress", "egress"):
                attach.detach_pinned(self.links_dir / f"tunnel-{direction}")
        self.tables.write("tunnel_config", {0: ifindex}, ())

    def kernel(self) -> KernelInfo:
        """The release, and the feature checks `start` ran."""
        return self._kernel

    def _load(self, name: str) -> BpfObject:
        """Open and load one object reusing pinned maps (an older layout's are replaced, entries kept)."""
        return load_over_pins(build.object_path(name), self.pin_dir,
                              lambda: [pinned for pinned in self.pin_dir.iterdir() if pinned.is_file()])

    def _drop_dead_links(self) -> None:
        """Remove pinned pod-veth links whose interface is gone (pods deleted while no agent ran)."""
        for path, info in attach.list_pinned_links(self.links_dir):
            if info.type == "tcx" and not info.ifindex:
                attach.detach_pinned(path)

    def close(self) -> None:
        """Release fds; pinned maps and links keep the datapath running."""
        if self.views is not None:
            self.views.close()
        for obj in self.objects.values():
            obj.close()
        self.tables = TableMaps(Views({}))
        self.objects.clear()

    # -- endpoints --------------------------------------------------------------------------------

    def _lxc(self, name: str) -> Program:
        return self.objects["lxc"].program(name)

    def attach_endpoint(self, endpoint: EndpointRecord) -> None:
        """Direct-action tc filters on the pod's host-side veth: ingress (from the pod), egress (to it).

        Not tcx: every tcx attach waits for an RCU grace period (tcx_entry_sync), 25-33 ms for a pod's two
        hooks on this 2-core VM against 1 ms for two filters, on the CNI ADD path; the veth is Velvet's alone,
        so tcx's ordering of several owners buys nothing there.
        """
        attach.attach_tc_pair(self._lxc("lxc_from_pod"), self._lxc("lxc_to_pod"), endpoint.ifindex)
        for direction in ("ingress", "egress"):  # a tcx link of an agent from before the filters
            attach.detach_pinned(self.links_dir / f"lxc-{endpoint.ifname}-{direction}")

    def has_interface(self, ifname: str) -> bool:
        """Whether this network namespace has the interface (sysfs may show another namespace)."""
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            return False
        return True

    def endpoint_problems(self, endpoint: EndpointRecord) -> list[str]:
        """The veth gone or renumbered, or a hook without this agent's program."""
        if _ifnames().get(endpoint.ifindex) != endpoint.ifname:
            return [f"interface {endpoint.ifname} (ifindex {endpoint.ifindex}) is gone"]
        expected = {"ingress": self._lxc("lxc_from_pod").id, "egress": self._lxc("lxc_to_pod").id}
        return [f"{endpoint.ifname} has no {hook} program" for hook, prog_id in expected.items()
                if attach.tc_filter_program(endpoint.ifindex, hook) != prog_id]  # type: ignore[arg-type]

    def detach_endpoint(self, endpoint: EndpointRecord) -> None:
        """Remove the endpoint's filters if its veth is still there (a deleted veth took them along)."""
        if _ifnames().get(endpoint.ifindex) == endpoint.ifname:  # never another pod's reused ifindex
            attach.detach_tc_pair(endpoint.ifindex)

    # -- tables -----------------------------------------------------------------------------------

    def write(self, table: str, upserts: Mapping[Any, Any], deletes: Iterable[Any]) -> None:
        """Batch-upsert then batch-delete, through the table's codec."""
        self.tables.write(table, upserts, deletes)

    def read(self, table: str) -> dict[Any, Any]:
        """The table decoded from the map (what a previous agent left)."""
        return self.tables.read(table)

    def flush_backends(self, stale: Sequence[StaleBackend]) -> None:
        """Drop conntrack and affinity entries that still lead a frontend to a backend it no longer has."""
        if self.views is not None:
            self.tables.flush_backends(stale)

    def sweep_conntrack(self) -> ConntrackSweep:
        """Remove the conntrack entries whose lifetime ran out, by the programs' clock (CLOCK_MONOTONIC)."""
        if self.views is None:
            return ConntrackSweep(0, 0, 0)
        return self.tables.sweep_conntrack(time.monotonic_ns())

    def dump(self, table: str) -> list[dict[str, Any]]:
        """Raw entries of one map, fields by name (for `velvet bpf … list`)."""
        return self.tables.dump(table)

    # -- events -----------------------------------------------------------------------------------

    def read_events(self, max_records: int = 65536) -> Any:
        """Committed flow events from the ring (numpy, FLOW_EVENT_DTYPE)."""
        assert self.views is not None
        return self.views.get(EventsRing).read(max_records)

    def events_fd(self) -> int | None:
        """The ring's pollable fd."""
        return self.views.get(EventsRing).ring.fileno() if self.views is not None else None

    def events_lost(self) -> int:
        """Per-CPU count of events the ring had no room for (metrics reason 1)."""
        if self.views is None:
            return 0
        totals = self.views.get(MetricsMap).totals().items()
        return sum(c.packets for (reason, _), c in totals if reason == MetricReason.EVENTS_LOST)

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> DatapathStatus:
        """Loaded programs with their attachments, map fill levels and datapath counters."""
        links = attach.list_pinned_links(self.links_dir)
        by_prog: dict[int, list[str]] = {}
        names = _ifnames()
        for path, info in links:
            where = path.name
            if info.type == "tcx" and info.ifindex:
                where = f"{names.get(info.ifindex, info.ifindex)} ({path.name.rsplit('-', 1)[-1]})"
            elif info.type == "cgroup":
                where = f"cgroup {self.cgroup}"
            by_prog.setdefault(info.prog_id, []).append(where)
        lxc = ({self._lxc("lxc_from_pod").id: "ingress", self._lxc("lxc_to_pod").id: "egress"}
               if "lxc" in self.objects else {})
        for index, ifname in sorted(names.items()) if lxc else ():
            for hook in ("ingress", "egress"):
                prog_id = attach.tc_filter_program(index, hook)
                if prog_id is not None and lxc.get(prog_id) == hook:
                    by_prog.setdefault(prog_id, []).append(f"{ifname} ({hook})")
        programs = []
        for obj in self.objects.values():
            for name, prog in sorted(obj.programs().items()):
                programs.append(ProgramStatus(name, prog.id, tuple(by_prog.get(prog.id, ()))))
        maps = []
        for name, m in sorted(self.tables.maps.items()):
            minfo = m.info
            entries = m.count() if minfo.type != "ringbuf" else 0
            maps.append(MapStatus(name, minfo.type, entries, minfo.max_entries))
        counters: dict[str, int] = {}
        if self.views is not None:
            for (reason, direction), counter in self.views.get(MetricsMap).totals().items():
                label = f"{reason}:{direction.name.lower()}"
                counters[f"{label}:packets"] = counter.packets
                counters[f"{label}:bytes"] = counter.bytes
        return DatapathStatus("kernel", tuple(programs), tuple(maps), counters)


def _ifnames() -> dict[int, str]:
    """ifindex -> name in this network namespace."""
    return {index: name for index, name in socket.if_nameindex()}
