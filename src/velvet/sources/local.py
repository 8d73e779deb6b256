"""The embedded API server: objects applied with `velvet apply`, persisted under the state directory.

It behaves like the parts of kube-apiserver (plus scheduler, EndpointSlice and namespace controllers)
that a single node needs: all-or-nothing apply with created/configured/unchanged results, ClusterIP
and node-port allocation, graceful pod deletion, namespace deletion, a store-wide resourceVersion, and
a watch that streams every change as a `Delta`. Where the objects are kept is a `Backend`: by
default a snapshot plus a journal of changes (`state_files`), or etcd (`etcd_store`), shared with
other writers; either way a change is saved before it is applied, so one that cannot be saved
changes nothing, and survives an agent restart. A change made while another writer moved the
store on is made again on the new state (up to `CONFLICT_ATTEMPTS` times); what other writers
commit is applied before every read or write (`_catch_up`). Start-up on saved
state never fails on one bad object: it is quarantined and the slices it fed are derived again.
Lookups go through indexes (`index`), and the EndpointSlice controller recomputes only the services
a change may affect (`slice_sync`). Only file I/O; no networking.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from velvet.durable import StorageError
from velvet.errors import InvalidManifest, VelvetError
from velvet.model import (
    NAME_LABEL,
    EndpointSlice,
    KubeObject,
    Namespace,
    ObjectMeta,
    Pod,
    PodCondition,
    PodStatus,
    Service,
)
from velvet.model.codec import KINDS, KindInfo, kind_of, resolve_kind
from velvet.model.service import SERVICE_NAME_LABEL
from velvet.sources.allocation import FieldError, ServiceAllocator
from velvet.sources.backend import Backend, Batch, Conflict, Unconfirmed
from velvet.sources.delta import Delta, DeltaFanout, Watch
from velvet.sources.index import Key, ObjectIndex, key_of
from velvet.sources.slice_sync import sync_slices
from velvet.sources.state_files import FileBackend
from velvet.sources.txn import NAMESPACED_KINDS, Txn, format_time, with_metadata

ALL_NAMESPACES = "all"
INITIAL_NAMESPACES = ("default", "kube-system")
KIND_ORDER = ("Namespace", "Pod", "Service", "EndpointSlice", "NetworkPolicy", "VelvetTracingPolicy",
              "VelvetTracingPolicyNamespaced")
CONFLICT_ATTEMPTS = 3
CONFLICT_WAIT_SECONDS = 5.0
T = TypeVar("T")
LATEST = datetime.max.replace(microsecond=0, tzinfo=UTC)  # deadlines beyond it are clamped to it

log = logging.getLogger("velvet.store")


class StoreError(VelvetError):
    """The store refused a request; `reason` is the API status reason (NotFound, Forbidden, InternalError)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"Error from server ({reason}): {message}")
        self.reason = reason


@dataclass(frozen=True)
class ObjectRef:
    """An object named the way kubectl names it: resource (pods, po, Pod, ...), name and namespace."""

    kind: str
    name: str
    namespace: str = "default"


@dataclass(frozen=True)
class ApplyResult:
    """What apply did to one object, printed like kubectl (`pod/web created`)."""

    kind: str
    namespace: str
    name: str
    action: Literal["created", "configured", "unchanged"]

    def __str__(self) -> str:
        return f"{KINDS[self.kind].qualified}/{self.name} {self.action}"


