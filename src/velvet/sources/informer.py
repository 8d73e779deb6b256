"""What controllers read from a source: its current objects, and a stream of their changes.

The local store implements it today; an etcd or Kubernetes API source (list, then watch from a
revision, relist on compaction) plugs in behind the same two calls without touching a controller.
"""

from __future__ import annotations

from typing import Protocol

from velvet.model import EndpointSlice, KubeObject
from velvet.sources.delta import Watch


class ObjectCache(Protocol):
    """The objects of one source, as the controllers see them."""

    def objects(self, kind: str) -> list[KubeObject]:
        """Every object of `kind` (a Kind such as "Pod"), in every namespace."""
        ...

    def find(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        """One object of `kind`, or None ("" is the namespace of cluster-scoped kinds)."""
        ...

    def slices_of(self, namespace: str, service: str) -> list[EndpointSlice]:
        """The EndpointSlices of `namespace` labelled kubernetes.io/service-name=`service`, by name."""
        ...

    def watch(self) -> Watch:
        """Every change from now on, as deltas."""
        ...
