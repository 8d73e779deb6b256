"""One view of the cluster, as Hubble Relay gives: ask every node's agent and merge the flows by time.

The peers are the registered nodes, each with the API address its agent advertises in its node
record. A history query asks every peer at once and keeps the newest N overall; a follow reads every
peer's stream concurrently and yields items as they come. A peer that cannot be reached is reported
(`on_error`, once per peer) and the others are still answered; when none answers, its error is raised.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from velvet.api.client import ApiClient
from velvet.errors import AgentUnavailable, VelvetError

Json = dict[str, Any]
DISCOVER_SECONDS = 5.0
ErrorSink = Callable[[str, VelvetError], None]


@dataclass(frozen=True)
class Peer:
    """A node and the client of its agent's API (None: the node advertises no API address)."""

    name: str
    client: ApiClient | None

    def api(self) -> ApiClient:
        """The client; AgentUnavailable when the node advertises no address."""
        if self.client is None:
            raise AgentUnavailable(f"node {self.name} advertises no API address")
        return self.client


def peers_of(nodes: Sequence[Mapping[str, Any]], timeout: float | None = 30.0) -> list[Peer]:
    """Peers from the node list an agent answers (`/v1/query/nodes`: name and api per node)."""
    return [Peer(str(n["name"]), ApiClient(Path(str(n["api"])), timeout) if n.get("api") else None)
            for n in nodes]


def _merged(answers: Sequence[Sequence[Json]], last: int | None) -> list[Json]:
    """Every node's flows in time order (RFC 3339 with nanoseconds sorts as text), the newest `last` kept."""
    flows = sorted((f for answer in answers for f in answer), key=lambda f: str(f.get("time", "")))
    return flows[-last:] if last else flows


class Relay:
    """Fans one request out to every peer and merges what they answer."""

    def __init__(self, peers: Sequence[Peer], on_error: ErrorSink,
                 discover: Callable[[], Sequence[Peer]] | None = None) -> None:
        """Relay to `peers`; a follow also asks `discover` every DISCOVER_SECONDS for nodes that joined."""
        self.peers = list(peers)
        self.on_error = on_error
        self.discover = discover

    def _report(self, failed: Sequence[tuple[Peer, VelvetError]]) -> None:
        """Every failure to `on_error`; the first one raised when no peer answered at all."""
        if failed and len(failed) == len(self.peers):
            raise failed[0][1]
        for peer, err in failed:
            self.on_error(peer.name, err)

    def query(self, path: str, params: Mapping[str, Any], last: int | None) -> list[Json]:
        """GET `path` on every peer at once; their flows merged by time, the newest `last` overall."""
        def ask(peer: Peer) -> list[Json] | VelvetError:
            try:
                return list(peer.api().get(path, **params))
            except VelvetError as err:
                return err
        with ThreadPoolExecutor(max_workers=max(1, len(self.peers))) as pool:
            answers = list(pool.map(ask, self.peers))
        self._report([(p, a) for p, a in zip(self.peers, answers, strict=True) if isinstance(a, VelvetError)])
        return _merged([a for a in answers if not isinstance(a, VelvetError)], last)

    def stream(self, path: str, params: Mapping[str, Any]) -> Iterator[Json]:
        """Follow `path` on every peer concurrently: items interleaved as they come, until all streams end.

        Nodes that join meanwhile are followed too (`discover`, as Hubble Relay's peer service); a name
        is followed once, so a node that left and came back under the same name is not followed again.
        """
        items: queue.Queue[tuple[Peer, Json | VelvetError | None]] = queue.Queue()
        started: set[str] = set()

        def follow(peer: Peer) -> None:
            try:
                for item in peer.api().stream(path, **params):
                    items.put((peer, item))
            except VelvetError as err:
                items.put((peer, err))
            items.put((peer, None))

        def start(peers: Sequence[Peer]) -> int:
            new = [p for p in peers if p.name not in started]
            for peer in new:  # daemon threads: an interrupted follow ends with the process
                started.add(peer.name)
                name = f"velvet-relay-{peer.name}"
                threading.Thread(target=follow, args=(peer,), name=name, daemon=True).start()
            return len(new)

        running, failed = start(self.peers), 0
        next_discovery = time.monotonic() + DISCOVER_SECONDS
        while running:
            try:
                peer, item = items.get(timeout=max(0.0, next_discovery - time.monotonic()))
            except queue.Empty:
                running += self._discovered(start)
                next_discovery = time.monotonic() + DISCOVER_SECONDS
                continue
            if item is None:
                running -= 1
            elif isinstance(item, VelvetError):
                failed += 1
                if failed == len(started):
                    raise item
                self.on_error(peer.name, item)
            else:
                yield item

    def _discovered(self, start: Callable[[Sequence[Peer]], int]) -> int:
        """Start following the nodes `discover` knows and the follow does not (0 when it cannot tell)."""
        if self.discover is None:
            return 0
        try:
            return start(self.discover())
        except VelvetError:  # the node list is node 0's: its own stream reports it when it is gone
            return 0
