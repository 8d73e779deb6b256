"""The cluster's nodes in etcd: each agent registers its own under a lease and follows everyone's.

A node is the key `<prefix><name>` holding a `NodeRecord`, attached to a lease of `ttl` seconds that
its agent renews every ttl/3 (`lease/keepalive`): a node whose agent dies disappears when the lease
expires, and one that stops cleanly revokes it. When the lease was lost (etcd unreachable longer than
the TTL) the agent registers again with a new one, retrying every second at most while etcd is away.
The lease id is kept in `lease_file`: an agent restarted within the TTL (kill -9, then its supervisor)
renews its previous life's lease instead of granting one, so the node, its endpoints and identity refs
never leave the cluster meanwhile. A start takes seconds before the registry runs (imports, the BPF
objects, the store), longer than the lease's rest on a busy node: `PredecessorLease` renews the saved
lease from the new agent's first moment until its registry takes it over. A node whose key went stays in
the view for `grace` seconds (2 s) and leaves only if it did not register again meanwhile: when etcd
comes back from such an outage it expires every lease at once and every agent registers again within
about a second, which must not flap the routes, ipcache and backends of the whole cluster.

A second thread follows the prefix as the object store does: list, watch from the next revision,
list again after a compaction, back off (0.5 s doubling to 5 s) while etcd is unreachable, keeping
the last view. `on_change` is called after every change it saw (the agent's wake-up).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from velvet.durable import StorageError, write_atomic
from velvet.model.node import InvalidNode, NodeRecord
from velvet.sources.etcd_client import EtcdClient, EtcdError, KeyValue, follow_prefix

NODES_PREFIX = "/velvet/nodes/"
LEASE_TTL_SECONDS = 5
MIN_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 5.0
REGISTER_MAX_BACKOFF_SECONDS = 1.0
LEAVE_GRACE_SECONDS = 2.0
NODE_LEASE_FILE = "node-lease"  # in the agent's state directory

log = logging.getLogger("velvet.nodes")


class PredecessorLease:
    """The lease a killed predecessor saved in `lease_file`, renewed every ttl/3 on a thread of its own
    until `stop` (or until etcd no longer has it): the node and the endpoints attached to it stay in the
    cluster while this agent starts, however long that takes. Renewing it twice, here and by the
    registry, is harmless."""

    def __init__(self, client: EtcdClient, lease_file: Path, ttl: int = LEASE_TTL_SECONDS) -> None:
        self.client = client
        self.lease_file = lease_file
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="velvet-predecessor-lease", daemon=True)

    def start(self) -> None:
        """Begin renewing (nothing to renew when no lease id was saved)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing: the registry has the lease now (or the start failed)."""
        self._stop.set()

    def _keep(self) -> None:
        lease, renewed = saved_lease(self.lease_file), False
        while lease and not self._stop.is_set():
            try:
                if self.client.keepalive(lease) == 0:
                    log.info("the previous agent's lease %x had already expired", lease)
                    return
                if not renewed:
                    log.info("renewing the previous agent's lease %x while the agent starts", lease)
                    renewed = True
                self._stop.wait(self.ttl / 3)
            except EtcdError as err:
                log.warning("renewing the previous agent's lease %x: %s; retrying", lease, err)
                self._stop.wait(MIN_BACKOFF_SECONDS)


def saved_lease(lease_file: Path | None) -> int:
    """The lease id a previous agent of this node kept in `lease_file`, or 0."""
    if lease_file is None:
        return 0
    try:
        return int(lease_file.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


class NodeRegistry:
    """This agent's node registration and the view of every registered node."""

    def __init__(self, client: EtcdClient, prefix: str = NODES_PREFIX, ttl: int = LEASE_TTL_SECONDS,
                 grace: float = LEAVE_GRACE_SECONDS, lease_file: Path | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self.grace = grace
        self.lease_file = lease_file
        self.on_change: Callable[[], None] = lambda: None
        self.on_lease: Callable[[int], None] = lambda lease: None  # the node is registered under `lease`
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeRecord] = {}
        self._leaving: dict[str, tuple[object, threading.Timer]] = {}  # key gone, within its grace
        self._listed = threading.Event()  # the first list is in
        self._lease = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, own: NodeRecord) -> None:
        """Register `own` (kept alive from now on) and start following every node."""
        work = ((lambda: self._keep(own), "velvet-node-lease"), (self._follow, "velvet-node-watch"))
        for target, name in work:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def nodes(self) -> list[NodeRecord]:
        """Every registered node, by name."""
        with self._lock:
            return [self._nodes[name] for name in sorted(self._nodes)]

    def registered(self) -> frozenset[str] | None:
        """Names of the registered nodes, or None before the first list (membership not known yet)."""
        with self._lock:
            return frozenset(self._nodes) if self._listed.is_set() else None

    def wait_listed(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the first list of the nodes; whether it is in."""
        return self._listed.wait(timeout)

    def close(self) -> None:
        """Stop both threads and revoke the lease, so the other nodes see this one leave now."""
        self._stop.set()
        with self._lock:
            lease, self._lease = self._lease, 0
            for _, timer in self._leaving.values():
                timer.cancel()
        if lease:
            try:
                self.client.revoke(lease)
            except EtcdError as err:
                log.warning("could not revoke the node's lease (it expires in %d s): %s", self.ttl, err)
        if self.lease_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.lease_file.unlink()

    # -- registration -----------------------------------------------------------------------------

    def _keep(self, own: NodeRecord) -> None:
        """Register under the previous life's lease if still alive, else a fresh one; renew it every
        ttl/3, register again when it was lost."""
        delay = MIN_BACKOFF_SECONDS
        lease = 0
        saved = saved_lease(self.lease_file)
        while not self._stop.is_set():
            try:
                if not lease or self.client.keepalive(lease) == 0:
                    kept = bool(saved) and self.client.keepalive(saved) > 0
                    lease, saved = (saved if kept else self.client.grant(self.ttl)), 0
                    self._save_lease(lease)
                    with self._lock:
                        self._lease = lease
                    self.client.put(self.prefix + own.name, own.encode(), lease=lease)
                    self.on_lease(lease)
                    log.info("node %s registered (%s, pods %s) under %s lease %x", own.name, own.internal_ip,
                             own.pod_cidr, "its previous" if kept else "a new", lease)
                delay = MIN_BACKOFF_SECONDS
                self._stop.wait(self.ttl / 3)
            except EtcdError as err:
                log.warning("node registration: %s; retrying in %.1f s", err, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, REGISTER_MAX_BACKOFF_SECONDS)

    def _save_lease(self, lease: int) -> None:
        """Keep the lease id for the next agent of this node (a failure only costs that re-use)."""
        if self.lease_file is not None:
            try:
                write_atomic(self.lease_file, f"{lease}\n".encode())
            except StorageError as err:
                log.warning("could not keep the node's lease id (a restart will register anew): %s", err)

    # -- following --------------------------------------------------------------------------------

    def _follow(self) -> None:
        """List, then watch from the next revision; relist after compaction or a lost connection."""
        follow_prefix(self.client, self.prefix, self._stop, what="nodes", reset=self._reset,
                      update=self._update, idle_timeout=self.ttl * 2)

    def _decode(self, kv: KeyValue) -> NodeRecord | None:
        try:
            return NodeRecord.decode(kv.value, kv.key)
        except InvalidNode as err:
            log.warning("%s; left out", err)
            return None

    def _reset(self, kvs: Sequence[KeyValue]) -> None:
        nodes = {kv.key[len(self.prefix):]: node for kv in kvs if (node := self._decode(kv)) is not None}
        with self._lock:
            for name in self._nodes.keys() - nodes.keys():
                self._going(name)
            for name, node in nodes.items():
                self._registered(name, node)
            self._listed.set()
        self.on_change()

    def _update(self, changes: Sequence[tuple[KeyValue, bool]]) -> None:
        with self._lock:
            for kv, deleted in changes:
                name = kv.key[len(self.prefix):]
                node = None if deleted else self._decode(kv)
                if node is None:
                    self._going(name)
                else:
                    self._registered(name, node)
        self.on_change()

    def _registered(self, name: str, node: NodeRecord) -> None:
        """(Under the lock) `name` is registered: it stays, whatever its key did before."""
        self._nodes[name] = node
        _, timer = self._leaving.pop(name, (None, None))
        if timer is not None:
            timer.cancel()

    def _going(self, name: str) -> None:
        """(Under the lock) `name`'s key went: it leaves the view after the grace unless registered again."""
        if name not in self._nodes or name in self._leaving:
            return
        token = object()
        timer = threading.Timer(self.grace, self._leave, (name, token))
        timer.daemon = True
        self._leaving[name] = (token, timer)
        timer.start()

    def _leave(self, name: str, token: object) -> None:
        """The grace of `name` ran out (timer thread): it leaves, unless it registered again meanwhile."""
        with self._lock:
            if self._leaving.get(name, (None,))[0] is not token:
                return
            del self._leaving[name]
            self._nodes.pop(name, None)
        log.info("node %s left the cluster", name)
        self.on_change()
