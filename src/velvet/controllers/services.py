"""Services and EndpointSlices to the load-balancer maps, one changed service at a time."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from velvet.control.services import ServiceCompiler
from velvet.controllers import saved_services
from velvet.datapath.delta import LbDelta, merge_deltas
from velvet.datapath.tables import LbMap, LbState
from velvet.datapath.writer import TableWriter
from velvet.errors import VelvetError
from velvet.model import EndpointSlice, Service
from velvet.observe.enrich import DictResolver, NamedRef
from velvet.sources.delta import Delta
from velvet.sources.informer import ObjectCache

log = logging.getLogger("velvet.controllers.services")
LB_TABLES = tuple(m.value for m in LbMap)
# Add-only changes are written every this many services: the deltas held for the whole pass of a
# 9,000-service apply were ~15 MB at once, and the pymalloc pools they took stayed (issue 14).
HELD_SERVICES = 1024


class ServiceController:
    """Recompiles the services a change touched and writes only their difference."""

    def __init__(self, cache: ObjectCache, compiler: ServiceCompiler, writer: TableWriter,
                 resolver: DictResolver) -> None:
        self.cache = cache
        self.compiler = compiler
        self._writer = writer
        self._resolver = resolver
        self.unsaved = False  # the compiler changed since it was last saved

    @staticmethod
    def touched(delta: Delta) -> str | None:
        """The "namespace/name" of the service a change concerns, if any."""
        obj = delta.obj
        if isinstance(obj, Service):
            return obj.metadata.key
        if isinstance(obj, EndpointSlice) and obj.service_name:
            return f"{obj.metadata.namespace}/{obj.service_name}"
        return None

    def adopt(self, current: LbState, saved: Path | None = None) -> int:
        """Keep the backend ids and rev-NAT indexes of the pinned maps, then write only the difference.

        With `saved` (the file `save` writes) the compiler of the previous life is taken back when it
        still matches the pinned maps, and only the services changed since are compiled again. Returns
        how many services were compiled.
        """
        slices = self._slices_by_service()
        services = {o.metadata.key: o for o in self.cache.objects("Service") if isinstance(o, Service)}
        loaded = saved_services.load(saved, self.compiler, self.cache, current) if saved else None
        if loaded is None:
            self.compiler.restore(current)
            keys = set(services)
        else:
            self.compiler, changed = loaded
            keys = changed | {key for key, obj in services.items()
                              if not self.compiler.compiled_from(key, obj, slices.get(key, ()))}
        ordered = [key for key in services if key in keys] + sorted(keys - services.keys())  # store order:
        for key in ordered:  # of two services wanting one frontend, the older gets it
            self._name(self.compiler.update(services.get(key), slices.get(key, []), key), key)
        for key, index in self.compiler.rev_nat_indexes():
            self._resolver.set_service(index, NamedRef.parse(key))
        self._writer.write_lb(self.compiler.resync(current))
        self._retry()
        self.unsaved = bool(keys) or loaded is None
        return len(keys)

    def save(self, path: Path) -> None:
        """Save the compiler's state for the next life's `adopt` (`StorageError` when it cannot be)."""
        self.unsaved = False  # one that fails is tried again after the next change, not in a loop
        saved_services.save(path, self.compiler)

    def reconcile(self, keys: Iterable[str]) -> set[str]:
        """Recompile the services named by `keys`; the keys that failed, to retry on the next pass.

        Changes that only add or overwrite entries are written together, a few batches for every
        HELD_SERVICES services; a change that deletes anything (an id it frees may be taken by the next
        one) is written on its own, after those before it, so the maps go through the same safe states
        as one by one.
        """
        failed: set[str] = set()
        held: list[tuple[str, LbDelta]] = []  # add-only changes not written yet
        for key in sorted(keys):
            namespace, name = key.split("/", 1)
            service = self.cache.find("Service", namespace, name)
            slices = self.cache.slices_of(namespace, name)  # from the index: a pass costs what it touches
            try:
                delta = self.compiler.update(service if isinstance(service, Service) else None, slices, key)
            except VelvetError:
                log.exception("service %s not programmed; retried on the next change", key)
                failed.add(key)
                continue
            self._name(delta, key)
            if _adds_only(delta):
                held.append((key, delta))
                if len(held) >= HELD_SERVICES:
                    failed |= self._write(held)
                    held = []
                continue
            failed |= self._write(held)
            held = []
            failed |= self._write([(key, delta)])
        failed |= self._write(held)
        self._retry()
        self.unsaved = True
        return failed

    def _write(self, deltas: list[tuple[str, LbDelta]]) -> set[str]:
        """Write `deltas` as one change; the keys it was for when that failed."""
        if not deltas:
            return set()
        try:
            self._writer.write_lb(merge_deltas([delta for _, delta in deltas]))
        except VelvetError:
            keys = ", ".join(key for key, _ in deltas[:5]) + (", ..." if len(deltas) > 5 else "")
            log.exception("service(s) %s not programmed; retried on the next change", keys)
            return {key for key, _ in deltas}
        return set()

    def problems(self) -> dict[str, str]:
        """Services whose last change is not programmed for lack of map room: key -> why."""
        return dict(self.compiler.problems())

    def _retry(self) -> None:
        """Program the services that did not fit before and fit now (room freed by this pass)."""
        for key, delta in self.compiler.retry().items():
            self._name(delta, key)
            self._writer.write_lb(delta)

    def _slices_by_service(self) -> dict[str, list[EndpointSlice]]:
        """Every EndpointSlice by its service's key, in one pass (not one pass per service)."""
        found: dict[str, list[EndpointSlice]] = {}
        for eps in self.cache.objects("EndpointSlice"):
            if isinstance(eps, EndpointSlice) and eps.service_name:
                found.setdefault(f"{eps.metadata.namespace}/{eps.service_name}", []).append(eps)
        return found

    def _name(self, delta: LbDelta, key: str) -> None:
        """Tell flow enrichment which Service the delta's rev-NAT ids stand for, and forget released ones."""
        for unprogrammed, why in delta.unprogrammed:
            log.error("service %s: %s", unprogrammed, why)
        ref = NamedRef.parse(key)
        for front, value in delta.services.upserts.items():
            if not front.backend_slot:
                self._resolver.set_service(value.rev_nat_index, ref)
        for rev_nat_index in delta.revnat.deletes:
            self._resolver.remove_service(rev_nat_index)


def _adds_only(delta: LbDelta) -> bool:
    """Whether a change only writes entries: nothing deleted, no conntrack entry made stale."""
    plans = (delta.services, delta.backends, delta.revnat, delta.src_range, delta.maglev)
    return not delta.stale and not any(p.deletes for p in plans)
