"""The store's objects in etcd: one key per object, every change one transaction, followed by list + watch.

Keys are `<prefix><Kind>/<namespace>/<name>` (namespace empty for cluster-scoped kinds), values the
object as `kubectl get -o json` prints it. Beside them, `<prefix>_head` is written by every change:
its mod revision is the store's version, and a change commits only if `_head` still has the mod
revision the writer's view was at, so two writers never both win (the loser catches up and
retries, see `LocalStore`). An object's resourceVersion is the etcd revision that last wrote it.

A thread follows etcd: it lists the prefix, then watches from the next revision, and lists again
when etcd answers that the revision was compacted; when etcd is unreachable it retries with
backoff (0.5 s doubling to 5 s) and the store keeps serving what it last saw. What it sees is
queued as `Batch`es that the store applies on its own thread (`LocalStore`'s reads catch up first);
`on_change` tells the agent at once, so that it catches up without waiting for its next read.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from velvet.durable import StorageError
from velvet.model import KubeObject
from velvet.model.codec import from_dict, to_dict
from velvet.sources.backend import Batch, Conflict, Unconfirmed
from velvet.sources.etcd_client import (
    EtcdClient,
    EtcdCompacted,
    EtcdError,
    EtcdIdle,
    EtcdUnavailable,
    Event,
    KeyValue,
    Op,
)
from velvet.sources.index import Key, key_of
from velvet.sources.state_files import Loaded, share_strings

DEFAULT_PREFIX = "/velvet/registry/"
HEAD = "_head"
MIN_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 5.0
OPEN_TIMEOUT_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 1.0

log = logging.getLogger("velvet.store")


class EtcdStorageError(StorageError):
    """etcd did not take a change; the message is the one line the user sees."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)  # no file to name: etcd's own words say what and where
        self.path = ""
        self.errno = 0

    def __str__(self) -> str:
        return str(self.args[0])


def object_key(prefix: str, key: Key) -> str:
    """The etcd key of a store key."""
    kind, namespace, name = key
    return f"{prefix}{kind}/{namespace}/{name}"


def store_key(prefix: str, etcd_key: str) -> Key | None:
    """The store key of an etcd key under `prefix`, or None (the head, or a foreign key)."""
    parts = etcd_key[len(prefix):].split("/")
    return (parts[0], parts[1], parts[2]) if etcd_key.startswith(prefix) and len(parts) == 3 else None


def encode(obj: KubeObject) -> bytes:
    """An object as stored (its resourceVersion is left out: etcd's mod revision is it)."""
    doc = to_dict(obj)
    doc.get("metadata", {}).pop("resourceVersion", None)
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def decode(kv: KeyValue, seen: dict[str, str] | None = None) -> KubeObject | None:
    """The object under `kv`, its mod revision as resourceVersion; None (logged) when it does not decode.

    `seen`: equal strings of the objects decoded with the same table become one object (see
    `share_strings`; a list or a watched change of 9,000 services shares their namespace, selectors,
    port names and the like).
    """
    try:
        doc = orjson.loads(kv.value)
        if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict):
            doc["metadata"]["resourceVersion"] = str(kv.mod_revision)  # read as the stored one is
        if seen is not None and isinstance(doc, dict):
            share_strings(doc, seen)
        return from_dict(doc, path=kv.key, document=1, trusted=True)
    except Exception as err:  # a bad value written by someone else must not stop the agent
        log.warning("etcd key %s: cannot decode the object (%s); left out", kv.key, err)
        return None


@dataclass(frozen=True, slots=True)
class _Watched:
    """A watched event as the follower keeps it until its answer's batch: the store key (None: the head or
    a foreign key), the mod revision, and the object decoded as the event was read (None: a delete, or a
    value that does not decode, which the store then drops as etcd no longer holds it readably)."""

    key: Key | None
    revision: int
    obj: KubeObject | None
    head: bool = False


