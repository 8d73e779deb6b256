"""The `velvet` command: a thin shell over the agent's local API (and the sandbox runtime on this machine)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from velvet import __version__
from velvet.errors import VelvetError
from velvet.paths import current_sandbox

COMMAND_MODULES = {
    "agent": "agent_cmd", "apply": "objects", "delete": "objects", "get": "objects", "ui": "status",
    "status": "status", "service": "inspect", "endpoint": "inspect", "identity": "inspect",
    "policy": "inspect", "bpf": "inspect", "observe": "observe", "monitor": "observe", "sandbox": "sandbox",
    "demo": "demo", "connectivity": "connectivity", "cni": "cni", "install": "install", "events": "events",
}
"""The module of `velvet.cli` that registers and runs each command: a command imports only its own (the
others pull in pyroute2, numpy, libbpf: 0.3 s of every call); tests/unit/test_cli_main.py keeps it true."""


def command_of(argv: Sequence[str]) -> str | None:
    """The command argv names after the global options, or None (help, version, none given)."""
    args = iter(argv)
    for arg in args:
        if arg in ("--sandbox", "--node"):
            next(args, None)
        elif arg in ("-h", "--help", "--version"):
            return None
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of `command` alone when it is known, else of every command (help, a typo)."""
    own = COMMAND_MODULES.get(command or "")
    modules = [own] if own else list(dict.fromkeys(COMMAND_MODULES.values()))
    parser = argparse.ArgumentParser(prog="velvet", description="eBPF networking, observability and security")
    parser.add_argument("--sandbox", default=None, help="sandbox (default: $VELVET_SANDBOX or default)")
    parser.add_argument("--node", default=None, metavar="NAME",
                        help="run the command on this registered node (default: the first node)")
    parser.add_argument("--version", action="version", version=f"velvet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in modules:
        importlib.import_module(f"velvet.cli.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the command; a Velvet error is one line on stderr and exit code 1."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_of(argv)).parse_args(argv)
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
