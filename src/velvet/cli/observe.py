"""`velvet observe` (Hubble's flows, filters and outputs) and `velvet monitor` (raw datapath events)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from velvet.api.relay import Peer, Relay
from velvet.cli.common import client, cluster_relay, table, warn_unreachable
from velvet.errors import VelvetError
from velvet.observe import format as fmt
from velvet.observe.codes import EVENT_TYPE_NAMES
from velvet.observe.filters import FILTER_FLAGS, FilterArg, FlowQuery, build_spec, parse_time

DEFAULT_LAST = 20
_TABLE_WIDTHS = (19, 40, 40, 28, 10)

_FILTER_HELP = {
    "ip": "source or destination IP or CIDR", "pod": "source or destination pod ([namespace/]name-prefix)",
    "namespace": "source or destination namespace", "label": "source or destination label selector",
    "identity": "source or destination identity (number or reserved name)",
    "port": "source or destination port", "service": "source or destination service ([namespace/]name)",
    "protocol": "L4 protocol: tcp, udp, icmp", "verdict": "FORWARDED, DROPPED, AUDIT or TRANSLATED",
    "type": "event type: trace[:obs-point], drop, policy-verdict, sock",
    "node-name": "the node that saw the flow (a name or a pattern with * and ?)",
}


class _Negate(argparse.Action):
    """`--not`: the next filter goes to the denylist."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        namespace.negate_next = True


class _Filter(argparse.Action):
    """A filter flag: remembered in command-line order with the pending `--not`."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = [*namespace.filters, FilterArg(self.dest, str(values), namespace.negate_next)]
        namespace.filters = items
        namespace.negate_next = False


def _filter_help(flag: str) -> str:
    side, _, base = flag.partition("-") if flag.startswith(("from-", "to-")) else ("", "", flag)
    text = _FILTER_HELP[base]
    return text.replace("source or destination", side) if side else text


def query_from_args(args: argparse.Namespace, now_ns: int | None = None) -> FlowQuery:
    """The agent query `velvet observe` arguments stand for (Hubble's defaults: the last 20 flows)."""
    if args.negate_next:
        raise ValueError("--not must be followed by a filter")
    now_ns = time.time_ns() if now_ns is None else now_ns
    since = parse_time(args.since, now_ns) if args.since else None
    until = parse_time(args.until, now_ns) if args.until else None
    last = args.last
    if last is None and not args.follow and since is None:
        last = DEFAULT_LAST
    return FlowQuery(spec=build_spec(args.filters), last=last, since_ns=since, until_ns=until,
                     from_process=tuple(args.from_process or ()), to_process=tuple(args.to_process or ()))


def _table_line(row: Sequence[str], node_name: bool) -> str:
    widths = (19, 16, *_TABLE_WIDTHS[1:]) if node_name else _TABLE_WIDTHS
    cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
    return "   ".join([*cells, *row[len(widths):]]).rstrip()


def _print_flows(items: Iterable[dict[str, Any]], output: str, follow: bool, node_name: bool = False) -> None:
    rows: list[list[str]] = []
    headers = fmt.table_headers(node_name)
    if output == "table" and follow:
        print(_table_line(headers, node_name), flush=True)
    for item in items:
        if "lost_events" in item and output != "json":  # JSON keeps Hubble's notice in the stream
            print(fmt.lost_text(item), file=sys.stderr, flush=True)
        elif output == "json":
            print(fmt.json_line(item), flush=follow)
        elif output == "table" and follow:
            print(_table_line(fmt.table_row(item, node_name=node_name), node_name), flush=True)
        elif output == "table":
            rows.append(fmt.table_row(item, node_name=node_name))
        else:
            print(fmt.compact(item, node_name=node_name), flush=follow)
    if rows:
        print(table(headers, rows))


def cmd_observe(args: argparse.Namespace) -> int:
    """Print stored flows, or follow new ones, that match the filters: every node's, merged by time
    (Hubble Relay's view), or one node's with `velvet --node NAME`."""
    try:
        query = query_from_args(args)
    except ValueError as exc:
        raise VelvetError(f"observe: {exc}") from None
    api = client(args.sandbox, args.node)
    relay = Relay([Peer(args.node, api)], warn_unreachable) if args.node else cluster_relay(
        api, warn_unreachable)
    params = query.to_params()
    if args.follow:
        items = relay.stream("/v1/stream/flows", params)
    else:
        items = iter(relay.query("/v1/query/flows", params, query.last))
    _print_flows(items, args.output, follow=args.follow, node_name=args.print_node_name)
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """Print raw datapath events as they come, like `cilium monitor`."""
    api = client(args.sandbox, args.node)
    types = ",".join(args.types or ())
    if not args.json:
        print("Listening for events... Press Ctrl-C to quit", file=sys.stderr, flush=True)
    for event in api.stream("/v1/stream/events", type=types or None):
        if "lost_events" in event and not args.json:  # JSON keeps Hubble's notice in the stream
            print(fmt.lost_text(event), file=sys.stderr, flush=True)
        elif args.json:
            print(fmt.json_line(event), flush=True)
        else:
            print(fmt.monitor_line(event, verbose=args.verbose), flush=True)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `velvet observe` and `velvet monitor`."""
    add_observe_parser(subparsers)
    add_monitor_parser(subparsers)


def add_observe_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `velvet observe`."""
    p = subparsers.add_parser(
        "observe", help="show flows with Kubernetes context (like hubble observe)",
        description="Show stored flows (the last 20 by default) or follow new ones. Values of one filter "
                    "are ORed, different filters ANDed; --not negates the filter that follows it. The flows "
                    "of every registered node are merged by time (velvet --node NAME observe: one node's).")
    p.add_argument("--last", type=int, default=None, metavar="N", help="the last N matching flows")
    p.add_argument("-f", "--follow", action="store_true", help="follow new flows")
    p.add_argument("--since", help="flows since a time: duration ago (5m, 1h30m) or RFC 3339")
    p.add_argument("--until", help="flows until a time: duration ago or RFC 3339")
    p.add_argument("-o", "--output", choices=["compact", "json", "table"], default="compact")
    p.add_argument("--print-node-name", action="store_true", help="show the node that saw each flow")
    p.add_argument("--not", action=_Negate, nargs=0, help="negate the next filter")
    for side, who in (("from", "sends"), ("to", "receives")):
        p.add_argument(f"--{side}-process", action="append", metavar="BINARY|PID|EXEC_ID",
                       help=f"TCP flows the process that opened the connection {who} (binary: * ? patterns; "
                            "repeatable, ORed)")
    for flag in FILTER_FLAGS:
        short = ["-t"] if flag == "type" else []
        p.add_argument(*short, f"--{flag}", dest=flag, action=_Filter, metavar="VALUE",
                       help=_filter_help(flag))
    p.set_defaults(func=cmd_observe, filters=[], negate_next=False)


def add_monitor_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `velvet monitor`."""
    p = subparsers.add_parser("monitor", help="show raw datapath events (like cilium monitor)")
    p.add_argument("-t", "--type", dest="types", action="append",
                   choices=[*EVENT_TYPE_NAMES.values(), "sock"], help="only events of this type (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="time, bytes, flags and cgroup of each event")
    p.add_argument("-j", "--json", action="store_true", help="one JSON object per event")
    p.set_defaults(func=cmd_monitor)
