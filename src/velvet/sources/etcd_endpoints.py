"""The cluster's endpoints in etcd: each agent publishes its pods under its node's lease, all follow.

A key `<prefix><ip>` holds a `ClusterEndpoint` (identity number, node, pod), written by the agent
whose node runs the pod and attached to that node's lease, as Cilium's kvstore ipcache does: when a
node leaves (lease revoked) or dies (lease expired), etcd deletes its endpoints and every other
node's ipcache loses them. `publish` takes the node's complete set after each policy pass and returns
at once; a thread of its own writes only the difference, retrying with backoff while etcd is
unreachable (the state worker never waits for etcd here) and holding back until the node has a
lease. Nothing is written before the first publish (a restarted agent does not know its endpoints
before its first policy pass). The first write of an agent's life lists the
prefix and deletes this node's keys it no longer has (left by its previous life under a lease it
re-used). A delete is guarded by "still this node's record", so a key another node took stays.

A thread follows the prefix (list + watch, relist after compaction, backoff while etcd is
unreachable, keeping the last view) and calls `on_change` after every change it saw.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Mapping, Sequence

from velvet.model.cluster_endpoint import ClusterEndpoint, InvalidClusterEndpoint
from velvet.sources.etcd_client import EtcdClient, EtcdError, KeyValue, follow_prefix
from velvet.sources.publisher import publish_when_asked

ENDPOINTS_PREFIX = "/velvet/endpoints/"
IDLE_TIMEOUT_SECONDS = 10.0

log = logging.getLogger("velvet.endpoints")


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class EtcdEndpoints:
    """This node's endpoints published in etcd, and the view of every node's."""

    def __init__(self, client: EtcdClient, node: str, prefix: str = ENDPOINTS_PREFIX) -> None:
        self.client = client
        self.node = node
        self.prefix = prefix
        self.on_change: Callable[[], None] = lambda: None
        self._lock = threading.Lock()  # guards what the publisher thread is asked to write
        self._lease = 0
        self._desired: dict[str, bytes] | None = None  # None: not known before the first publish
        self._relist = True  # etcd's keys of this node must be listed again (a new life, a new lease)
        self._published: dict[str, bytes] = {}  # what etcd holds of ours (the publisher thread's)
        self._dirty = threading.Event()
        self._view_lock = threading.Lock()
        self._view: dict[str, ClusterEndpoint] = {}
        self._listed = threading.Event()  # the first list is in
        self._stop = threading.Event()

    # -- this node's endpoints ----------------------------------------------------------------------

    def use_lease(self, lease: int) -> None:
        """Publish under `lease` (the node's; granted anew after it was lost, or re-used)."""
        with self._lock:
            if lease != self._lease:
                self._lease, self._relist = lease, True
        self._dirty.set()

    def publish(self, endpoints: Mapping[str, ClusterEndpoint]) -> None:
        """Make this node's published endpoints exactly `endpoints` (ip -> record), soon; never blocks."""
        with self._lock:
            self._desired = {ip: record.encode() for ip, record in endpoints.items()}
        self._dirty.set()

    def _publisher(self) -> None:
        """Write what was asked whenever asked; after a failure try again (0.5 s doubling to 5 s)."""
        publish_when_asked(self._write, self._dirty, self._stop, (EtcdError,),
                           "publishing this node's endpoints")

    def _write(self) -> bool:
        """Bring etcd to the desired set: put what changed under the lease, delete what went (never asks to
        write again: the next change or lease does)."""
        with self._lock:
            lease, wanted, relist = self._lease, self._desired, self._relist
            if not lease or wanted is None:
                return False
            self._relist = False
        try:
            if relist:
                self._published = self._own_keys()
            for ip in sorted(self._published.keys() - wanted.keys()):
                self._delete(ip, self._published[ip])
                del self._published[ip]
            for ip, value in sorted(wanted.items()):
                if self._published.get(ip) != value:
                    self.client.put(self.prefix + ip, value, lease=lease)
                    self._published[ip] = value
        except EtcdError:
            with self._lock:
                self._relist = self._relist or relist
            raise
        return False

    def _own_keys(self) -> dict[str, bytes]:
        """This node's records as etcd holds them now."""
        _, kvs = self.client.range_prefix(self.prefix)
        return {kv.key[len(self.prefix):]: kv.value for kv in kvs
                if (record := self._decode(kv)) is not None and record.node == self.node}

    def _delete(self, ip: str, value: bytes) -> None:
        """Delete this node's key for `ip` if it still holds what this node wrote."""
        key = _b64(self.prefix + ip)
        self.client.call("kv/txn", {
            "compare": [{"key": key, "target": "VALUE", "result": "EQUAL", "value": _b64(value)}],
            "success": [{"request_delete_range": {"key": key}}], "failure": []})

    # -- following every node's endpoints ------------------------------------------------------------

    def start(self) -> None:
        """Start following the prefix and publishing this node's endpoints."""
        for target, name in ((self._follow, "velvet-endpoint-watch"),
                             (self._publisher, "velvet-endpoint-publish")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def close(self) -> None:
        """Stop following and publishing."""
        self._stop.set()
        self._dirty.set()

    def wait_listed(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the first list of the endpoints; whether it is in."""
        return self._listed.wait(timeout)

    def view(self) -> dict[str, ClusterEndpoint] | None:
        """Every endpoint of the cluster as the watch saw it, by IP; None before its first list."""
        with self._view_lock:
            return dict(self._view) if self._listed.is_set() else None

    def _follow(self) -> None:
        follow_prefix(self.client, self.prefix, self._stop, what="endpoints", reset=self._reset,
                      update=self._update, idle_timeout=IDLE_TIMEOUT_SECONDS)

    def _decode(self, kv: KeyValue) -> ClusterEndpoint | None:
        try:
            return ClusterEndpoint.decode(kv.value, kv.key)
        except InvalidClusterEndpoint as err:
            log.warning("%s; left out", err)
            return None

    def _reset(self, kvs: Sequence[KeyValue]) -> None:
        view = {kv.key[len(self.prefix):]: record for kv in kvs if (record := self._decode(kv)) is not None}
        with self._view_lock:
            self._view = view
            self._listed.set()
        self.on_change()

    def _update(self, changes: Sequence[tuple[KeyValue, bool]]) -> None:
        with self._view_lock:
            for kv, deleted in changes:
                ip = kv.key[len(self.prefix):]
                record = None if deleted else self._decode(kv)
                if record is None:
                    self._view.pop(ip, None)
                else:
                    self._view[ip] = record
        self.on_change()
