"""One resource followed as client-go's reflector does: list, then watch from the list's resourceVersion.

The list is read in pages (limit/continue). The watch asks for bookmarks, so a quiet resource's
resourceVersion still advances and a later watch does not start from a compacted revision. A watch the
server ends or that breaks is opened again from the last resourceVersion seen (nothing is lost: the
server replays what happened since); 410 Gone means that revision was compacted, so the informer lists
again and hands over only the difference to what it had (objects whose resourceVersion did not change
are not handed over again). While the API server does not answer, attempts wait 0.5 s doubling to 5 s;
`connected` and `error` say how the last call went.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from velvet.sources.kube_client import Gone, Json, KubeApi, KubeError, Resource

log = logging.getLogger("velvet.kube")
PAGE_SIZE = 500
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 5.0


@dataclass(frozen=True)
class Change:
    """One object of `kind` as the API has it now ("upsert"), or gone ("delete", `obj` None)."""

    kind: str
    op: Literal["upsert", "delete"]
    key: str
    obj: Json | None


def key_of(obj: Json) -> str:
    """`namespace/name`, or `name` for a cluster-scoped object."""
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    return f"{namespace}/{name}" if namespace else name


def rv_of(obj: Json) -> str:
    """The object's metadata.resourceVersion ("" when it has none)."""
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Informer:
    """Follows one resource; `deliver` gets its changes in order, from the informer's event loop."""

    def __init__(self, api: KubeApi, resource: Resource, deliver: Callable[[list[Change]], None], *,
                 field_selector: str = "", label_selector: str = "", page_size: int = PAGE_SIZE,
                 sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.api = api
        self.resource = resource
        self.deliver = deliver
        self.selectors = {"fieldSelector": field_selector, "labelSelector": label_selector}
        self.page_size = page_size
        self.resource_version = ""
        self.known: dict[str, str] = {}  # key -> resourceVersion of every object handed over
        self.listed = asyncio.Event()  # the first list is complete
        self.connected = False
        self.error = ""
        self.lists = 0
        self.watches = 0
        self._sleep = sleep or asyncio.sleep
        self._backoff = BACKOFF_FIRST_SECONDS

    async def run(self) -> None:
        """List and watch until cancelled."""
        relist = True
        while True:
            try:
                if relist:
                    await self.relist()
                    relist = False
                if not await self.watch_once():  # ended before any event: do not spin on such a server
                    await self._pause()
            except Gone as err:
                log.info("%s: %s; listing again", self.resource.plural, err)
                relist = True
                self.resource_version = ""
            except KubeError as err:
                await self._failed(err)

    async def relist(self) -> None:
        """List every page at one resourceVersion and hand over the difference to what was known."""
        items: list[Json] = []
        token = ""
        while True:
            page, version, token = await self.api.list_page(
                self.resource, {**self.selectors, "limit": self.page_size, "continue": token})
            items.extend(page)
            if not token:
                break
        self.lists += 1
        listed = {key_of(item): item for item in items}
        changes = [Change(self.resource.kind, "upsert", key, item) for key, item in listed.items()
                   if self.known.get(key) != rv_of(item)]
        changes += [Change(self.resource.kind, "delete", key, None)
                    for key in self.known if key not in listed]
        self.known = {key: rv_of(item) for key, item in listed.items()}
        self.resource_version = version
        self._ok()
        if changes:
            self.deliver(changes)
        self.listed.set()

    async def watch_once(self) -> int:
        """One watch stream from the last resourceVersion, until the server ends it; its event count."""
        self.watches += 1
        events = 0
        async for kind, obj in self.api.watch(
                self.resource, {**self.selectors, "resourceVersion": self.resource_version}, self._ok):
            events += 1
            version = rv_of(obj)
            if kind == "BOOKMARK":
                self.resource_version = version or self.resource_version
                continue
            key = key_of(obj)
            if kind in ("ADDED", "MODIFIED"):
                self.known[key] = version
                self.deliver([Change(self.resource.kind, "upsert", key, obj)])
            elif kind == "DELETED":
                self.known.pop(key, None)
                self.deliver([Change(self.resource.kind, "delete", key, None)])
            self.resource_version = version or self.resource_version
        return events

    def _ok(self) -> None:
        self.connected, self.error = True, ""
        self._backoff = BACKOFF_FIRST_SECONDS

    async def _failed(self, err: KubeError) -> None:
        """Note the failure and wait before the next attempt (longer each time, up to the cap)."""
        if self.connected or self.error != str(err):
            log.warning("%s: %s; trying again (backoff up to %.0f s)", self.resource.plural, err,
                        BACKOFF_MAX_SECONDS)
        self.connected, self.error = False, str(err)
        await self._pause()

    async def _pause(self) -> None:
        await self._sleep(self._backoff)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_SECONDS)
