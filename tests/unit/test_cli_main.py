"""The `velvet` entry point: each command is registered by the module COMMAND_MODULES names."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

from velvet.cli.main import COMMAND_MODULES, build_parser, command_of


def commands(parser: argparse.ArgumentParser) -> set[str]:
    """The top-level commands a parser knows."""
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def test_every_command_is_registered_by_the_module_the_table_names() -> None:
    """Test that the full parser has exactly the table's commands, and each module alone registers exactly
    the commands the table gives it (a command parsed alone finds its whole parser)."""
    assert commands(build_parser()) == set(COMMAND_MODULES)
    for module in set(COMMAND_MODULES.values()):
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"velvet.cli.{module}").register(sub)
        assert set(sub.choices) == {c for c, m in COMMAND_MODULES.items() if m == module}, module


def test_the_command_is_found_after_the_global_options() -> None:
    """Test that the command is the first word after --sandbox/--node and their values; help, version and
    an empty line build every command."""
    assert command_of(["--sandbox", "apply", "status"]) == "status"
    assert command_of(["--node", "velvet-node-1", "--sandbox=x", "bpf", "lb", "list"]) == "bpf"
    assert command_of(["apply", "-f", "x.yaml"]) == "apply"
    assert command_of(["--help"]) is None
    assert command_of(["--version", "status"]) is None
    assert command_of([]) is None
    assert commands(build_parser("status")) == {"ui", "status"}
    assert commands(build_parser("nosuch")) == set(COMMAND_MODULES)


def test_a_simple_command_does_not_import_the_datapath_or_netlink() -> None:
    """Test that `velvet status` loads neither pyroute2, numpy nor the datapath (each call would pay
    their 0.3 s) — only the command it runs."""
    code = ("import sys; from velvet.cli.main import build_parser; build_parser('status'); "
            "print(sorted(m for m in ('pyroute2', 'numpy', 'velvet.datapath.libbpf') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_apply_reads_its_files_without_the_model_or_yaml(tmp_path: Path) -> None:
    """Test that `velvet apply` builds its request without importing PyYAML or the model (the agent
    validates the text; the CLI's start is the most of an apply's time)."""
    manifest = tmp_path / "ns.yaml"
    manifest.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
    code = ("import sys; from velvet.cli.main import build_parser; build_parser('apply'); "
            f"from velvet.cli.objects import read_manifests; docs = read_manifests([{str(manifest)!r}]); "
            "print(len(docs), sorted(m for m in ('yaml', 'velvet.model', 'velvet.model.codec') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1 []"
