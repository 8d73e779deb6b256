"""`velvet events`: process events of every node (exec, fork, exit, tracepoints and the cgroup hooks'
denials), like `tetra getevents`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from velvet.api.relay import Peer, Relay
from velvet.cli.common import client, cluster_relay, warn_unreachable
from velvet.runtime.compact import compact_line

EVENT_TYPES = ("process_exec", "process_exit", "process_fork", "process_tracepoint")
DEFAULT_LAST = 20


def params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The API query parameters of the command's filters."""
    params: dict[str, Any] = {"last": args.last}
    if args.types:
        params["type"] = ",".join(args.types)
    if args.pod:
        params["pod"] = args.pod
    if args.namespace:
        params["namespace"] = args.namespace
    return params


def cmd_events(args: argparse.Namespace) -> int:
    """Print stored process events, or follow new ones: every node's merged by time, or one node's with
    `velvet --node NAME events`."""
    api = client(args.sandbox, args.node)
    relay = Relay([Peer(args.node, api)], warn_unreachable) if args.node else cluster_relay(
        api, warn_unreachable)
    params = params_from_args(args)
    if args.follow:
        items = relay.stream("/v1/stream/process_events", params)
    else:
        items = iter(relay.query("/v1/query/process_events", params, args.last))
    for event in items:
        if args.output == "json":
            print(json.dumps(event, ensure_ascii=False), flush=args.follow)
        else:
            print(compact_line(event, node_name=args.print_node_name), flush=args.follow)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `velvet events`."""
    p = subparsers.add_parser(
        "events", help="show process events: exec, fork, exit, policy denials (like tetra getevents)",
        description="Show stored process events of the node's pods and the node itself (the last 20 by "
                    "default) or follow new ones; every registered node's are merged by time.")
    p.add_argument("-f", "--follow", action="store_true", help="follow new events")
    p.add_argument("--last", type=int, default=DEFAULT_LAST, metavar="N", help="the last N matching events")
    p.add_argument("--pod", default="", metavar="NAME", help="only this pod's events (* and ? patterns)")
    p.add_argument("-n", "--namespace", default="", metavar="NS", help="only this namespace's pods' events")
    p.add_argument("-t", "--type", dest="types", action="append", choices=EVENT_TYPES,
                   help="only events of this type (repeatable)")
    p.add_argument("-o", "--output", choices=["compact", "json"], default="compact")
    p.add_argument("--print-node-name", action="store_true", help="show the node of each event")
    p.set_defaults(func=cmd_events)
