"""The node's process tree: the current image of every known process by pid, bounded.

An exited process stays for a grace period after its exit event, so events that arrive late (a child's
exit after its parent's) still find their parent; then it is dropped. Beyond the capacity the oldest
exited processes go first, then the oldest live ones.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice

from velvet.runtime.process import Process

DEFAULT_CAPACITY = 32768
DEFAULT_GRACE_SECONDS = 30.0
CONNECTION_CAPACITY = 65536
CONNECTION_GRACE_SECONDS = 300.0
# A closed connection matters while a stored flow names it: the flow store keeps 4,095 records by default,
# each naming at most two connections (its two ends).
CLOSED_CAPACITY = 16384
ConnKey = bytes
"""A TCP connection: saddr, daddr, sport, dport in network order (struct sock_event's bytes)."""


class ProcessTree:
    """pid -> Process; not thread-safe (the agent's event loop owns it)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY,
                 grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
        self.capacity = capacity
        self.grace_seconds = grace_seconds
        self._procs: dict[int, Process] = {}
        self._exited: deque[tuple[float, Process]] = deque()
        self.evicted = 0  # live processes dropped for room

    def __len__(self) -> int:
        return len(self._procs)

    def get(self, pid: int) -> Process | None:
        """The current image of `pid` (an exited one during its grace period), if known."""
        return self._procs.get(pid)

    def live(self) -> list[Process]:
        """Every known process that has not exited."""
        return [p for p in self._procs.values() if not p.exited]

    def put(self, proc: Process) -> None:
        """Record `proc` as the current image of its pid (an exec replaces the fork's image)."""
        self._procs.pop(proc.pid, None)  # re-insert: dict order is the age order for eviction
        self._procs[proc.pid] = proc
        while len(self._procs) > self.capacity:
            self._evict_one()

    def exit(self, pid: int, now: float | None = None) -> None:
        """Mark `pid` exited; it is dropped after the grace period."""
        proc = self._procs.get(pid)
        if proc is not None and not proc.exited:
            proc.exited = True
            self._exited.append(((time.monotonic() if now is None else now) + self.grace_seconds, proc))

    def expire(self, now: float | None = None) -> None:
        """Drop exited processes whose grace period is over."""
        now = time.monotonic() if now is None else now
        while self._exited and self._exited[0][0] <= now:
            self._forget(self._exited.popleft()[1])

    def _forget(self, proc: Process) -> None:
        """Drop `proc` unless its pid already has a newer image."""
        if self._procs.get(proc.pid) is proc:
            del self._procs[proc.pid]

    def _evict_one(self) -> None:
        """Make room: the oldest exited process, else the oldest live one."""
        while self._exited:
            proc = self._exited.popleft()[1]
            if self._procs.get(proc.pid) is proc:
                del self._procs[proc.pid]
                return
        del self._procs[next(iter(self._procs))]
        self.evicted += 1


class ConnectionTable:
    """TCP connections (`ConnKey`) -> the process that opened them, bounded.

    A closed connection is kept for a grace period, so the flows stored before it closed still name their
    process when they are read; beyond the capacity the oldest connections go first, and beyond
    `closed_capacity` closed ones the oldest closed go before their grace period ends (a node making
    thousands of connections a second closed hundreds of thousands within one grace period, each kept).
    Closed connections wait in batches (one deadline, a list of keys and one of processes per update):
    no tuple or float per connection.
    """

    def __init__(self, capacity: int = CONNECTION_CAPACITY, grace_seconds: float = CONNECTION_GRACE_SECONDS,
                 closed_capacity: int = CLOSED_CAPACITY) -> None:
        self.capacity = capacity
        self.grace_seconds = grace_seconds
        self.closed_capacity = closed_capacity
        self._conns: dict[ConnKey, Process] = {}
        self._closed: deque[tuple[float, list[ConnKey], list[Process]]] = deque()
        self._closing = 0  # connections waiting in _closed

    def __len__(self) -> int:
        return len(self._conns)

    @property
    def closing(self) -> int:
        """Closed connections still kept (their grace period not over)."""
        return self._closing

    def get(self, key: ConnKey) -> Process | None:
        """The process that opened the connection, if known."""
        return self._conns.get(key)

    def put(self, key: ConnKey, proc: Process) -> None:
        """Remember that `proc` opened the connection `key`."""
        self.update([(key, proc)])

    def update(self, changes: Iterable[tuple[ConnKey, Process | None]], now: float | None = None) -> None:
        """Apply a batch in order: connections opened (their process) and closed (None); one clock read.

        Beyond the capacity the oldest go at the end, in one pass: `del d[next(iter(d))]` per put rescans
        the deleted head of the dict every time (~10 us per connection once the table is full).
        """
        conns = self._conns
        keys: list[ConnKey] = []
        procs: list[Process] = []
        for key, proc in changes:
            if proc is None:
                known = conns.get(key)
                if known is not None:
                    keys.append(key)
                    procs.append(known)
            else:
                conns.pop(key, None)
                conns[key] = proc
        if keys:
            deadline = (time.monotonic() if now is None else now) + self.grace_seconds
            self._closed.append((deadline, keys, procs))
            self._closing += len(keys)
            if self._closing > self.closed_capacity:
                self._forget_closed(self._closing - self.closed_capacity)
        excess = len(conns) - self.capacity
        if excess > 0:
            for key in list(islice(conns, excess)):
                del conns[key]

    def close(self, key: ConnKey, now: float | None = None) -> None:
        """The connection closed: forget it after the grace period."""
        self.update([(key, None)], now)

    def expire(self, now: float | None = None) -> None:
        """Forget closed connections whose grace period is over (unless the tuple was reused since)."""
        now = time.monotonic() if now is None else now
        while self._closed and self._closed[0][0] <= now:
            self._forget_closed(len(self._closed[0][1]))

    def _forget_closed(self, count: int) -> None:
        """Forget the `count` oldest closed connections now (a tuple reused since keeps its new process)."""
        conns, closed = self._conns, self._closed
        while count > 0 and closed:
            _, keys, procs = closed[0]
            taken = min(count, len(keys))
            for key, proc in zip(keys[:taken], procs[:taken], strict=True):
                if conns.get(key) is proc:
                    del conns[key]
            if taken == len(keys):
                closed.popleft()
            else:
                del keys[:taken], procs[:taken]
            self._closing -= taken
            count -= taken


class UdpSockets:
    """UDP sockets (local ip, port) -> the process that last sent or received on them, bounded.

    A socket bound to every address (0.0.0.0: a server's, or an unconnected sender's) is kept per network
    namespace; a flow's address picks among them by the pod address of the process's cgroup. Entries are
    replaced when another process uses the port; beyond the capacity the oldest go first.
    """

    def __init__(self, capacity: int = CONNECTION_CAPACITY) -> None:
        self.capacity = capacity
        self._bound: dict[tuple[str, int], Process] = {}
        self._any: dict[tuple[int, int], Process] = {}  # (port, netns inode) -> process
        self._by_port: dict[int, set[int]] = {}  # port -> netns inodes of _any

    def __len__(self) -> int:
        return len(self._bound) + len(self._any)

    def put(self, ip: str, port: int, netns: int, proc: Process) -> None:
        """Remember that `proc` uses the UDP socket at ip:port (ip 0.0.0.0: any address of netns)."""
        if ip != "0.0.0.0":
            self._bound.pop((ip, port), None)
            self._bound[(ip, port)] = proc
        else:
            self._any.pop((port, netns), None)
            self._any[(port, netns)] = proc
            self._by_port.setdefault(port, set()).add(netns)
        while len(self._bound) > self.capacity:
            del self._bound[next(iter(self._bound))]
        while len(self._any) > self.capacity:
            old_port, old_netns = next(iter(self._any))
            del self._any[(old_port, old_netns)]
            self._by_port[old_port].discard(old_netns)
            if not self._by_port[old_port]:
                del self._by_port[old_port]

    def get(self, ip: str, port: int, address_of: Callable[[Process], str | None]) -> Process | None:
        """The process at ip:port: a socket bound to ip, else the one bound to any address whose process's
        pod has address `ip` (`address_of`), else the only such socket whose process has no known address."""
        proc = self._bound.get((ip, port))
        if proc is not None:
            return proc
        unknown: list[Process] = []
        for netns in self._by_port.get(port, ()):
            candidate = self._any[(port, netns)]
            address = address_of(candidate)
            if address == ip:
                return candidate
            if address is None:
                unknown.append(candidate)
        return unknown[0] if len(unknown) == 1 else None
