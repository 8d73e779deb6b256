"""The agent's side of `velvet-cni`: runtime attachments (container id + ifname), leases, veths, endpoints.

One attachment per (container id, ifname), kept in a state file next to the endpoints. ADD leases an
address from the node's one allocator, wires the veth, and registers the endpoint under the pod's
namespace/name (from CNI_ARGS); DEL undoes it whatever is left; CHECK compares what exists with what ADD
made; GC removes every attachment the runtime no longer lists. Runs on the agent's state worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from velvet.cni.spec import (
    AGENT_REFUSED,
    INVALID_CONFIG,
    NOT_READY,
    UNKNOWN_CONTAINER,
    CniError,
    Invocation,
    parse_config,
    parse_environment,
    pod_of,
)
from velvet.cni.wiring import Veth, Wiring
from velvet.controllers.endpoints import EndpointController
from velvet.durable import write_atomic
from velvet.errors import VelvetError
from velvet.ipam import CNI_LEASE_PREFIX, PodIpam
from velvet.model.endpoint import EndpointReport

log = logging.getLogger("velvet.cni")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
RUNTIME_ANNOTATION = "velvet.io/runtime"
"""Pod annotation: "cni" leaves the pod to a container runtime calling velvet-cni, not the sandbox kubelet."""


@dataclass(frozen=True)
class Attachment:
    """A runtime's pod interface that Velvet wired."""

    container_id: str
    ifname: str
    netns: str
    namespace: str
    name: str
    uid: str
    ip: str
    host_veth: str
    gateway: str
    mtu: int
    host_mac: str = ""
    pod_mac: str = ""
    dns: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """containerID/ifname: what the runtime names the attachment by."""
        return f"{self.container_id}/{self.ifname}"

    @property
    def pod(self) -> str:
        """namespace/name of the pod the runtime gave."""
        return f"{self.namespace}/{self.name}"

    def veth(self) -> Veth:
        """The wiring of this attachment."""
        return Veth(self.netns, self.ifname, self.host_veth, self.ip, self.gateway, self.mtu)

    def result(self) -> dict[str, Any]:
        """The ADD result (no cniVersion): node end, pod end, address, default route, the config's dns."""
        return {
            "interfaces": [{"name": self.host_veth, "mac": self.host_mac, "mtu": self.mtu, "sandbox": ""},
                           {"name": self.ifname, "mac": self.pod_mac, "mtu": self.mtu,
                            "sandbox": self.netns}],
            "ips": [{"address": f"{self.ip}/32", "gateway": self.gateway, "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": self.gateway}],
            "dns": self.dns,
        }


def lease_of(key: str) -> str:
    """The IPAM lease name of attachment `key`."""
    return f"{CNI_LEASE_PREFIX}{key}"


def host_veth_of(key: str) -> str:
    """The node end's name: "vc" + 10 hex digits of the attachment key (fits IFNAMSIZ)."""
    return "vc" + hashlib.sha256(key.encode()).hexdigest()[:10]


def decode_request(request: object) -> Invocation:
    """The plugin's relayed call, checked again here (the agent trusts no caller of its socket)."""
    if not isinstance(request, Mapping):
        raise CniError(AGENT_REFUSED, "CNI request: not a JSON object")
    env = {"CNI_COMMAND": request.get("command"), "CNI_CONTAINERID": request.get("containerID"),
           "CNI_NETNS": request.get("netns"), "CNI_IFNAME": request.get("ifname"), "CNI_PATH": "/"}
    args = request.get("args", {})
    if not all(isinstance(v, str) for v in env.values()) or not isinstance(args, Mapping) or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
        raise CniError(AGENT_REFUSED, "CNI request: command, containerID, netns, ifname and args must be "
                                      "strings")
    command, container_id, netns, ifname, _ = parse_environment(env)  # type: ignore[arg-type]
    config = parse_config(json.dumps(request.get("config", {})).encode())
    invocation = Invocation(command, container_id, netns, ifname, dict(args), config)
    if command == "ADD":
        namespace, name = pod_of(invocation)
        if not _DNS_LABEL.fullmatch(namespace) or not _DNS_SUBDOMAIN.fullmatch(name):
            raise CniError(INVALID_CONFIG, f"CNI_ARGS: pod {namespace}/{name} is not a Kubernetes "
                                           "namespace/name")
    return invocation