class EtcdBackend:
    """A `Backend` on etcd under `prefix`; `open()` lists it and starts following it."""

    own_versions = True

    def __init__(self, client: EtcdClient, prefix: str = DEFAULT_PREFIX, *,
                 open_timeout: float = OPEN_TIMEOUT_SECONDS) -> None:
        self.client = client
        self.prefix = prefix
        self.open_timeout = open_timeout
        self._lock = threading.Condition()
        self._queue: list[Batch] = []
        self._queued_version = 0  # store version of the newest batch queued (or listed at open)
        self._revision = 0  # etcd revision the follower has seen up to
        self._own: set[int] = set()  # revisions this backend committed, until the watch passed them
        self._committing = 0  # transactions of this backend etcd has not answered yet
        self._shared: dict[str, str] = {}  # equal strings of the watched answer being read (`share_strings`)
        self._connected = False
        self._error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_change: Callable[[], None] = lambda: None
        """Called from the watch thread when another writer's change was queued (the agent's wake-up)."""

    # -- Backend ---------------------------------------------------------------------------------

    def open(self) -> Loaded | None:
        """List the prefix (waiting up to `open_timeout` for etcd to answer) and start the follower."""
        listed = self._list_until_answered()
        revision, version, objects = listed
        self._revision, self._queued_version = revision, version
        self._thread = threading.Thread(target=self._follow, name="velvet-etcd-watch", daemon=True)
        self._thread.start()
        return Loaded(version, objects) if version else None

    def record(self, since: int, version: int, upserts: Sequence[KubeObject], deletes: Sequence[Key]) -> int:
        """One transaction: the objects and the head, if the head is still at `since`."""
        count = len(upserts) + len(deletes) + 1
        ops = itertools.chain((Op(object_key(self.prefix, key_of(obj)), encode(obj)) for obj in upserts),
                              (Op(object_key(self.prefix, key), None) for key in deletes),
                              (Op(self.prefix + HEAD, b"{}"),))  # each encoded as the request is written
        try:  # a quick question first: a hung etcd would otherwise apply the change once it wakes
            EtcdClient(self.client.endpoint, timeout=PROBE_TIMEOUT_SECONDS).status()
        except EtcdError as err:
            raise EtcdStorageError(f"{err} (nothing was changed)") from err
        with self._lock:
            self._committing += 1
        mine = 0
        try:
            try:
                ok, revision, current = self.client.txn_if_mod(self.prefix + HEAD, since, ops)
            except EtcdUnavailable as err:
                raise Unconfirmed(f"{err} (etcd did not confirm the change: it may still be applied when "
                                  "etcd answers)") from err
            except EtcdError as err:
                if "too many operations" in str(err) or "request is too large" in str(err):
                    raise EtcdStorageError(f"etcd at {self.client.endpoint} refused one transaction of "
                                           f"{count} operations (its --max-txn-ops / --max-request-bytes): "
                                           "apply fewer objects at once (nothing was changed)") from err
                raise EtcdStorageError(f"{err} (nothing was changed)") from err
            if not ok:
                raise Conflict(current)
            mine = revision
        finally:
            with self._lock:
                self._committing -= 1
                if mine:
                    self._own.add(mine)
                self._lock.notify_all()
        return revision

    def committed(self, version: int, snapshot: Callable[[], list[KubeObject]]) -> None:
        """etcd compacts its own history; nothing to do."""

    def compact(self, version: int, objects: Sequence[KubeObject]) -> None:
        """Nothing to rewrite: undecodable values were left out and stay in etcd for inspection."""

    def incoming(self) -> list[Batch]:
        """The batches the follower queued since the last call."""
        with self._lock:
            batches, self._queue = self._queue, []
        return batches

    def wait_for(self, version: int, timeout: float) -> bool:
        """Wait until the follower queued store `version`."""
        with self._lock:
            return self._lock.wait_for(lambda: self._queued_version >= version, timeout)

    def status(self) -> dict[str, Any]:
        """Kind, endpoint, prefix, whether etcd answers now (a 1 s probe), and the last error."""
        try:
            EtcdClient(self.client.endpoint, timeout=1.0).status()
            answers, error = True, ""
        except EtcdError as err:
            answers, error = False, str(err)
        with self._lock:
            return {"kind": "etcd", "endpoint": self.client.endpoint, "prefix": self.prefix,
                    "connected": answers and self._connected, "revision": self._revision,
                    "error": error or self._error}

    def close(self) -> None:
        """Stop the follower (it ends at its next read, within the watch's idle timeout)."""
        self._stop.set()

    # -- following ------------------------------------------------------------------------------

    def _list(self) -> tuple[int, int, list[KubeObject]]:
        """(etcd revision, store version, objects in creation order) as etcd holds them now."""
        revision, kvs = self.client.range_prefix(self.prefix)
        head = next((kv for kv in kvs if kv.key == self.prefix + HEAD), None)
        ordered = sorted((kv for kv in kvs if store_key(self.prefix, kv.key)),
                         key=lambda kv: (kv.create_revision, kv.key))
        seen: dict[str, str] = {}
        objects = [obj for kv in ordered if (obj := decode(kv, seen)) is not None]
        return revision, head.mod_revision if head else 0, objects

    def _list_until_answered(self) -> tuple[int, int, list[KubeObject]]:
        delay = MIN_BACKOFF_SECONDS
        waited = 0.0
        while True:
            try:
                return self._list()
            except EtcdError as err:
                if waited >= self.open_timeout:
                    raise EtcdStorageError(f"{err} (waited {waited:.0f} s)") from err
                log.info("%s; retrying in %.1f s", err, delay)
                self._stop.wait(delay)
                waited += delay
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _follow(self) -> None:
        """Watch from the last revision seen; relist on compaction; back off while etcd is unreachable."""
        delay = MIN_BACKOFF_SECONDS
        relist = False
        while not self._stop.is_set():
            try:
                if relist:
                    revision, version, objects = self._list()
                    self._queue_batch(revision, Batch(version, [(key_of(o), o) for o in objects], reset=True))
                    log.info("etcd: listed %d objects again at revision %d", len(objects), revision)
                    relist = False
                watch = self.client.watch(self.prefix, self._revision + 1, self._read, skip=self._own_object)
                for revision, events in watch:
                    self._set_connected(True, "")
                    delay = MIN_BACKOFF_SECONDS
                    if events:
                        self._queue_batch(revision, self._batch(events))
                    del events  # not held while the watch waits
                    if self._stop.is_set():
                        return
            except EtcdIdle:
                continue  # quiet, or stopped: the next watch request finds out
            except EtcdCompacted as err:
                log.warning("%s: listing everything again", err)
                relist = True
                continue
            except EtcdError as err:
                if self._connected or not self._error:
                    log.warning("%s; retrying with backoff, the datapath keeps its state", err)
                self._set_connected(False, str(err))
            self._stop.wait(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _own_object(self, key: str, revision: int) -> bool:
        """Whether a watched key is an object this backend wrote (not read back); its head is read.

        The watch may bring a change before etcd's answer to the transaction that made it: while one is
        in flight (bounded by the client's timeout) its revision is not known yet, so this waits for it.
        """
        if key == self.prefix + HEAD:
            return False
        with self._lock:
            self._lock.wait_for(lambda: not self._committing)
            return revision in self._own

    def _read(self, event: Event) -> _Watched:
        """A watched event, its object decoded as it is read: the answer's raw values are not all held."""
        if event.kv.key == self.prefix + HEAD:
            return _Watched(None, event.kv.mod_revision, None, head=True)
        key = store_key(self.prefix, event.kv.key)
        deleted = key is None or event.kind == "DELETE"
        return _Watched(key, event.kv.mod_revision, None if deleted else decode(event.kv, self._shared))

    def _batch(self, watched: list[_Watched]) -> Batch:
        """The store's changes in one watched answer (this backend's own objects were left out as they were
        read, `_own_object`: the store applied them when it committed)."""
        self._shared = {}
        version = self._queued_version
        changes: list[tuple[Key, KubeObject | None]] = []
        for event in watched:
            if event.head:
                version = event.revision
            elif event.key is not None:
                changes.append((event.key, event.obj))
        last = watched[-1].revision if watched else None
        if last is not None:
            with self._lock:
                self._own = {r for r in self._own if r > last}
        return Batch(version, changes)

    def _queue_batch(self, revision: int, batch: Batch) -> None:
        with self._lock:
            self._revision = max(self._revision, revision)
            self._queue.append(replace(batch, revision=revision))
            self._queued_version = max(self._queued_version, batch.version)
            self._lock.notify_all()
        self.on_change()

    def _set_connected(self, connected: bool, error: str) -> None:
        with self._lock:
            self._connected, self._error = connected, error
