"""The local store's committed objects, indexed so a change costs what it touches, not the store's size.

Objects by key and by kind and namespace; pods by label; services with a selector by one pair of
it (a pod's labels find every service that may select it); EndpointSlices by the service named in
their kubernetes.io/service-name label; terminating pods and namespaces; and each object's position
in creation order (updates keep it), the order the store walks objects in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from velvet.model import EndpointSlice, KubeObject, Namespace, Pod, Service
from velvet.model.service import SERVICE_NAME_LABEL

Key = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name
LabelKey = tuple[str, str, str]  # namespace, label key, label value


def key_of(obj: KubeObject) -> Key:
    """The store key of an object."""
    return (type(obj).__name__, obj.metadata.namespace, obj.metadata.name)


def selector_anchor(selector: Mapping[str, str]) -> tuple[str, str]:
    """The selector pair a service is indexed under (any pair works: a match has them all)."""
    return min(selector.items())


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Equality-based selector match."""
    return all(labels.get(k) == v for k, v in selector.items())


class ObjectIndex:
    """Committed objects and their lookups; `put(key, obj | None)` is the only way to change them."""

    def __init__(self) -> None:
        self.objects: dict[Key, KubeObject] = {}
        self.terminating: set[Key] = set()  # pods with a deletionTimestamp
        self.terminating_namespaces: set[str] = set()  # names of namespaces in phase Terminating
        self._by_kind: dict[str, dict[str, dict[str, KubeObject]]] = {}  # kind -> namespace -> name -> obj
        self._pods: dict[LabelKey, set[str]] = {}
        self._services: dict[LabelKey, set[str]] = {}
        # (namespace, service-name label) -> slice names: a service's one slice is kept as its name alone
        self._slices: dict[tuple[str, str], str | set[str]] = {}
        self._order: dict[Key, int] = {}
        self._next = 0

    @property
    def next_position(self) -> int:
        """The creation position the next new object will get."""
        return self._next

    def position(self, key: Key) -> int:
        """Creation position of a committed object."""
        return self._order[key]

    def of_kind(self, kind: str, namespace: str) -> Mapping[str, KubeObject]:
        """Objects of `kind` in `namespace` ("" for cluster-scoped kinds) by name, in creation order."""
        return self._by_kind.get(kind, {}).get(namespace, {})

    def namespaces_of(self, kind: str) -> Iterator[tuple[str, Mapping[str, KubeObject]]]:
        """(namespace, objects by name) for every namespace holding objects of `kind`."""
        yield from self._by_kind.get(kind, {}).items()

    def pods_labelled(self, namespace: str, key: str, value: str) -> set[str]:
        """Names of the pods of `namespace` with label key=value."""
        return self._pods.get((namespace, key, value), set())

    def services_selecting(self, namespace: str, labels: Mapping[str, str]) -> set[str]:
        """Names of the services of `namespace` whose non-empty selector matches `labels`."""
        found: set[str] = set()
        services = self.of_kind("Service", namespace)
        for pair in labels.items():
            for name in self._services.get((namespace, *pair), ()):
                svc = services[name]
                if isinstance(svc, Service) and svc.spec.selector and selects(svc.spec.selector, labels):
                    found.add(name)
        return found

    def slices_of(self, namespace: str, service: str) -> set[str]:
        """Names of the EndpointSlices of `namespace` labelled with service name `service`."""
        names = self._slices.get((namespace, service), ())
        return {names} if isinstance(names, str) else set(names)

    def put(self, key: Key, obj: KubeObject | None) -> None:
        """Store `obj` under `key` (None removes it), keeping every lookup in step."""
        kind, ns, name = key
        old = self.objects.get(key)
        if old is not None:
            self._unindex(key, old)
        if obj is None:
            if old is not None:
                del self.objects[key], self._order[key]
                names = self._by_kind[kind][ns]
                del names[name]
                if not names:
                    del self._by_kind[kind][ns]
            return
        self.objects[key] = obj  # an update keeps its place: the dicts stay in creation order
        self._by_kind.setdefault(kind, {}).setdefault(ns, {})[name] = obj
        if key not in self._order:
            self._order[key] = self._next
            self._next += 1
        self._index(key, obj)

    def load(self, objects: Iterable[KubeObject]) -> None:
        """Add objects in creation order."""
        for obj in objects:
            self.put(key_of(obj), obj)

    def _index(self, key: Key, obj: KubeObject) -> None:
        ns, name = key[1], key[2]
        for label_key in self._label_keys(obj):
            self._labels_of(obj).setdefault(label_key, set()).add(name)
        if isinstance(obj, EndpointSlice):
            service = (ns, obj.metadata.labels.get(SERVICE_NAME_LABEL, ""))
            names = self._slices.setdefault(service, name)
            if isinstance(names, str):
                if names != name:
                    self._slices[service] = {names, name}
            else:
                names.add(name)
        if isinstance(obj, Pod) and obj.metadata.deletion_timestamp:
            self.terminating.add(key)
        if isinstance(obj, Namespace) and obj.phase == "Terminating":
            self.terminating_namespaces.add(name)

    def _unindex(self, key: Key, obj: KubeObject) -> None:
        ns, name = key[1], key[2]
        for label_key in self._label_keys(obj):
            _discard(self._labels_of(obj), label_key, name)
        if isinstance(obj, EndpointSlice):
            service = (ns, obj.metadata.labels.get(SERVICE_NAME_LABEL, ""))
            names = self._slices.get(service)
            if names == name:
                del self._slices[service]
            elif isinstance(names, set):
                names.discard(name)
                if len(names) == 1:
                    self._slices[service] = names.pop()
        self.terminating.discard(key)
        if isinstance(obj, Namespace):
            self.terminating_namespaces.discard(name)

    def _labels_of(self, obj: KubeObject) -> dict[LabelKey, set[str]]:
        return self._pods if isinstance(obj, Pod) else self._services

    @staticmethod
    def _label_keys(obj: KubeObject) -> list[LabelKey]:
        ns = obj.metadata.namespace
        if isinstance(obj, Pod):
            return [(ns, k, v) for k, v in obj.metadata.labels.items()]
        if isinstance(obj, Service) and obj.spec.selector:
            return [(ns, *selector_anchor(obj.spec.selector))]
        return []


def _discard(table: dict[Any, set[str]], key: object, name: str) -> None:
    """Drop `name` from the set at `key`, and the set once empty."""
    bucket = table.get(key)
    if bucket is not None:
        bucket.discard(name)
        if not bucket:
            del table[key]
