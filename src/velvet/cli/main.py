"""The `velvet` command: a thin shell over the agent's local API (and the sandbox runtime on this machine)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from velvet import __version__
from velvet.errors import VelvetError
from velvet.paths import current_sandbox


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand, registered by the module that implements it."""
    from velvet.cli import agent_cmd, cni, connectivity, demo, inspect, objects, observe, sandbox, status

    parser = argparse.ArgumentParser(prog="velvet", description="eBPF networking, observability and security")
    parser.add_argument("--sandbox", default=None, help="sandbox (default: $VELVET_SANDBOX or default)")
    parser.add_argument("--node", default=None, metavar="NAME",
                        help="run the command on this registered node (default: the first node)")
    parser.add_argument("--version", action="version", version=f"velvet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    agent_cmd.register(sub)
    objects.register(sub)
    status.register(sub)
    inspect.register(sub)
    observe.add_observe_parser(sub)
    observe.add_monitor_parser(sub)
    sandbox.register(sub)
    demo.register(sub)
    connectivity.register(sub)
    cni.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the command; a Velvet error is one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    try:
        current_sandbox(args.sandbox)  # a bad --sandbox or $VELVET_SANDBOX stops every command before it acts
        code: int = args.func(args)
    except VelvetError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
