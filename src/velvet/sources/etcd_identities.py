"""Cluster-wide label identities in etcd: the same labels get the same number on every node.

Keys under the prefix (`/velvet/identities/`):

- `labels/<k=v;k=v...>` (labels sorted by key) -> the number: one number per label set;
- `id/<number>` -> the labels as JSON: one label set per number;
- `refs/<number>/<node>` -> "" under the node's lease: that node uses the identity.

Allocation is one transaction: create the labels key, the number key and this node's ref if neither
key exists, the number being the lowest this agent does not see taken. The loser of a race on the
label set reads the winner's number and adds its ref in a transaction guarded by the labels key's
create revision (never onto an identity being removed); the loser of a race on the number tries the
next one. Release deletes this node's ref and, in the same transaction, the identity when no other
node refers to it.

Why refs under the node's lease rather than a GC pass over the endpoints: a node that dies or leaves
drops its refs with its lease, and the identity goes as soon as its last user does, with no period
to tune and no agent that must know every endpoint. What a lease cannot do — delete the identity
keys once the last ref expired — every agent does: it follows the prefix (list + watch, relist after
compaction, backoff while etcd is unreachable) and removes an identity left without refs, guarded
by "still no refs" so racing agents are harmless. When the node's lease was lost and granted anew,
`use_lease` attaches every ref this node holds to the new one (recreating an identity that was
removed meanwhile, with its number when still free). An agent that re-used its previous life's lease
finds that life's refs still there: `drop_stale_refs`, after its first full pass, deletes those it
does not hold, and the followers collect identities left without refs.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from velvet.sources.etcd_client import EtcdClient, EtcdError, KeyValue, follow_prefix, prefix_end

IDENTITIES_PREFIX = "/velvet/identities/"
MAX_ATTEMPTS = 64
LEASE_WAIT_SECONDS = 10.0
IDLE_TIMEOUT_SECONDS = 10.0

log = logging.getLogger("velvet.identities")


def label_text(labels: Mapping[str, str]) -> str:
    """The canonical text of a label set: `k=v` sorted by key, joined by `;`."""
    return ";".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _holds(key: str, value: str) -> dict[str, Any]:
    """Compare: `key` exists and holds `value`."""
    return {"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}


def _created(key: str, revision: int) -> dict[str, Any]:
    """Compare: `key` was created at `revision` (0: `key` does not exist)."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def _none_in(start: str, end: str) -> dict[str, Any]:
    """Compare: no key in [start, end)."""
    return {"key": _b64(start), "range_end": _b64(end), "target": "VERSION", "result": "EQUAL",
            "version": "0"}


