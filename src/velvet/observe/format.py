"""Text renderings of flows (Hubble JSON dicts) and raw events, as `hubble observe` / `cilium monitor`.

Pure functions of the JSON the agent sends, so the CLI needs nothing else.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, tzinfo
from typing import Any

from velvet.observe.codes import (
    MONITOR_MESSAGE_TYPES,
    POLICY_MATCH_TYPES,
    RESERVED_IDENTITY_NAMES,
    EventFlag,
    EventType,
    drop_reason_names,
)

Json = dict[str, Any]

TABLE_HEADERS = ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
_MATCH_NAMES = {v: k for k, v in POLICY_MATCH_TYPES.items()}
_ACTIONS = {"FORWARDED": "allow", "DROPPED": "deny", "AUDIT": "audit"}
_MESSAGE_TYPES = {v: EventType(k) for k, v in MONITOR_MESSAGE_TYPES.items()}


def timestamp(rfc3339: str, tz: tzinfo | None = None) -> str:
    """Hubble's compact time, "Nov 27 11:22:33.123", in local time (or `tz`)."""
    whole, _, rest = rfc3339.rstrip("Z").partition(".")
    when = datetime.fromisoformat(whole).replace(tzinfo=UTC).astimezone(tz)
    return f"{when:%b} {when.day:2d} {when:%H:%M:%S}.{(rest + '000')[:3]}"


def _ports(flow: Json) -> tuple[int, int]:
    l4 = flow.get("l4") or {}
    proto = l4.get("TCP") or l4.get("UDP") or {}
    return proto.get("source_port", 0), proto.get("destination_port", 0)


def _identity(ep: Json) -> str:
    ident = ep.get("identity", 0)
    if not ident:
        return ""
    return f" ({RESERVED_IDENTITY_NAMES[ident]})" if ident in RESERVED_IDENTITY_NAMES else f" (ID:{ident})"


def endpoint_text(flow: Json, side: str) -> str:
    """"ns/pod:port (ID:n)" for one side ("source" / "destination"): pod, else service, else IP."""
    ep: Json = flow.get(side) or {}
    service: Json = flow.get(f"{side}_service") or {}
    ip = (flow.get("IP") or {}).get(side, "")
    if ep.get("pod_name"):
        host = f"{ep.get('namespace', '')}/{ep['pod_name']}".lstrip("/")
    elif service:
        host = f"{service.get('namespace', '')}/{service['name']}".lstrip("/")
    else:
        host = ip
    port = _ports(flow)[0 if side == "source" else 1]
    return (f"{host}:{port}" if port else host) + _identity(ep)


def _event_type(flow: Json) -> EventType | None:
    return _MESSAGE_TYPES.get((flow.get("event_type") or {}).get("type", 0))


def flow_type(flow: Json) -> str:
    """Hubble's TYPE column: "to-endpoint", "policy-verdict:L3-L4 INGRESS", "drop", "post-xlate-fwd"."""
    kind = _event_type(flow)
    if kind == EventType.POLICY_VERDICT:
        match = _MATCH_NAMES.get(flow.get("policy_match_type", 0), "none")
        return f"policy-verdict:{match} {flow.get('traffic_direction', '')}".rstrip()
    if kind == EventType.DROP:
        return "drop"
    if kind == EventType.SOCK:
        return "post-xlate-fwd"
    point = flow.get("trace_observation_point", "UNKNOWN_POINT")
    return str(point).lower().replace("_", "-")


def verdict_text(flow: Json) -> str:
    """The verdict word: a policy verdict says ALLOWED / AUDITED where a trace says FORWARDED / AUDIT."""
    verdict = str(flow.get("verdict", "VERDICT_UNKNOWN"))
    if _event_type(flow) == EventType.POLICY_VERDICT:
        return {"FORWARDED": "ALLOWED", "AUDIT": "AUDITED"}.get(verdict, verdict)
    return verdict


def drop_text(flow: Json) -> str:
    """Cilium's text of the drop reason ("Policy denied"), "" unless dropped."""
    if flow.get("verdict") != "DROPPED":
        return ""
    return drop_reason_names(flow.get("drop_reason", 0))[1]


