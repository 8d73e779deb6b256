"""The node's tracing policies: compiled on the state worker when objects change, programmed on the event
loop (where the process monitor and the guard live), and what `velvet status` and `velvet policy get` say of
them. Selectors on the hooks a cgroup hook can refuse become the guard's rules (`agent.guard_policy`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from velvet.agent.guard_policy import GuardPlan, compile_guard, guard_binaries
from velvet.control.tracing import CompiledTracing, PodScope, TracingCompiler, TracingPolicy, policy_name
from velvet.controllers.endpoints import EndpointController
from velvet.durable import write_atomic
from velvet.errors import VelvetError
from velvet.model import Pod, VelvetTracingPolicy, VelvetTracingPolicyNamespaced
from velvet.runtime.enforce import Enforcer
from velvet.runtime.monitor import ProcessMonitor
from velvet.sources.source import AgentSource

KINDS = ("VelvetTracingPolicy", "VelvetTracingPolicyNamespaced")
log = logging.getLogger("velvet.agent")


class TracingPolicies:
    """Applied tracing policies → proc.bpf.o's exec policy maps, for this node's pods."""

    def __init__(self, node_name: str, state_file: Path) -> None:
        """For node `node_name`; the compiler's numbers are kept in `state_file` across restarts (the
        kernel's pinned maps keep acting meanwhile, and are only corrected, never cleared)."""
        self.node_name = node_name
        self.state_file = state_file
        self.compiler = TracingCompiler()
        self.compiled: CompiledTracing | None = None  # what the kernel holds
        self._pending: CompiledTracing | None = None
        self._pending_guard: GuardPlan | None = None
        self.guard_plan: GuardPlan | None = None  # what the guard was last given
        self.guard_problem = ""  # why the guard refused the last plan
        self._policies: list[TracingPolicy] = []
        self._saved: Any = None
        try:
            self._saved = json.loads(state_file.read_text())
            self.compiler.restore(self._saved)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("%s: %s; tracing policies are numbered afresh", state_file, exc)

    def names(self) -> dict[int, str]:
        """The policies' names by kernel index, as last numbered (a restarted agent names old events)."""
        return {n: name for name, n in self.compiler.numbers()["policies"].items()}

    def compile(self, store: AgentSource, endpoints: EndpointController) -> None:
        """Compile the store's tracing policies for this node's pods whose cgroup is known (state worker)."""
        policies = [p for kind in KINDS for p in store.objects(kind)
                    if isinstance(p, VelvetTracingPolicy | VelvetTracingPolicyNamespaced)]
        pods: list[PodScope] = []
        for pod in store.objects("Pod"):
            if not isinstance(pod, Pod) or pod.spec.node_name != self.node_name:
                continue
            record = endpoints.get(pod.metadata.key)
            if record is not None and record.cgroup_id:
                pods.append(PodScope(pod.metadata.namespace, pod.metadata.name, pod.metadata.labels,
                                     record.cgroup_id))
        self._policies = policies
        self._pending = self.compiler.compile(policies, pods, guard_binaries(policies))
        self._pending_guard = compile_guard(policies, pods, self._pending)

    def program(self, monitor: ProcessMonitor, guard: Enforcer) -> None:
        """Write what the last compilation changed (event loop); processes get their binary sets again
        when the sets changed, then the guard gets its rules (it writes only the difference)."""
        compiled, self._pending = self._pending, None
        plan, self._pending_guard = self._pending_guard, None
        if compiled is None:
            return
        previous = self.compiled
        monitor.set_policy(compiled.tables, compiled.names, compiled.args)
        if previous is None or previous.binary_sets != compiled.binary_sets:
            monitor.write_binsets(compiled.sets_of)
        self.compiled = compiled
        numbers = self.compiler.numbers()
        if numbers != self._saved:
            write_atomic(self.state_file, json.dumps(numbers).encode())
            self._saved = numbers
        if plan is not None:
            self._program_guard(plan, guard)

    def _program_guard(self, plan: GuardPlan, guard: Enforcer) -> None:
        """Hand the guard its rules when they changed (a node without the guard: status says why)."""
        previous = self.guard_plan
        if previous is not None and (previous.rules, previous.names) == (plan.rules, plan.names) \
                and not self.guard_problem:
            return
        self.guard_plan = plan
        if guard.source is None:
            why = guard.error.split("\n", 1)[0].rstrip(":")
            self.guard_problem = f"cgroup-hook rules not enforced: {why}" if plan.rules else ""
            return
        try:
            guard.set_rules(plan.rules, plan.names)
            self.guard_problem = ""
        except VelvetError as exc:
            self.guard_problem = f"cgroup-hook rules not enforced: {str(exc).split(chr(10), 1)[0]}"
            log.error("tracing policies: %s", self.guard_problem)

    def listing(self) -> list[dict[str, Any]]:
        """Each applied tracing policy: name, kind, hooks, selectors, pods it reaches, whether programmed."""
        compiled = self.compiled
        applied = set(compiled.names.values()) if compiled else set()
        rows = []
        for policy in self._policies:
            name = policy_name(policy)
            everywhere = isinstance(policy, VelvetTracingPolicy) and policy.spec.pod_selector is None
            rows.append({"name": name, "kind": type(policy).__name__,
                         "hooks": [tp.hook for tp in policy.spec.tracepoints],
                         "selectors": sum(len(tp.selectors) or 1 for tp in policy.spec.tracepoints),
                         "scope": "node" if everywhere else f"{self._pods_of(name)} pods",
                         "programmed": name in applied})
        return rows

    def _pods_of(self, name: str) -> int:
        """How many of the node's pods the policy `name` is programmed for."""
        compiled = self.compiled
        if compiled is None:
            return 0
        mask = sum(1 << number for number, rule in compiled.tables.rules.items()
                   if compiled.names.get(rule.policy) == name)
        return sum(1 for rules in compiled.tables.cgroup_rules.values() if rules & mask)

    def status(self) -> dict[str, Any]:
        """For `velvet status`: policies, the hooks in use, the rules and binary sets used, problems."""
        compiled = self.compiled
        hooks = sorted({tp.hook for p in self._policies for tp in p.spec.tracepoints})
        return {"policies": len(self._policies), "names": [policy_name(p) for p in self._policies],
                "hooks": hooks,
                "rules": len(compiled.tables.rules) if compiled else 0,
                "binary_sets": len(compiled.binary_sets) if compiled else 0,
                "guard_rules": len(self.guard_plan.rules) if self.guard_plan else 0,
                "problems": [*(compiled.problems if compiled else []),
                             *(self.guard_plan.problems if self.guard_plan else []),
                             *([self.guard_problem] if self.guard_problem else [])]}