def _put(key: str, value: str, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def _delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


def _range(key: str) -> dict[str, Any]:
    return {"request_range": {"key": _b64(key)}}


class EtcdIdentities:
    """This node's side of the cluster's identity numbers: allocate, release, follow, collect."""

    def __init__(self, client: EtcdClient, node: str, numbers: range,
                 prefix: str = IDENTITIES_PREFIX) -> None:
        self.client = client
        self.node = node
        self.numbers = numbers
        self.prefix = prefix
        self._lock = threading.Lock()  # allocate / release / use_lease, one at a time
        self._lease = 0
        self._leased = threading.Event()
        self._held: dict[str, tuple[Mapping[str, str], int]] = {}  # label text -> (labels, number)
        self._unreleased: dict[str, tuple[Mapping[str, str], int]] = {}  # releases etcd did not take yet
        self._view_lock = threading.Lock()
        self._ids: dict[int, str] = {}  # what the watch saw: number -> label text
        self._refs: dict[int, set[str]] = {}  # number -> nodes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- keys -------------------------------------------------------------------------------------

    def _labels_key(self, text: str) -> str:
        return f"{self.prefix}labels/{text}"

    def _id_key(self, number: int) -> str:
        return f"{self.prefix}id/{number}"

    def _refs_prefix(self, number: int) -> str:
        return f"{self.prefix}refs/{number}/"

    def _ref_key(self, number: int) -> str:
        return f"{self._refs_prefix(number)}{self.node}"

    def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
             failure: Sequence[dict[str, Any]] = ()) -> tuple[bool, list[dict[str, Any]]]:
        """One etcd transaction; whether it succeeded and its responses."""
        body = {"compare": compare, "success": success, "failure": list(failure)}
        answer = self.client.call("kv/txn", body)
        return bool(answer.get("succeeded")), list(answer.get("responses", []))

    # -- this node's identities ---------------------------------------------------------------------

    def use_lease(self, lease: int) -> None:
        """Attach this node's refs to `lease` (the node's, granted anew after it was lost)."""
        with self._lock:
            self._lease = lease
            self._leased.set()
            for text, (labels, number) in sorted(self._held.items()):
                try:
                    self._reattach(text, labels, number)
                except EtcdError as err:
                    log.warning("identity %d (%s): could not renew this node's reference: %s",
                                number, text, err)

    def allocate(self, labels: Mapping[str, str]) -> int:
        """The cluster's number for `labels` (allocated when new); this node refers to it from now on."""
        if not self._leased.wait(LEASE_WAIT_SECONDS):
            raise EtcdError(f"etcd at {self.client.endpoint}: no node lease to hold identities under yet")
        text = label_text(labels)
        with self._lock:
            self._retry_releases()
            self._unreleased.pop(text, None)
            number = self._allocate(text, labels)
            self._held[text] = (dict(labels), number)
            return number

    def release(self, labels: Mapping[str, str], number: int) -> None:
        """This node no longer uses the identity; etcd drops it with its last ref (retried if unreachable)."""
        text = label_text(labels)
        with self._lock:
            self._held.pop(text, None)
            self._unreleased[text] = (dict(labels), number)
            self._retry_releases()

    def drop_stale_refs(self) -> int:
        """Delete this node's refs to identities it does not hold now; how many there were."""
        refs = f"{self.prefix}refs/"
        with self._lock:
            held = {number for _, number in self._held.values()}
            _, kvs = self.client.range_prefix(refs)
            stale = [kv.key for kv in kvs if (parts := kv.key[len(refs):].partition("/"))[2] == self.node
                     and parts[0].isdigit() and int(parts[0]) not in held]
            for key in stale:
                self._txn([], [_delete(key)])
        if stale:
            log.info("dropped %d references this node's previous agent held", len(stale))
        return len(stale)

    def _allocate(self, text: str, labels: Mapping[str, str]) -> int:
        """Create the identity or refer to the existing one; the loser of a race reads the winner's."""
        labels_key = self._labels_key(text)
        taken: set[int] = set()
        for _ in range(MAX_ATTEMPTS):
            number = self._candidate(taken)
            ok, responses = self._txn(*self._creation(labels_key, labels, number),
                                      [_range(labels_key), _range(self._id_key(number))])
            if ok:
                log.info("identity %d allocated for %s", number, text)
                self._saw(number, text)
                return number
            existing = _found(responses, 0)
            if existing is None:
                taken.add(number)  # another label set won this number
                other = _found(responses, 1)
                if other is not None:
                    self._saw(number, label_text(json.loads(other[0] or "{}")))
                continue
            number = int(existing[0])
            ok, _ = self._txn([_created(labels_key, existing[1])],
                              [_put(self._ref_key(number), "", self._lease)])
            if ok:
                return number
        raise EtcdError(f"etcd at {self.client.endpoint}: no identity for {text} "
                        f"after {MAX_ATTEMPTS} attempts")

    def _creation(self, labels_key: str, labels: Mapping[str, str], number: int) -> tuple[
            list[dict[str, Any]], list[dict[str, Any]]]:
        """Compare and success of creating identity `number` with this node's ref: if both keys are free."""
        id_key = self._id_key(number)
        return ([_created(labels_key, 0), _created(id_key, 0)],
                [_put(labels_key, str(number)), _put(id_key, json.dumps(dict(labels), sort_keys=True)),
                 _put(self._ref_key(number), "", self._lease)])

    def _saw(self, number: int, text: str) -> None:
        """Take a number this node just saw in use into the view, ahead of the watch (the next
        allocation then starts past it instead of retrying every number a burst took)."""
        with self._view_lock:
            self._ids.setdefault(number, text)

    def _candidate(self, taken: set[int]) -> int:
        """The lowest number neither the watch nor this allocation saw taken."""
        with self._view_lock:
            used = self._ids.keys() | taken
        for number in self.numbers:
            if number not in used:
                return number
        raise EtcdError(f"cluster identity space exhausted ({self.numbers.start}..{self.numbers.stop - 1})")

    def _reattach(self, text: str, labels: Mapping[str, str], number: int) -> None:
        """Put this node's ref under the current lease; recreate the identity if it was removed."""
        labels_key = self._labels_key(text)
        for _ in range(MAX_ATTEMPTS):
            ok, responses = self._txn([_holds(labels_key, str(number))],
                                      [_put(self._ref_key(number), "", self._lease)], [_range(labels_key)])
            if ok or _found(responses, 0) is not None:
                break
            ok, responses = self._txn(*self._creation(labels_key, labels, number), [_range(labels_key)])
            if ok or _found(responses, 0) is None:
                break
            # Another node recreated the label set between the two transactions: refer to it if it is ours.
        if ok:
            return
        log.warning("identity %d (%s) was removed while this node's lease was lost and its number or labels "
                    "were taken again; this node keeps %d until its pods change", number, text, number)

    def _retry_releases(self) -> None:
        """Release what etcd did not take yet: drop this node's ref, and the identity if it was the last."""
        for text, (_, number) in list(self._unreleased.items()):
            refs = self._refs_prefix(number)
            own = self._ref_key(number)
            try:
                ok, _ = self._txn(
                    [_none_in(refs, own), _none_in(own + "\0", prefix_end(refs)),
                     _holds(self._labels_key(text), str(number))],
                    [_delete(own), _delete(self._id_key(number)), _delete(self._labels_key(text))],
                    [_delete(own)])
            except EtcdError as err:
                log.warning("identity %d (%s): release postponed: %s", number, text, err)
                return
            del self._unreleased[text]
            if ok:
                log.info("identity %d released (%s)", number, text)

    # -- following the cluster's identities ---------------------------------------------------------

    def start(self) -> None:
        """Start following the prefix (the cluster's numbers, and collecting identities without refs)."""
        self._thread = threading.Thread(target=self._follow, name="velvet-identity-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following."""
        self._stop.set()

    def cluster_view(self) -> dict[int, str]:
        """What the watch saw: every identity of the cluster, number -> label text."""
        with self._view_lock:
            return dict(self._ids)

    def _follow(self) -> None:
        """List, then watch from the next revision; relist after compaction or a lost connection."""
        follow_prefix(self.client, self.prefix, self._stop, what="identities", reset=self._reset,
                      update=self._update, idle_timeout=IDLE_TIMEOUT_SECONDS)

    def _reset(self, kvs: Sequence[KeyValue]) -> None:
        with self._view_lock:
            self._ids, self._refs = {}, {}
        self._update([(kv, False) for kv in kvs], collect_all=True)

    def _update(self, changes: Sequence[tuple[KeyValue, bool]], collect_all: bool = False) -> None:
        """Apply watched changes to the view; collect identities whose last ref went."""
        orphaned: set[int] = set()
        with self._view_lock:
            for kv, deleted in changes:
                kind, _, rest = kv.key[len(self.prefix):].partition("/")
                number_text, _, node = rest.partition("/")
                if not number_text.isdigit():
                    continue
                number = int(number_text)
                if kind == "id":
                    if deleted:
                        self._ids.pop(number, None)
                    else:
                        self._ids[number] = label_text(json.loads(kv.value or b"{}"))
                elif kind == "refs":
                    refs = self._refs.setdefault(number, set())
                    if deleted:
                        refs.discard(node)
                        orphaned.add(number)
                    else:
                        refs.add(node)
            if collect_all:
                orphaned = set(self._ids)
            orphaned = {n for n in orphaned if n in self._ids and not self._refs.get(n)}
            targets = [(n, self._ids[n]) for n in sorted(orphaned)]
        for number, text in targets:
            self._collect(number, text)

    def _collect(self, number: int, text: str) -> None:
        """Remove an identity nobody refers to (guarded: a ref added meanwhile keeps it)."""
        refs = self._refs_prefix(number)
        try:
            ok, _ = self._txn([_none_in(refs, prefix_end(refs)), _holds(self._labels_key(text), str(number))],
                              [_delete(self._id_key(number)), _delete(self._labels_key(text))])
        except EtcdError as err:
            log.warning("identity %d has no references left but could not be removed: %s", number, err)
            return
        if ok:
            log.info("identity %d (%s) removed: no node refers to it", number, text)


def _found(responses: list[dict[str, Any]], index: int) -> tuple[str, int] | None:
    """The key a `request_range` response found, as (value text, create revision), or None."""
    found = responses[index].get("response_range", {}).get("kvs", []) if index < len(responses) else []
    if not found:
        return None
    return base64.b64decode(found[0].get("value", "")).decode(), int(found[0].get("create_revision", 0))
