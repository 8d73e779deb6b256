"""Synthetic `struct flow_event` batches for the decode benchmark and the unprivileged observe tests.

Batches use the datapath's own FLOW_EVENT_DTYPE (64 bytes, addresses and ports big-endian).
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address
from typing import Any

import numpy as np
import numpy.typing as npt

from velvet.datapath.structs import FLOW_EVENT_DTYPE
from velvet.observe.codes import EventFlag, EventType, ObsPoint, TcpFlag, Verdict
from velvet.observe.flow import Endpoint, Flow

_ADDRESSES = ("saddr", "daddr", "orig_daddr")

DEFAULT_EVENT: dict[str, Any] = {
    "ts_ns": 1_000_000_000, "saddr": "10.0.0.1", "daddr": "10.0.0.2", "sport": 41234, "dport": 80,
    "src_identity": 256, "dst_identity": 257, "type": EventType.TRACE, "obs_point": ObsPoint.TO_ENDPOINT,
    "proto": 6, "tcp_flags": TcpFlag.SYN, "verdict": Verdict.FORWARDED, "flags": EventFlag.NEW_CT,
    "ifindex": 7, "bytes": 60,
}


def events(*records: Mapping[str, Any]) -> npt.NDArray[Any]:
    """A batch with one record per mapping (over DEFAULT_EVENT); addresses may be dotted quads."""
    batch = np.zeros(len(records), dtype=FLOW_EVENT_DTYPE)
    for i, overrides in enumerate(records):
        for name, value in {**DEFAULT_EVENT, **overrides}.items():
            is_text_address = name in _ADDRESSES and isinstance(value, str)
            batch[name][i] = int(IPv4Address(value)) if is_text_address else value
    return batch


def random_events(n: int, seed: int = 0, pods: int = 50) -> npt.NDArray[Any]:
    """`n` plausible events between `pods` pods of 10.0.0.0/24 (for benchmarks and volume tests)."""
    rng = np.random.default_rng(seed)
    batch = np.zeros(n, dtype=FLOW_EVENT_DTYPE)
    batch["ts_ns"] = np.arange(n, dtype=np.uint64) * 1000 + 10**9
    batch["saddr"] = 0x0A000000 + rng.integers(1, pods + 1, n)
    batch["daddr"] = 0x0A000000 + rng.integers(1, pods + 1, n)
    batch["sport"] = rng.integers(32768, 60999, n)
    batch["dport"] = rng.choice([80, 443, 53, 8080], n)
    batch["src_identity"] = 256 + (batch["saddr"] & 0xFF) % 10
    batch["dst_identity"] = 256 + (batch["daddr"] & 0xFF) % 10
    batch["type"] = rng.choice([1, 1, 1, 2, 3], n)
    batch["obs_point"] = rng.choice([1, 2], n)
    batch["proto"] = rng.choice([6, 6, 17], n)
    batch["tcp_flags"] = np.where(batch["proto"] == 6, rng.choice([2, 18, 16, 17, 4], n), 0)
    batch["verdict"] = np.where(batch["type"] == 2, 2, 1)
    batch["drop_reason"] = np.where(batch["type"] == 2, 133, 0)
    batch["policy_id"] = np.where(batch["type"] == 3, 1, 0)
    batch["flags"] = rng.choice([0, 1, 2, 8], n)
    batch["ifindex"] = 7
    batch["bytes"] = 60
    return batch


def make_flow(**overrides: Any) -> Flow:
    """A Flow x/a:41234 (ID:256) -> x/b:80 (ID:257), TCP SYN to-endpoint FORWARDED, with overrides."""
    base: dict[str, Any] = {
        "time_ns": 1_732_706_553_123_456_789, "type": EventType.TRACE, "obs_point": ObsPoint.TO_ENDPOINT,
        "verdict": Verdict.FORWARDED, "drop_reason": 0, "proto": 6, "tcp_flags": TcpFlag.SYN,
        "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "src_port": 41234, "dst_port": 80,
        "source": Endpoint(256, "x", "a", ("k8s:app=a",)),
        "destination": Endpoint(257, "x", "b", ("k8s:app=b", "k8s:tier=web")),
        "node_name": "node-1",
    }
    if overrides.pop("is_reply", False):
        overrides["flags"] = overrides.get("flags", 0) | EventFlag.REPLY
    return Flow(**{**base, **overrides})
