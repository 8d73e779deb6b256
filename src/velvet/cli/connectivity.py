"""`velvet connectivity test`: deploy test pods in the sandbox, run the suite, report, clean up."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from velvet.cli.common import client, print_json, table
from velvet.connectivity import manifests
from velvet.connectivity.checks import CHECKS, Check
from velvet.connectivity.env import Env
from velvet.errors import VelvetError

GLOBAL_AUDIT_SKIP = "skipped: the agent runs in global policy audit mode, so it drops nothing"


@dataclass(frozen=True)
class Outcome:
    """One test's result."""

    check: Check
    result: str  # "pass", "fail" or "skip"
    seconds: float
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The result as `-o json` prints it."""
        return {"name": self.check.name, "description": self.check.description, "result": self.result,
                "seconds": round(self.seconds, 2), "problems": list(self.problems)}


def selected(names: list[str] | None) -> tuple[Check, ...]:
    """The checks `--test` names (all when none); an unknown name is an error listing the known ones."""
    if not names:
        return CHECKS
    by_name = {c.name: c for c in CHECKS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise VelvetError(f"unknown test {', '.join(unknown)}; known: {', '.join(by_name)}")
    return tuple(by_name[n] for n in names)


def run_one(env: Env, check: Check, global_audit: bool) -> Outcome:
    """Run one check, timing it; an error inside it is a failure with the error as its problem."""
    started = time.monotonic()
    if check.enforcing and global_audit:
        return Outcome(check, "skip", 0.0, (GLOBAL_AUDIT_SKIP,))
    try:
        problems = check.run(env)
    except VelvetError as exc:
        problems = [str(exc)]
    return Outcome(check, "fail" if problems else "pass", time.monotonic() - started, tuple(problems))


def _row(outcome: Outcome) -> list[str]:
    return [outcome.check.name, outcome.result.upper() if outcome.result == "fail" else outcome.result,
            f"{outcome.seconds:.1f}s", "; ".join(outcome.problems) or outcome.check.description]


def cmd_test(args: argparse.Namespace) -> int:
    """Deploy, run the selected checks, print the table (or JSON), remove everything it deployed."""
    checks = selected(args.test)
    api = client(args.sandbox)
    status = api.get("/v1/status")
    env = Env(status["agent"]["sandbox"], api)
    global_audit = bool(status["agent"].get("policy_audit_mode"))
    text = args.output != "json"
    started = time.monotonic()
    outcomes: list[Outcome] = []
    deployment = manifests.deployment()
    if text:
        print(f"Deploying test pods in namespaces {manifests.NAMESPACE} and {manifests.AUDIT_NAMESPACE} "
              f"of sandbox {env.cfg.sandbox}...", flush=True)
    try:
        env.apply(deployment)
        env.wait_ready(manifests.PODS)
        env.read_services(manifests.NAMESPACE)
        for check in checks:
            outcome = run_one(env, check, global_audit)
            outcomes.append(outcome)
            if text:
                print(f"  [{outcome.result}] {check.name} ({outcome.seconds:.1f}s)", flush=True)
    finally:
        if text:
            print("Cleaning up the test namespaces...", flush=True)
        env.delete(deployment)
        env.wait_gone((manifests.NAMESPACE, manifests.AUDIT_NAMESPACE))
    counts = {r: sum(o.result == r for o in outcomes) for r in ("pass", "fail", "skip")}
    if text:
        print()
        print(table(["TEST", "RESULT", "TIME", "DETAIL"], [_row(o) for o in outcomes]))
        print(f"\n{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped "
              f"in {time.monotonic() - started:.1f}s")
    else:
        print_json({"sandbox": env.cfg.sandbox, "tests": [o.to_json() for o in outcomes],
                    "passed": counts["pass"], "failed": counts["fail"], "skipped": counts["skip"],
                    "seconds": round(time.monotonic() - started, 2)})
    return 1 if counts["fail"] else 0


def cmd_connectivity_test(args: argparse.Namespace) -> int:
    """`--list` names every test; otherwise run them."""
    if not args.list:
        return cmd_test(args)
    print(table(["TEST", "DESCRIPTION"], [[c.name, c.description] for c in CHECKS]))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `velvet connectivity test`."""
    p = sub.add_parser("connectivity", help="check the sandbox's networking end to end")
    group = p.add_subparsers(dest="connectivity_command", required=True, metavar="ACTION")
    t = group.add_parser("test", help="deploy test pods, run the suite (real traffic + flows), clean up")
    t.add_argument("--test", action="append", metavar="NAME", help="run only this test (repeatable)")
    t.add_argument("--list", action="store_true", help="name the tests and exit")
    t.add_argument("-o", "--output", choices=["json"], default=None)
    t.set_defaults(func=cmd_connectivity_test)
