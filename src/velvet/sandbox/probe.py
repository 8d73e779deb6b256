"""A concurrent connectivity prober run inside a pod: many TCP/UDP targets at once, JSON results.

One shot:  python -m velvet.sandbox.probe [--timeout 1] tcp://10.96.1.1:80 udp://10.96.1.2:81 ...
Session:   python -m velvet.sandbox.probe --serve   (each stdin line is a JSON list of targets; each
           answer is one JSON line; ends at end of input)

A TCP target is reachable when it connects and answers one line to "probe\\n"; a UDP target when
it answers a datagram (both as the echo server of `velvet.sandbox.echo` does). Every target gets its
own socket, hence its own source port: each probe is a new connection for conntrack. Every result is
{"target", "ok", "reply" (first reply line), "error"}; the one-shot form exits 0 when all succeeded.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from velvet.sandbox.echo import query

MESSAGE = "probe"


def probe(target: str, timeout: float) -> dict[str, Any]:
    """Probe one tcp://IP:PORT or udp://IP:PORT target."""
    result: dict[str, Any] = {"target": target, "ok": False, "reply": None, "error": None}
    try:
        reply = query(target, MESSAGE, timeout)
    except (OSError, ValueError) as exc:
        result["error"] = str(exc) or type(exc).__name__
        return result
    if not reply:
        result["error"] = "connection closed without an answer"
        return result
    result["ok"] = True
    result["reply"] = reply.strip()
    return result


def probe_all(targets: list[str], timeout: float) -> list[dict[str, Any]]:
    """Probe every target concurrently; results in the order of `targets`."""
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(len(targets), 128)) as pool:
        return list(pool.map(lambda t: probe(t, timeout), targets))


def serve(timeout: float) -> int:
    """Answer each stdin line (a JSON list of targets) with one JSON line of results."""
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            targets = json.loads(line)
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise ValueError("each line must be a JSON list of target strings")
        except ValueError as exc:
            print(json.dumps({"error": str(exc)}), flush=True)
            continue
        print(json.dumps(probe_all(targets, timeout)), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m velvet.sandbox.probe",
                                description="probe many TCP/UDP targets concurrently, print JSON")
    p.add_argument("targets", nargs="*", metavar="TARGET", help="tcp://IP:PORT or udp://IP:PORT")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds per target (default 1)")
    p.add_argument("--serve", action="store_true", help="read JSON target lists from stdin, one per line")
    args = p.parse_args(argv)
    if args.serve:
        return serve(args.timeout)
    if not args.targets:
        p.error("give targets, or --serve")
    results = probe_all(args.targets, args.timeout)
    print(json.dumps(results))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
