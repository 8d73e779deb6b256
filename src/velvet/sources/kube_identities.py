"""Cluster-wide label identities as VelvetIdentity objects, as Cilium's CRD mode keeps CiliumIdentities.

A `VelvetIdentity` (velvet.io/v1alpha1, cluster-scoped) is named by its number in decimal and carries
the label set in `securityLabels`. Every agent follows them (an informer of the Kubernetes source).
`allocate` answers from that view when the labels have a number (the lowest, should a race have made
two); otherwise it creates the lowest number it does not see taken. The API server resolves races:
a create that finds the name taken (409 AlreadyExists) reads the winner's (get); same labels, that
number is ours; other labels, the next number is tried.

Unused identities are garbage-collected as Cilium's operator does, by every agent: an identity no
VelvetEndpoint refers to and that this agent does not hold, seen so for `GC_GRACE_SECONDS` (a new
identity's first endpoint has time to be published), is deleted; a delete racing another agent's
finds it gone (404), which is fine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from velvet.sources.kube_client import VELVET_IDENTITIES, Conflict, KubeCalls, KubeError, Missing

log = logging.getLogger("velvet.identities")
GC_GRACE_SECONDS = 60.0
MAX_ATTEMPTS = 64


def identity_object(number: int, labels: Mapping[str, str]) -> dict[str, Any]:
    """The VelvetIdentity of `number` with `labels`."""
    return {"apiVersion": VELVET_IDENTITIES.api_version, "kind": VELVET_IDENTITIES.kind,
            "metadata": {"name": str(number)}, "securityLabels": dict(labels)}


def parse_identity(raw: Mapping[str, Any]) -> tuple[int, dict[str, str]] | None:
    """(number, labels) of a VelvetIdentity; None when it is not one Velvet could have written."""
    name = str((raw.get("metadata") or {}).get("name") or "")
    labels = raw.get("securityLabels")
    if not name.isdigit() or not isinstance(labels, dict):
        return None
    return int(name), {str(k): str(v) for k, v in labels.items()}


class KubeIdentities:
    """The `ClusterNumbers` of `control.identity` over VelvetIdentity objects."""

    def __init__(self, calls: KubeCalls, numbers: range, view: Callable[[], Mapping[str, Any]],
                 endpoints: Callable[[], Mapping[str, Any]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`view()` is every VelvetIdentity (raw, by name) and `endpoints()` every VelvetEndpoint, as the
        source's informers have them."""
        self.calls = calls
        self.numbers = numbers
        self._view = view
        self._endpoints = endpoints
        self._clock = clock
        self.held: dict[int, dict[str, str]] = {}  # numbers this agent uses
        self._unused_since: dict[int, float] = {}

    def known(self) -> dict[int, dict[str, str]]:
        """Every identity of the cluster: number -> labels."""
        found = {}
        for raw in self._view().values():
            parsed = parse_identity(raw)
            if parsed is not None:
                found[parsed[0]] = parsed[1]
        return found

    def allocate(self, labels: Mapping[str, str]) -> int:
        """The cluster's number for `labels`, created when none exists; this agent now holds it."""
        wanted = dict(labels)
        known = self.known()
        taken = set(known) | set(self.held)
        same = sorted(n for n, have in {**known, **self.held}.items() if have == wanted)
        number = same[0] if same else None
        attempts = 0
        while number is None:
            attempts += 1
            candidate = next((n for n in self.numbers if n not in taken), None)
            if candidate is None or attempts > MAX_ATTEMPTS:
                raise KubeError(f"no identity number left for {wanted} in {self.numbers}")
            try:
                self.calls.create(VELVET_IDENTITIES, identity_object(candidate, wanted))
                number = candidate
            except Conflict:  # another agent created that name first: whose labels?
                try:
                    winner = parse_identity(self.calls.get(VELVET_IDENTITIES, "", str(candidate)))
                except Missing:  # deleted meanwhile: try the same number again
                    continue
                if winner is not None and winner[1] == wanted:
                    number = candidate
                else:
                    taken.add(candidate)
        self.held[number] = wanted
        self._unused_since.pop(number, None)
        return number

    def release(self, labels: Mapping[str, str], number: int) -> None:
        """This agent no longer uses `number`; the garbage collection frees it once no endpoint does."""
        self.held.pop(number, None)

    def collect(self) -> list[int]:
        """Delete the identities no endpoint refers to and nobody here holds, unused for the grace; the
        numbers deleted."""
        now = self._clock()
        self._recreate_held()
        used = {int(spec.get("identity", 0)) for raw in self._endpoints().values()
                if isinstance(spec := raw.get("spec"), dict) and str(spec.get("identity", "")).isdigit()}
        deleted = []
        for number in sorted(self.known()):
            if number in used or number in self.held:
                self._unused_since.pop(number, None)
                continue
            since = self._unused_since.setdefault(number, now)
            if now - since < GC_GRACE_SECONDS:
                continue
            try:
                self.calls.delete(VELVET_IDENTITIES, "", str(number))
            except Missing:
                pass
            except KubeError as err:
                log.warning("collecting unused identity %d: %s; trying again later", number, err)
                continue
            self._unused_since.pop(number, None)
            deleted.append(number)
        return deleted

    def _recreate_held(self) -> None:
        """Create again an identity this agent holds that is gone (collected while its pods had no IP)."""
        known = self.known()
        for number, labels in self.held.items():
            if number in known:
                continue
            try:
                self.calls.create(VELVET_IDENTITIES, identity_object(number, labels))
            except Conflict:
                pass  # recreated meanwhile (by another holder of the same labels, or taken: logged below)
            except KubeError as err:
                log.warning("recreating identity %d: %s; trying again later", number, err)

    def start(self) -> None:
        """Nothing to start: the source's informer follows the identities."""

    def close(self) -> None:
        """Close the client's connections."""
        self.calls.close()

    def drop_stale_refs(self) -> int:
        """Nothing to drop: references are the VelvetEndpoints, which the endpoints publisher keeps."""
        return 0