@dataclass(frozen=True)
class DeleteResult:
    """An object whose deletion started (pods may stay Terminating for their grace period)."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f'{KINDS[self.kind].qualified} "{self.name}" deleted'


def parse_time(text: str) -> datetime:
    """The inverse of format_time."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class LocalStore:
    """The embedded API server; `LocalStore.open(state_dir)` resumes the state saved there."""

    def __init__(self, state_dir: Path, *, service_cidr: str = "10.96.0.0/16",
                 node_port_range: tuple[int, int] = (30000, 32767), node_name: str = "velvet-node",
                 clock: Callable[[], datetime] = _now, backend: Backend | None = None) -> None:
        self._backend: Backend = backend or FileBackend(state_dir)
        self.service_cidr = service_cidr
        self.node_port_range = node_port_range
        self.node_name = node_name
        self.nodes: Callable[[], Sequence[str]] = lambda: (node_name,)
        """The nodes a pod without spec.nodeName may go to (the cluster's registered nodes)."""
        self.registered: Callable[[], frozenset[str] | None] = lambda: None
        """The cluster's registered nodes, None when not known (or one node): the slices derive the
        endpoints of pods on any other node not ready."""
        self._membership: frozenset[str] | None = None  # the registered nodes the slices follow
        self._tally: tuple[Txn, Counter[str]] | None = None  # pods per node in the transaction scheduling
        self._clock = clock
        self._index = ObjectIndex()
        self._version = 0
        self._seen = 0  # the backend revision the index holds everything up to
        self._fanout = DeltaFanout()
        quarantined: list[object] = []
        loaded = self._backend.open()
        if loaded is not None:
            self._version, quarantined = loaded.version, loaded.quarantined
            self._index.load(loaded.objects)
        services = [o for o in self._index.objects.values() if isinstance(o, Service)]
        self._allocator = ServiceAllocator(service_cidr, node_port_range, services)
        if loaded is None:
            self._write(self._create_initial_namespaces)
        elif quarantined:
            self._resync(quarantined)
        elif loaded.rewrite:
            self._compact()  # saved by another Velvet (or edited): written again, read fast from now on

    @classmethod
    def open(cls, state_dir: Path, *, service_cidr: str = "10.96.0.0/16",
             node_port_range: tuple[int, int] = (30000, 32767), node_name: str = "velvet-node",
             clock: Callable[[], datetime] = _now, backend: Backend | None = None) -> LocalStore:
        """Load the saved state (or start, and save, a fresh one) from `backend`, by default files.

        The file backend creates `state_dir` (0700) if needed.
        """
        return cls(state_dir, service_cidr=service_cidr, node_port_range=node_port_range,
                   node_name=node_name, clock=clock, backend=backend)

    @property
    def version(self) -> int:
        """The store-wide resourceVersion: bumped by every change of any object."""
        return self._version

    def refresh(self) -> None:
        """Apply what other writers committed now, publishing it as deltas (the agent's wake-up)."""
        self._catch_up()

    def follow_nodes(self) -> None:
        """Derive again the slices of the services with pods on nodes that left or joined the cluster.

        Every node's agent calls this when its view of the nodes changed; each change is one
        transaction guarded by the store's head revision, so the first writer's slices win and the
        others, once caught up, find nothing left to change.
        """
        now = self.registered()
        if now == self._membership:
            return
        before = self._membership

        def counted(node: str, view: frozenset[str] | None) -> bool:
            return view is None or node in view

        services: dict[str, set[str]] = {}
        for ns, pods in self._index.namespaces_of("Pod"):
            for pod in pods.values():
                node = pod.spec.node_name if isinstance(pod, Pod) else ""
                if node and counted(node, before) != counted(node, now):
                    services.setdefault(ns, set()).update(
                        self._index.services_selecting(ns, pod.metadata.labels))
        if any(services.values()):
            self._write(lambda: self._commit(self._txn(), resync=services))
        self._membership = now

    def storage_status(self) -> dict[str, Any]:
        """Where the objects are kept and whether that storage answers (for `velvet status`)."""
        return {**self._backend.status(), "version": self._version}

    # -- reading ---------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str | None = None, name: str | None = None) -> list[KubeObject]:
        """Objects of `kind` (any kubectl name) in `namespace` (None = "default", "all" = every one)."""
        info = _resolve(kind)
        self._catch_up()
        ns = (namespace or "default") if info.namespaced else ""
        if ns == ALL_NAMESPACES:
            by_namespace = sorted(self._index.namespaces_of(info.kind), key=lambda item: item[0])
            found = [objects[n] for _, objects in by_namespace for n in sorted(objects) if name in (None, n)]
        elif name is not None:
            one = self._index.objects.get((info.kind, ns, name))
            found = [one] if one is not None else []
        else:
            objects = self._index.of_kind(info.kind, ns)
            found = [objects[n] for n in sorted(objects)]
        if name is not None and not found:
            raise StoreError("NotFound", f'{info.plural} "{name}" not found')
        return found

    def objects(self, kind: str) -> list[KubeObject]:
        """Every object of `kind` in every namespace (see `ObjectCache`)."""
        return self.get(kind, ALL_NAMESPACES)

    def find(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        """One object, or None (see `ObjectCache`)."""
        info = _resolve(kind)
        self._catch_up()
        return self._index.objects.get((info.kind, namespace if info.namespaced else "", name))

    def slices_of(self, namespace: str, service: str) -> list[EndpointSlice]:
        """The EndpointSlices of one service by name, from the index (see `ObjectCache`)."""
        self._catch_up()
        slices = self._index.of_kind("EndpointSlice", namespace)
        return [eps for name in sorted(self._index.slices_of(namespace, service))
                if isinstance(eps := slices[name], EndpointSlice)]

    def snapshot(self) -> list[KubeObject]:
        """Every object, namespaces first then by kind, namespace and name (the initial list of a watch)."""
        self._catch_up()
        return sorted(self._index.objects.values(),
                      key=lambda o: (KIND_ORDER.index(type(o).__name__), key_of(o)))

    def watch(self) -> Watch:
        """Stream every change from now on; take `snapshot()` first (no await between) for a full view."""
        return self._fanout.subscribe()

    def close(self) -> None:
        """End every watch and stop following the backend."""
        self._backend.close()
        self._fanout.close()

    # -- writing ---------------------------------------------------------------------------------

    def apply(self, objects: Sequence[KubeObject], *, source: str = "<apply>") -> list[ApplyResult]:
        """Create or update every object, or none: any error raises before anything changes.

        An error about object i is `InvalidManifest(source, i, field, reason)` (1-based), e.g. when its
        namespace does not exist (and is not created earlier in `objects`) or is terminating; a
        change that cannot be saved raises `StoreError`.
        """
        def attempt() -> list[ApplyResult]:
            txn = self._txn()
            allocator = self._allocator.fork()
            results: list[ApplyResult] = []
            for index, obj in enumerate(objects, start=1):
                try:
                    results.append(self._apply_one(txn, allocator, obj))
                except FieldError as err:
                    raise InvalidManifest(source, index, err.field, err.reason) from None
            self._commit(txn)
            return results

        return self._write(attempt)

    def delete(self, targets: Sequence[KubeObject | ObjectRef], grace_seconds: int | None = None, *,
               ignore_not_found: bool = False) -> list[DeleteResult]:
        """Delete objects; pods wait for their grace period, a namespace takes its objects with it.

        Every target is checked first: a missing one raises `StoreError` (NotFound) and nothing is
        deleted, unless `ignore_not_found`. `grace_seconds` None means each pod's own
        terminationGracePeriodSeconds; 0 removes pods at once.
        """
        keys = [self._target_key(t) for t in targets]

        def attempt() -> list[DeleteResult]:
            missing = [k for k in keys if k not in self._index.objects]
            if missing and not ignore_not_found:
                kind, _, name = missing[0]
                raise StoreError("NotFound", f'{KINDS[kind].plural} "{name}" not found')
            txn = self._txn()
            results: list[DeleteResult] = []
            for key in keys:
                obj = txn.get(key)
                if obj is None:
                    continue
                if isinstance(obj, Namespace):
                    self._delete_namespace(txn, obj)
                elif isinstance(obj, Pod):
                    self._delete_pod(txn, obj, grace_seconds)
                else:
                    txn.remove(key)
                results.append(DeleteResult(*key))
            self._commit(txn)
            return results

        return self._write(attempt)

    def update_pod_status(self, namespace: str, name: str, status: PodStatus) -> bool:
        """Record what the node runtime reports about a pod; False when the pod no longer exists."""
        def attempt() -> bool:
            pod = self._index.objects.get(("Pod", namespace, name))
            if not isinstance(pod, Pod):
                return False
            if pod.status != status:
                txn = self._txn()
                txn.put(replace(pod, status=status))
                self._commit(txn)
            return True

        return self._write(attempt)

    def finalize_pod_deletion(self, namespace: str, name: str) -> bool:
        """Remove a terminating pod whose processes the runtime has stopped; False if there is none."""
        def attempt() -> bool:
            pod = self._index.objects.get(("Pod", namespace, name))
            if not isinstance(pod, Pod) or not pod.terminating:
                return False
            txn = self._txn()
            txn.remove(key_of(pod))
            self._commit(txn)
            return True

        return self._write(attempt)

    def expire_terminating(self, now: datetime | None = None) -> list[Pod]:
        """Remove the terminating pods whose grace period ended by `now`; returns them."""
        moment = now or self._clock()

        def attempt() -> list[Pod]:
            terminating = sorted(self._index.terminating, key=self._index.position)
            expired = [o for k in terminating if isinstance(o := self._index.objects[k], Pod) and
                       o.metadata.deletion_timestamp and parse_time(o.metadata.deletion_timestamp) <= moment]
            if expired:
                txn = self._txn()
                for pod in expired:
                    txn.remove(key_of(pod))
                self._commit(txn)
            return expired

        return self._write(attempt)

    # -- internals -------------------------------------------------------------------------------

    def _create_initial_namespaces(self) -> None:
        if self._version:
            return  # another writer created the store meanwhile
        txn = self._txn()
        for name in INITIAL_NAMESPACES:
            txn.create(Namespace(ObjectMeta(name=name, labels=MappingProxyType({NAME_LABEL: name}))))
        self._commit(txn)

    def _write(self, attempt: Callable[[], T]) -> T:
        """Run `attempt` on the current state; when another writer won meanwhile, catch up and rerun it."""
        for _ in range(CONFLICT_ATTEMPTS):
            self._catch_up()
            try:
                return attempt()
            except Conflict as conflict:
                current = conflict.current
            if not self._backend.wait_for(current, CONFLICT_WAIT_SECONDS):
                break
        raise StoreError("Conflict", "the store kept changing under this request (other writers); "
                         "nothing was changed, try again")

    def _catch_up(self) -> None:
        """Apply what other writers committed (queued by the backend), publishing it as deltas."""
        for batch in self._backend.incoming():
            if batch.revision <= self._seen:
                continue  # this store's own change, or older than what it listed
            self._apply_batch(batch)

    def _apply_batch(self, batch: Batch) -> None:
        changes = dict(batch.changes)
        if batch.reset:
            changes = {**{key: None for key in self._index.objects}, **changes}
        deltas: list[Delta] = []
        for key, obj in changes.items():
            old = self._index.objects.get(key)
            if old is None and obj is None or old == obj:
                continue
            self._index.put(key, obj)
            if key[0] == "Service":
                self._allocator.follow(old if isinstance(old, Service) else None,
                                       obj if isinstance(obj, Service) else None)
            if obj is not None:
                deltas.append(Delta(key[0], "upsert", obj))
            elif old is not None:
                deltas.append(Delta(key[0], "delete", _stamped(old, batch.version)))
        self._version, self._seen = max(self._version, batch.version), batch.revision
        self._fanout.publish(deltas)

    def _txn(self) -> Txn:
        return Txn(self._index, self._version, self._clock(), self.registered())

    def _apply_one(self, txn: Txn, allocator: ServiceAllocator, obj: KubeObject) -> ApplyResult:
        info, key = kind_of(obj), key_of(obj)
        if info.namespaced:
            _check_namespace(txn, obj.metadata.namespace)
        existing = txn.get(key)
        prepared = self._prepare(obj, existing, allocator, txn)
        result = ApplyResult(info.kind, key[1], key[2], "created")
        if existing is None:
            txn.create(prepared)
            return result
        old = existing.metadata
        candidate = replace(prepared, metadata=replace(
            prepared.metadata, uid=old.uid, creation_timestamp=old.creation_timestamp,
            deletion_timestamp=old.deletion_timestamp, resource_version=old.resource_version))
        if candidate == existing:
            return replace(result, action="unchanged")
        txn.put(candidate)
        return replace(result, action="configured")

    def _prepare(self, obj: KubeObject, existing: KubeObject | None,
                 allocator: ServiceAllocator, txn: Txn) -> KubeObject:
        if isinstance(obj, Namespace):
            phase = existing.phase if isinstance(existing, Namespace) else "Active"
            labels = MappingProxyType({**obj.metadata.labels, NAME_LABEL: obj.metadata.name})
            return replace(obj, metadata=replace(obj.metadata, labels=labels), phase=phase)
        if isinstance(obj, Pod):
            return self._prepare_pod(obj, existing if isinstance(existing, Pod) else None, txn)
        if isinstance(obj, Service):
            return allocator.prepare(obj, existing if isinstance(existing, Service) else None)
        return obj

    def _prepare_pod(self, pod: Pod, existing: Pod | None, txn: Txn) -> Pod:
        if existing is None:
            spec = replace(pod.spec, node_name=pod.spec.node_name or self._schedule(txn))
            status = PodStatus(phase="Pending", conditions=(PodCondition("PodScheduled", "True"),))
            return replace(pod, spec=spec, status=status)
        spec = replace(pod.spec, node_name=pod.spec.node_name or existing.spec.node_name)
        if spec != existing.spec:
            raise FieldError("spec", "Forbidden: pod updates may not change fields other than "
                                  "metadata.labels and metadata.annotations (delete and re-create the pod)")
        return replace(pod, spec=spec, status=existing.status)

    def _schedule(self, txn: Txn) -> str:
        """The node with the fewest pods (as of `txn`) for a pod without spec.nodeName; ties by name."""
        nodes = sorted(self.nodes())
        if len(nodes) <= 1:
            return nodes[0] if nodes else self.node_name
        if self._tally is None or self._tally[0] is not txn:
            pods = {("Pod", ns, name): obj for ns, objects in self._index.namespaces_of("Pod")
                    for name, obj in objects.items()}
            pods.update((key, obj) for key, obj in txn.changes.items() if key[0] == "Pod" and obj is not None)
            self._tally = (txn, Counter(p.spec.node_name for p in pods.values() if isinstance(p, Pod)))
        counts = self._tally[1]
        chosen = min(nodes, key=lambda node: counts[node])
        counts[chosen] += 1
        return chosen

    def _delete_pod(self, txn: Txn, pod: Pod, grace_seconds: int | None) -> None:
        grace = pod.spec.termination_grace_period_seconds if grace_seconds is None else grace_seconds
        if grace <= 0 or pod.status.phase in ("Succeeded", "Failed"):
            txn.remove(key_of(pod))
            return
        deadline = _deadline(txn.now, grace)
        current = pod.metadata.deletion_timestamp
        if current is not None and parse_time(current) <= deadline:
            return
        txn.put(replace(pod, metadata=replace(pod.metadata, deletion_timestamp=format_time(deadline))))

    def _delete_namespace(self, txn: Txn, ns: Namespace) -> None:
        name = ns.metadata.name
        if name in INITIAL_NAMESPACES:
            raise StoreError("Forbidden",
                             f'namespaces "{name}" is forbidden: this namespace may not be deleted')
        contents = [obj for kind in NAMESPACED_KINDS for obj in txn.of_kind(kind, name)]
        for obj in sorted(contents, key=lambda o: txn.position(key_of(o))):
            if isinstance(obj, Pod):
                self._delete_pod(txn, obj, None)
            else:
                txn.remove(key_of(obj))
        if ns.phase != "Terminating":
            txn.put(replace(ns, phase="Terminating",
                            metadata=replace(ns.metadata, deletion_timestamp=format_time(txn.now))))

    def _commit(self, txn: Txn, resync: Mapping[str, set[str]] | None = None) -> None:
        """Finish the transaction (slices, emptied namespaces); journal, index and publish it; compact.

        Nothing changes unless the journal write succeeds; when it fails, `StoreError` says why.
        `resync` names services whose slices are recomputed even though nothing of theirs changed.
        """
        sync_slices(txn, resync)
        _finish_namespaces(txn)
        if not txn.deltas:
            return
        changes = [(key, old, obj) for key, obj in txn.changes.items()
                   if (old := self._index.objects.get(key)) is not None or obj is not None]
        try:
            version = self._backend.record(self._version, txn.version,
                                           [obj for _, _, obj in changes if obj is not None],
                                           [key for key, _, obj in changes if obj is None])
        except Unconfirmed as err:
            raise StoreError("InternalError", str(err)) from err
        except StorageError as err:
            text = str(err)
            raise StoreError("InternalError", text if "nothing was changed" in text
                             else f"{text} (nothing was changed)") from err
        # a backend numbering versions itself (etcd: the revision) stamps every object of the change, even
        # when its number happens to equal the store's count (other keys moved etcd's revision on)
        if self._backend.own_versions:
            stamped = {id(obj): _stamped(obj, version) for _, _, obj in changes if obj is not None}
            changes = [(key, old, None if obj is None else stamped[id(obj)]) for key, old, obj in changes]
            txn.deltas = [replace(d, obj=stamped.get(id(d.obj)) or _stamped(d.obj, version))
                          for d in txn.deltas]
        for key, old, obj in changes:
            self._index.put(key, obj)
            if key[0] == "Service":
                self._allocator.follow(old if isinstance(old, Service) else None,
                                       obj if isinstance(obj, Service) else None)
        self._version = version
        self._seen = max(self._seen, version)
        self._fanout.publish(txn.deltas)
        self._backend.committed(version, self.snapshot)

    def _compact(self) -> None:
        """Rewrite the saved state from the index (documents set aside at load are left out)."""
        self._backend.compact(self._version, self.snapshot())

    def _resync(self, quarantined: Sequence[object]) -> None:
        """Derive again the slices the quarantined documents fed, then compact them out of the files."""
        try:
            self._commit(self._txn(), resync=self._fed_by(quarantined))
        except StoreError as err:
            log.warning("%s; the slices are derived again on the next change of their services", err)
        self._compact()

    def _fed_by(self, documents: Sequence[object]) -> dict[str, set[str]]:
        """Services, by namespace, whose slices may have depended on the (quarantined) raw documents."""
        services: dict[str, set[str]] = {}
        for doc in documents:
            meta = doc.get("metadata") if isinstance(doc, dict) else None
            if not isinstance(doc, dict) or not isinstance(meta, dict):
                continue
            ns, name, labels = meta.get("namespace"), meta.get("name"), _str_labels(meta.get("labels"))
            if not isinstance(ns, str) or not isinstance(name, str):
                continue
            found = services.setdefault(ns, set())
            if doc.get("kind") == "Service":
                found.add(name)
            elif doc.get("kind") == "EndpointSlice" and SERVICE_NAME_LABEL in labels:
                found.add(labels[SERVICE_NAME_LABEL])
            elif doc.get("kind") == "Pod":
                found.update(self._index.services_selecting(ns, labels))
        return services

    def _target_key(self, target: KubeObject | ObjectRef) -> Key:
        if not isinstance(target, ObjectRef):
            return key_of(target)
        info = _resolve(target.kind)
        return (info.kind, target.namespace if info.namespaced else "", target.name)


def _stamped(obj: KubeObject, version: int) -> KubeObject:
    """`obj` with resourceVersion `version`."""
    return with_metadata(obj, resource_version=version)


def _resolve(kind: str) -> KindInfo:
    try:
        return resolve_kind(kind)
    except KeyError as err:
        raise StoreError("NotFound", str(err.args[0])) from None


def _check_namespace(txn: Txn, name: str) -> None:
    ns = txn.get(("Namespace", "", name))
    if not isinstance(ns, Namespace):
        raise FieldError("metadata.namespace", f'namespaces "{name}" not found')
    if ns.phase == "Terminating":
        raise FieldError("metadata.namespace", f"unable to create new content in namespace {name} "
                         "because it is being terminated")


def _str_labels(raw: object) -> dict[str, str]:
    """The string-valued pairs of a raw labels map (none when it is not one)."""
    return {str(k): v for k, v in raw.items() if isinstance(v, str)} if isinstance(raw, dict) else {}


def _deadline(now: datetime, seconds: int) -> datetime:
    """`now` plus `seconds`, clamped to the latest representable time (a grace period may be any int64)."""
    try:
        return min(now + timedelta(seconds=seconds), LATEST)
    except OverflowError:
        return LATEST


def _finish_namespaces(txn: Txn) -> None:
    """Remove terminating namespaces that have no objects left (only those terminating or just changed)."""
    names = txn.base.terminating_namespaces.union(txn.changed("Namespace", ""))
    for name in sorted(names, key=lambda n: txn.position(("Namespace", "", n))):
        ns = txn.get(("Namespace", "", name))
        if isinstance(ns, Namespace) and ns.phase == "Terminating" and txn.is_empty(name):
            txn.remove(key_of(ns))

