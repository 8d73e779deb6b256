"""The embedded default cluster: a node network namespace, pods as namespaces with real processes.

Public API (the private modules' other names may change):
`SandboxConfig`, `SandboxNames`, `Node`, `PodRuntime`, the pod spec/record/status types,
`exec_in_pod`, `run_in_pod`, `run_in_netns`, `spawn_detached`, `Supervisor`, and `cleanup`
(`find_leftovers`, `remove`, `status`).
"""

from velvet.sandbox import cleanup
from velvet.sandbox.naming import PodNames, SandboxConfig, SandboxNames
from velvet.sandbox.node import Node
from velvet.sandbox.pods import PodRuntime, exec_in_pod, run_in_pod
from velvet.sandbox.process import run_in_netns, spawn_detached
from velvet.sandbox.spec import (
    ContainerLite,
    ContainerStatusLite,
    PodRecord,
    PodSpecLite,
    PodStatusLite,
    PortLite,
    ProbeLite,
)
from velvet.sandbox.supervisor import Supervisor

__all__ = [
    "ContainerLite",
    "ContainerStatusLite",
    "Node",
    "PodNames",
    "PodRecord",
    "PodRuntime",
    "PodSpecLite",
    "PodStatusLite",
    "PortLite",
    "ProbeLite",
    "SandboxConfig",
    "SandboxNames",
    "Supervisor",
    "cleanup",
    "exec_in_pod",
    "run_in_netns",
    "run_in_pod",
    "spawn_detached",
]