class CniAttachments:
    """Runtime attachments of one node: ADD, DEL, CHECK, GC and STATUS as the agent does them."""

    def __init__(self, state_file: Path, ipam: PodIpam, wiring: Wiring, endpoints: EndpointController,
                 gateway: str) -> None:
        self._file = state_file
        self._ipam = ipam
        self._wiring = wiring
        self._endpoints = endpoints
        self._gateway = gateway
        self._by_key = self._load()

    def __iter__(self) -> Iterator[Attachment]:
        return iter(sorted(self._by_key.values(), key=lambda a: a.key))

    def by_pod(self, pod: str) -> Attachment | None:
        """The attachment wired for pod namespace/name."""
        return next((a for a in self._by_key.values() if a.pod == pod), None)

    def handle(self, request: object) -> dict[str, Any]:
        """One relayed call: {"result": ...} for ADD, {} for the others, {"error": ...} on failure."""
        try:
            invocation = decode_request(request)
            if invocation.command == "ADD":
                return {"result": self.add(invocation).result()}
            if invocation.command == "DEL":
                self.delete(invocation.container_id, invocation.ifname)
            elif invocation.command == "CHECK":
                self.check(invocation)
            elif invocation.command == "STATUS":
                self.status()
            elif invocation.command == "GC":
                self.gc(invocation.config.get("cni.dev/valid-attachments", []))
            return {}
        except CniError as exc:
            return {"error": exc.to_json("")}

    def add(self, invocation: Invocation) -> Attachment:
        """Lease, wire, register the endpoint; on any failure undo what was made."""
        key = f"{invocation.container_id}/{invocation.ifname}"
        if key in self._by_key:
            raise CniError(AGENT_REFUSED, f"{key} is already attached: DEL it first")
        namespace, name = pod_of(invocation)
        holder = self.by_pod(f"{namespace}/{name}")
        if holder is not None:
            raise CniError(AGENT_REFUSED, f"pod {namespace}/{name} is already attached by container "
                                          f"{holder.container_id}: DEL that one first")
        if self._endpoints.get(f"{namespace}/{name}") is not None:
            raise CniError(AGENT_REFUSED, f"pod {namespace}/{name} is already run by the sandbox's kubelet")
        try:
            ip = self._ipam.allocate(lease_of(key))
        except VelvetError as exc:
            raise CniError(AGENT_REFUSED, str(exc)) from None
        attachment = Attachment(invocation.container_id, invocation.ifname, invocation.netns, namespace, name,
                                invocation.args.get("K8S_POD_UID", ""), ip, host_veth_of(key), self._gateway,
                                int(invocation.config.get("mtu", 1500)),
                                dns=dict(invocation.config.get("dns", {})))
        try:
            wired = self._wiring.add(attachment.veth())
            attachment = Attachment(**{**asdict(attachment), "host_mac": wired.host_mac,
                                       "pod_mac": wired.pod_mac})
            self._by_key[key] = attachment
            self._save()
            self._endpoints.add(namespace, name, EndpointReport(ip, attachment.host_veth, wired.host_ifindex,
                                                                wired.netns_inode, mac=wired.pod_mac,
                                                                host_mac=wired.host_mac))
        except BaseException as exc:
            self._undo(attachment)
            if isinstance(exc, CniError):
                raise
            if isinstance(exc, VelvetError | OSError):
                raise CniError(AGENT_REFUSED, f"wiring {key}: {exc}") from None
            raise
        log.info("cni ADD %s: pod %s at %s on %s", key, attachment.pod, ip, attachment.host_veth)
        return attachment

    def delete(self, container_id: str, ifname: str) -> Attachment | None:
        """Undo ADD of container_id/ifname, whatever is left of it; nothing left is success."""
        key = f"{container_id}/{ifname}"
        attachment = self._by_key.get(key)
        if attachment is None:
            self._ipam.release(lease_of(key))
            return None
        self._undo(attachment)
        log.info("cni DEL %s: pod %s", key, attachment.pod)
        return attachment

    def check(self, invocation: Invocation) -> None:
        """Error (3: unknown, else 100) unless ADD's veth, address, route, lease and endpoint all exist, the
        endpoint's programs sit on the veth and the datapath's endpoint map holds it."""
        key = f"{invocation.container_id}/{invocation.ifname}"
        attachment = self._by_key.get(key)
        if attachment is None:
            raise CniError(UNKNOWN_CONTAINER, f"{key} was never attached (or was deleted)")
        problems = self._wiring.check(attachment.veth())
        if self._ipam.leases().get(lease_of(key)) != attachment.ip:
            problems.append(f"the lease of {attachment.ip} is gone")
        endpoint = self._endpoints.get(attachment.pod)
        if endpoint is None or endpoint.ip != attachment.ip:
            problems.append(f"the endpoint of pod {attachment.pod} is gone")
        else:
            problems.extend(self._endpoints.problems(attachment.pod))
        if problems:
            raise CniError(AGENT_REFUSED, f"CHECK {key}: " + "; ".join(problems))

    def gc(self, valid: object) -> list[Attachment]:
        """Remove attachments and stray cni leases not in cni.dev/valid-attachments; returns those removed."""
        if not isinstance(valid, list) or not all(isinstance(v, Mapping) for v in valid):
            raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments: not a list of {containerID, ifname}")
        keep = {f"{v.get('containerID')}/{v.get('ifname')}" for v in valid}
        removed = [a for a in list(self._by_key.values()) if a.key not in keep]
        for attachment in removed:
            self._undo(attachment)
        for lease in self._ipam.leases():
            if lease.startswith(CNI_LEASE_PREFIX) and lease[len(CNI_LEASE_PREFIX):] not in keep:
                self._ipam.release(lease)
        return removed

    def status(self) -> None:
        """STATUS: ready unless the pod CIDR has no free address (code 50)."""
        if self._ipam.free() == 0:
            raise CniError(NOT_READY, "the node's pod CIDR has no free address")

    def drain(self, queue: Path) -> int:
        """Run the DELs queued while no agent answered; returns how many ran."""
        done = 0
        for path in sorted(queue.glob("*.json")) if queue.is_dir() else ():
            try:
                request = json.loads(path.read_bytes())
                self.delete(str(request["containerID"]), str(request["ifname"]))
                done += 1
            except (ValueError, KeyError, TypeError, VelvetError, OSError) as exc:
                log.error("queued CNI DEL %s could not run (%s): dropped", path, exc)
            path.unlink(missing_ok=True)
        return done

    def _undo(self, attachment: Attachment) -> None:
        """Detach, unwire, release, forget: every step tried, best effort."""
        endpoint = self._endpoints.get(attachment.pod)
        if endpoint is not None and endpoint.ifname == attachment.host_veth:
            self._endpoints.remove(attachment.pod)
        try:
            self._wiring.remove(attachment.host_veth)
        except (OSError, VelvetError) as exc:
            log.warning("cni: removing %s: %s", attachment.host_veth, exc)
        self._ipam.release(lease_of(attachment.key))
        if self._by_key.pop(attachment.key, None) is not None:
            self._save()

    def _load(self) -> dict[str, Attachment]:
        try:
            items = json.loads(self._file.read_bytes())
            return {a.key: a for a in (Attachment(**item) for item in items)}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:
            log.error("CNI attachments %s are unreadable (%s): starting without them", self._file, exc)
            return {}

    def _save(self) -> None:
        write_atomic(self._file, json.dumps([asdict(a) for a in self]).encode())