def compact(flow: Json, tz: tzinfo | None = None, node_name: bool = False) -> str:
    """One line per flow, like `hubble observe -o compact` (`--print-node-name`: " [node]" after the time)."""
    src, dst, arrow = endpoint_text(flow, "source"), endpoint_text(flow, "destination"), "->"
    if flow.get("is_reply"):
        src, dst, arrow = dst, src, "<-"
    node = f" [{flow.get('node_name', '')}]" if node_name else ""
    line = (f"{timestamp(flow['time'], tz)}{node}: {src} {arrow} {dst} {flow_type(flow)} "
            f"{verdict_text(flow)} ({flow.get('Summary', '')})")
    reason = drop_text(flow)
    return f"{line} {reason}" if reason else line


def table_headers(node_name: bool = False) -> list[str]:
    """Hubble's -o table columns; `--print-node-name` adds NODE after TIMESTAMP."""
    return [TABLE_HEADERS[0], "NODE", *TABLE_HEADERS[1:]] if node_name else list(TABLE_HEADERS)


def table_row(flow: Json, tz: tzinfo | None = None, node_name: bool = False) -> list[str]:
    """One row under `table_headers(node_name)` (Hubble's -o table)."""
    reason = drop_text(flow)
    summary = f"{flow.get('Summary', '')} {reason}".strip()
    node = [str(flow.get("node_name", ""))] if node_name else []
    return [timestamp(flow["time"], tz), *node, endpoint_text(flow, "source"),
            endpoint_text(flow, "destination"), flow_type(flow), verdict_text(flow), summary]


def json_line(item: Json) -> str:
    """One JSON object per line (-o json / monitor -j)."""
    return json.dumps(item, separators=(",", ":"))


def lost_text(item: Json) -> str:
    """The warning Hubble prints for a `lost_events` notice."""
    lost = item.get("lost_events") or {}
    text = f"EVENTS LOST: {lost.get('source', 'UNKNOWN')} {lost.get('num_events_lost', 0)}"
    return f"{text} on {item['node_name']}" if item.get("node_name") else text


def _tuple(event: Json) -> str:
    proto = {6: "tcp", 17: "udp", 1: "icmp"}.get(event.get("proto", 0), f"proto {event.get('proto', 0)}")
    flags = " ".join(event.get("tcp_flags") or ())
    text = f"{event['src']}:{event['sport']} -> {event['dst']}:{event['dport']} {proto}"
    return f"{text} {flags}" if flags else text


def monitor_line(event: Json, verbose: bool = False) -> str:
    """One raw datapath event, in the spirit of `cilium monitor`."""
    kind, obs = event.get("type"), event.get("obs_point", "unknown")
    ids = f"identity {event.get('src_identity', 0)}->{event.get('dst_identity', 0)}"
    if kind == "drop":
        reason = event.get("drop_reason_desc", "")
        text = f"xx drop ({reason}) {obs}, ifindex {event.get('ifindex', 0)}, {ids}: {_tuple(event)}"
    elif kind == "policy-verdict":
        direction = event.get("direction", "ingress")
        remote = event.get("src_identity" if direction == "ingress" else "dst_identity", 0)
        action = _ACTIONS.get(event.get("verdict", ""), "?")
        text = (f"Policy verdict log: policy {event.get('policy_id', 0)}, remote ID {remote}, "
                f"{direction}, action {action}: {_tuple(event)}")
    elif kind == "trace-sock":
        text = (f"[{obs}] cgroup {event.get('cgroup_id', 0)}: {event.get('orig_dst', '')}:"
                f"{event.get('orig_dport', 0)} => {event['dst']}:{event['dport']} rev-nat "
                f"{event.get('rev_nat_index', 0)}")
    else:
        arrow = "<-" if str(obs).startswith("from-") else "->"
        state = "new" if event.get("flags", 0) & EventFlag.NEW_CT else "established"
        state = "reply" if event.get("is_reply") else state
        text = f"{arrow} {obs} ifindex {event.get('ifindex', 0)}, {ids}, state {state}: {_tuple(event)}"
    if verbose:
        text = (f"{event.get('time', '')} {text} bytes {event.get('bytes', 0)}, flags "
                f"{event.get('flags', 0):#x}, cgroup {event.get('cgroup_id', 0)}")
    return text
