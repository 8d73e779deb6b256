"""`velvet apply | delete | get`: kubectl's verbs against the agent's local store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from velvet.cli.common import client
from velvet.errors import VelvetError
from velvet.manifest_files import MANIFEST_SUFFIXES, read_manifest_file


def read_manifests(paths: list[str]) -> list[dict[str, str]]:
    """Files named by -f (directories expanded, sorted) as {path, text} documents for the agent.

    A file too large (manifest_files.MAX_FILE_BYTES) or not UTF-8 is refused here in one line naming it.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise VelvetError(f"{raw}: no such file or directory")
    return [{"path": str(p), "text": read_manifest_file(p)} for p in found]


def cmd_apply(args: argparse.Namespace) -> int:
    """Apply manifests all-or-nothing; one kubectl-like line per object, then an error per service that
    does not fit in the datapath's maps (exit code 1)."""
    results = client(args.sandbox, args.node).post("/v1/apply", {"documents": read_manifests(args.filename)})
    for warning in results.get("warnings", []):
        print(f"Warning: {warning}", file=sys.stderr)
    for line in results["results"]:
        print(line)
    for service, why in results.get("problems", {}).items():
        print(f"Error: service {service} is stored but {why}; it is programmed as soon as the maps have room",
              file=sys.stderr)
    return 1 if results.get("problems") else 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete the objects the manifests name."""
    body = {"documents": read_manifests(args.filename), "grace_seconds": args.grace_period}
    for line in client(args.sandbox, args.node).post("/v1/delete", body)["results"]:
        print(line)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    """List objects of a kind, printed as kubectl does."""
    from velvet.cli import output  # only `get` prints tables: apply and delete start without it

    namespace = "all" if args.all_namespaces else args.namespace
    api = client(args.sandbox, args.node)
    answer = api.get(f"/v1/objects/{args.kind}", namespace=namespace, name=args.name)
    items = answer["items"]
    if not items and args.output in (None, "wide"):
        shown = None if args.all_namespaces or not answer["namespaced"] else (namespace or "default")
        print(output.no_resources_message(shown), file=sys.stderr)
        return 0
    text = output.render(items, args.output, all_namespaces=args.all_namespaces, single=args.name is not None)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add apply, delete and get."""
    p = sub.add_parser("apply", help="create or update objects from manifests (all-or-nothing)")
    p.add_argument("-f", "--filename", action="append", required=True, help="file or directory")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("delete", help="delete the objects named in manifests")
    p.add_argument("-f", "--filename", action="append", required=True, help="file or directory")
    p.add_argument("--grace-period", type=int, default=None, help="seconds pods get to terminate")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("get", help="list pods, services, endpointslices, networkpolicies, namespaces, nodes")
    p.add_argument("kind")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=["json", "yaml", "wide", "name"], default=None)
    p.set_defaults(func=cmd_get)
