"""`velvet events -o compact`: one line per process event, as `tetra getevents -o compact` prints them."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]
_ICONS = {"process_exec": ("🚀", "process"), "process_fork": ("🔀", "fork   "),
          "process_exit": ("💥", "exit   "), "process_tracepoint": ("🔍", "syscall")}


def compact_line(event: Json, *, node_name: bool = False) -> str:
    """`🚀 process ns/pod /usr/bin/curl -s x`, `💥 exit    ns/pod /usr/bin/curl -s x 0` (or the signal).

    An exec a tracing policy acted on ends with `(Sigkill by policy ns/name)`; a cgroup hook's denial reads
    `🚫 ns/pod /usr/bin/curl denied connect4 to 10.0.0.1:80/TCP by policy ns/name` (🔍 … audited … for Post).

    A node process has no pod: the node's name stands there. A lost-events notice is a line of its own.
    """
    if "lost_events" in event:
        return f"⚠️  {event['lost_events'].get('num_events_lost', 0)} events lost (follower too slow)"
    kind = next((k for k in _ICONS if k in event), "")
    if not kind:
        return f"?  unknown event {sorted(event)}"
    body = event[kind]
    proc = body.get("process", {})
    icon, word = _ICONS[kind]
    pod = proc.get("pod")
    where = f"{pod['namespace']}/{pod['name']}" if pod else str(event.get("node_name", ""))
    line = f"{icon} {word} {where} {proc.get('binary', '')}"
    if kind == "process_tracepoint" and body.get("subsys") == "cgroup":  # a cgroup hook's denial or audit
        icon = "🚫" if body.get("action") == "KPROBE_ACTION_OVERRIDE" else "🔍"
        line = f"{icon} {where} {proc.get('binary', '')} {body.get('message', body.get('event', ''))}"
        line += f" by policy {body.get('policy_name') or body.get('policy_index', '')}"
        return f"{event.get('node_name', '')}: {line}" if node_name else line
    if kind == "process_tracepoint":  # the syscall and the arguments its policy reports, not the process's
        values = [a.get("string_arg", a.get("int_arg")) for a in body.get("args", [])]
        line += f" {body.get('event', '')}" + "".join(f" {v}" for v in values if v is not None)
    elif proc.get("arguments"):
        line += f" {proc['arguments']}"
    if body.get("policy_name"):
        line += f" ({body.get('action', '')} by policy {body['policy_name']})"
    if kind == "process_exit":
        line += f" {body['signal']}" if body.get("signal") else f" {body.get('status', 0)}"
    if node_name:
        line = f"{event.get('node_name', '')}: {line}"
    return line
