"""The CNI contract as data: versions, error codes, and the checks of a runtime's environment and config.

Pure and stdlib-only, so `velvet-cni` starts fast (no dataclasses or typing at run time: they cost the
plugin's every call more than its own work); the agent runs the same checks on what it is sent.
"""

from __future__ import annotations

import json
import re
import socket

from velvet.errors import VelvetError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
"""Versions a result can be written in: 0.3.0 and later share the result shape Velvet answers with."""
PLUGIN_TYPE = "velvet-cni"
DEFAULT_MTU = 1500
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_IFNAME_FORBIDDEN = frozenset("/:") | frozenset(chr(c) for c in range(0x21)) | {"\x7f"}

# Error codes of the spec (SPEC.md "Error"); 100+ are Velvet's own.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_READY = 50
AGENT_REFUSED = 100
"""The agent refused or failed the request: its message says what and where."""


class CniError(VelvetError):
    """A CNI failure: its code (the spec's), one line saying what, and optional details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        """The error object a runtime reads from stdout."""
        answer: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            answer["details"] = self.details
        return answer


class Invocation:
    """One call of the plugin: the command, its environment, and the network config from stdin."""

    __slots__ = ("args", "command", "config", "container_id", "ifname", "netns")

    def __init__(self, command: str, container_id: str = "", netns: str = "", ifname: str = "",
                 args: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args: Mapping[str, str] = args or {}
        self.config: Mapping[str, Any] = config or {}

    def __repr__(self) -> str:
        return f"Invocation({self.command} {self.container_id}/{self.ifname} in {self.netns!r})"

    @property
    def version(self) -> str:
        """The cniVersion the runtime chose (the answer is written in it)."""
        return str(self.config.get("cniVersion", "1.0.0"))

    def to_json(self) -> dict[str, Any]:
        """What the plugin sends the agent."""
        return {"command": self.command, "containerID": self.container_id, "netns": self.netns,
                "ifname": self.ifname, "args": dict(self.args), "config": dict(self.config)}


def parse_args(raw: str) -> dict[str, str]:
    """CNI_ARGS "K1=V1;K2=V2" as a dict; a pair without "=" is a bad environment (code 4)."""
    pairs: dict[str, str] = {}
    for item in filter(None, raw.split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {item!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


def _required(command: str) -> tuple[str, ...]:
    """Environment variables the spec requires for `command`."""
    if command in ("ADD", "CHECK"):
        return ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    if command == "DEL":
        return ("CNI_CONTAINERID", "CNI_IFNAME")
    if command == "GC":
        return ("CNI_PATH",)
    return ()


def parse_environment(env: Mapping[str, str]) -> tuple[str, str, str, str, dict[str, str]]:
    """(command, container id, netns, ifname, CNI_ARGS) from the environment; CniError 4 on a bad one."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND: {command!r} is not one of {', '.join(COMMANDS)}")
    missing = [name for name in _required(command) if not env.get(name)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"{command} needs {', '.join(missing)} in the environment")
    container_id = env.get("CNI_CONTAINERID", "")
    if container_id and not _CONTAINER_ID.fullmatch(container_id):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID: {container_id!r} is not [alnum][alnum_.-]*")
    ifname = env.get("CNI_IFNAME", "")
    if ifname and (not 0 < len(ifname.encode()) < 16 or ifname in (".", "..")
                   or any(c in _IFNAME_FORBIDDEN for c in ifname)):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME: {ifname!r} is not an interface name (1-15 bytes, "
                                            "no '/', ':' or whitespace)")
    netns = env.get("CNI_NETNS", "")
    if netns and not netns.startswith("/"):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS: {netns!r} is not an absolute path")
    return command, container_id, netns, ifname, parse_args(env.get("CNI_ARGS", ""))


def parse_config(raw: bytes) -> dict[str, Any]:
    """The network config from stdin: JSON (else code 6) with a known cniVersion (else 1), an mtu (else 7)."""
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise CniError(DECODE_FAILURE, f"stdin: the network config is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, f"stdin: the network config is a JSON {type(config).__name__}, "
                                       "not an object")
    version = config.get("cniVersion")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported: use one of "
                                             f"{', '.join(SUPPORTED_VERSIONS)}")
    mtu = config.get("mtu", DEFAULT_MTU)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 65535:
        raise CniError(INVALID_CONFIG, f"mtu: {mtu!r} is not an MTU (an integer 576-65535)")
    path = config.get("socket")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise CniError(INVALID_CONFIG, f"socket: {path!r} is not the absolute path of the agent's socket")
    _check_dns(config.get("dns"))
    return config


def _check_dns(dns: object) -> None:
    """The config's dns (the spec's {nameservers, domain, search, options}), which ADD's result repeats."""
    if dns is None:
        return
    if not isinstance(dns, dict) or not set(dns) <= {"nameservers", "domain", "search", "options"}:
        raise CniError(INVALID_CONFIG, "dns: not an object of nameservers, domain, search and options")
    for key in ("nameservers", "search", "options"):
        if not isinstance(dns.get(key, []), list) or not all(isinstance(v, str) for v in dns.get(key, [])):
            raise CniError(INVALID_CONFIG, f"dns.{key}: not a list of strings")
    if not isinstance(dns.get("domain", ""), str):
        raise CniError(INVALID_CONFIG, "dns.domain: not a string")
    for server in dns.get("nameservers", []):
        if not any(_is_address(family, server) for family in (socket.AF_INET, socket.AF_INET6)):
            raise CniError(INVALID_CONFIG, f"dns.nameservers: {server!r} is not an IP address")


def _is_address(family: int, text: str) -> bool:
    try:
        socket.inet_pton(family, text)
    except OSError:
        return False
    return True


def pod_of(invocation: Invocation) -> tuple[str, str]:
    """(namespace, name) of the pod: K8S_POD_NAMESPACE/K8S_POD_NAME, else default/<container id[:12]>."""
    namespace = invocation.args.get("K8S_POD_NAMESPACE") or "default"
    name = invocation.args.get("K8S_POD_NAME") or invocation.container_id[:12]
    return namespace, name
