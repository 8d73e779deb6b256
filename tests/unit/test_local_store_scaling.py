"""Test that store operations cost what they touch: counted in lines of the store's code run, not time.

A tracer counts every line executed in `velvet.sources` (a loop body counts once per iteration), so
a loop over all namespaces or over all changes of a transaction shows up as work however fast the
machine is. Doubling the input must about double the work of one big apply, and a small change must
cost the same in a small store and in a large one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from velvet import sources
from velvet.model import KubeObject
from velvet.model.codec import from_dict
from velvet.sources.local import LocalStore, ObjectRef

SOURCES = str(Path(sources.__file__).parent)


def lines_run(action: Callable[[], object]) -> int:
    """How many lines of velvet.sources `action` executes."""
    count = 0

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.startswith(SOURCES) else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        action()
    finally:
        sys.settrace(previous)
    return count


def namespace(name: str) -> KubeObject:
    return from_dict({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def pod(name: str, ns: str = "default", grace: int = 30) -> KubeObject:
    return from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                      "spec": {"containers": [{"name": "c"}], "terminationGracePeriodSeconds": grace}})


def apply_cost(tmp_path: Path, n: int) -> int:
    store = LocalStore.open(tmp_path / f"apply-{n}")
    objects = [namespace(f"ns-{i}") for i in range(n)]
    return lines_run(lambda: store.apply(objects))


def test_applying_namespaces_costs_linear_work(tmp_path: Path) -> None:
    small, large = apply_cost(tmp_path, 500), apply_cost(tmp_path, 1000)
    assert large / small < 2.3, (small, large)  # quadratic work would make it about 4


def test_deleting_namespaces_with_their_pods_costs_linear_work(tmp_path: Path) -> None:
    def cost(n: int) -> int:
        store = LocalStore.open(tmp_path / f"delete-{n}")
        store.apply([namespace(f"ns-{i}") for i in range(n)])
        store.apply([pod("p", f"ns-{i}", grace=0) for i in range(n)])
        refs = [ObjectRef("ns", f"ns-{i}") for i in range(n)]
        work = lines_run(lambda: store.delete(refs))
        assert [ns.metadata.name for ns in store.get("ns")] == ["default", "kube-system"]
        return work

    small, large = cost(300), cost(600)
    assert large / small < 2.3, (small, large)


def test_a_small_change_costs_the_same_in_a_store_of_many_namespaces(tmp_path: Path) -> None:
    def cost(n: int) -> int:
        store = LocalStore.open(tmp_path / f"small-{n}")
        store.apply([namespace(f"ns-{i}") for i in range(n)])
        store.apply([namespace("doomed"), pod("p", "doomed")])
        store.delete([ObjectRef("ns", "doomed")])  # a terminating namespace waiting for its pod
        return lines_run(lambda: store.apply([pod("one")]))

    small, large = cost(200), cost(2000)
    assert large / small < 1.1, (small, large)
