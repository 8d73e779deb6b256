"""A small blocking client for etcd v3 through its JSON gateway (`/v3/...`), on the standard library.

Why the gateway and http.client: the maintained-looking Python clients for etcd v3 are gRPC stubs
that pin old protobuf releases (python-etcd3 has had no release since 2020), while etcd itself
serves every call we need as JSON (etcd >= 3.4: kv/range, kv/txn, kv/compaction, lease/grant,
lease/keepalive, lease/revoke, maintenance/status, and watch as a streaming POST; keys and values
base64, int64 as strings). The store calls it from the agent's state worker, which blocks anyway,
and the watch runs on its own thread, so a blocking client fits without handing requests to the
event loop; aiohttp would add nothing but that hand-off. Every failure is one `EtcdError` line
naming the endpoint.

Large answers are parsed with ijson's C parser (yajl) one key at a time: a watch answer is read and
parsed 64 KiB at a time and each event handed to the caller as it is parsed, so the 11 MB answer of a
9,000-service apply is never held whole (json's tree of it peaked at 31 MB beside its text, orjson's
parser at 165 MB); a listed prefix is read from its text key by key. Small answers are decoded with the
standard library's json; requests are written with orjson.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import ijson
import orjson

from velvet.errors import VelvetError


class EtcdError(VelvetError):
    """etcd could not be asked, or answered with an error."""


class EtcdUnavailable(EtcdError):
    """etcd does not answer (refused, timed out, connection lost)."""


class EtcdIdle(EtcdUnavailable):
    """A watch heard nothing for its idle timeout (etcd may just be quiet: resume it)."""


class EtcdCompacted(EtcdError):
    """A watch asked for a revision etcd has compacted away; relist from `compact_revision` or later."""

    def __init__(self, endpoint: str, compact_revision: int) -> None:
        super().__init__(f"etcd at {endpoint}: required revision has been compacted "
                         f"(oldest kept: {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd holds it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Event:
    """A watched change: a put (the new value) or a delete."""

    kind: str  # "PUT" or "DELETE"
    kv: KeyValue


@dataclass(frozen=True)
class Op:
    """One operation of a transaction: put `value` under `key`, or delete `key` (value None)."""

    key: str
    value: bytes | None


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (its last byte plus one)."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(base64.b64decode(raw.get("key", "")).decode(), base64.b64decode(raw.get("value", "")),
                    int(raw.get("create_revision", 0)), int(raw.get("mod_revision", 0)))


def _revision(text: bytes) -> int:
    """The header's revision in an answer's text; the header comes first, so the rest is not read."""
    return int(next(ijson.items(text, "header.revision"), 0))


_PIECE = 1 << 16  # a watch answer is read and parsed this much at a time: an 11 MB change is never held whole
_SHORT = 1 << 16  # an answer's text is kept up to this size (one without events is read from it)


T = TypeVar("T")


def as_event(event: Event) -> Event:
    """A watched event kept as it is (the `read` of a watch whose caller reads the values later)."""
    return event


@dataclass
class _Answer:
    """One watch answer: its revision, how many events it held, those kept (as read), its text when short."""

    revision: int = 0
    count: int = 0
    events: list[Any] = field(default_factory=list)
    text: bytes = b""  # the whole answer when it held no events (created, compacted, cancelled: short)


def _event(raw: dict[str, Any], skip: Callable[[str, int], bool] | None) -> Event | None:
    """A watched event of etcd's JSON, or None when `skip` refuses its key and mod revision (its value is
    then not decoded)."""
    kv = raw["kv"]
    if skip is not None and skip(
            base64.b64decode(kv.get("key", "")).decode(), int(kv.get("mod_revision", 0))):
        return None
    return Event(raw.get("type", "PUT"), _kv(kv))


def _read_answer(resp: http.client.HTTPResponse, skip: Callable[[str, int], bool] | None,
                 read: Callable[[Event], Any] = as_event) -> _Answer | None:
    """The next answer of a watch stream (a line of JSON), read and parsed a piece at a time, one event's
    JSON at a time, each kept event passed through `read` at once; None where the stream ends between
    answers."""
    parsed, revisions = ijson.sendable_list(), ijson.sendable_list()
    items = ijson.items_coro(parsed, "result.events.item")
    header = ijson.items_coro(revisions, "result.header.revision")
    answer, text, size, ended = _Answer(), bytearray(), 0, False
    while not ended:
        piece = resp.readline(_PIECE)
        if not piece:
            if not size:
                return None
            raise http.client.IncompleteRead(bytes(text))
        size, ended = size + len(piece), piece.endswith(b"\n")
        items.send(piece)
        if not revisions:
            header.send(piece)
        for raw in parsed:
            answer.count += 1
            if (event := _event(raw, skip)) is not None:
                answer.events.append(read(event))
        del parsed[:]
        if size <= _SHORT:
            text += piece
    items.close()
    answer.revision = int(revisions[0]) if revisions else 0
    answer.text = bytes(text) if not answer.count else b""
    return answer


class EtcdClient:
    """Calls one etcd member at `endpoint` (http://host:port); each call opens its own connection."""

    def __init__(self, endpoint: str, timeout: float = 5.0) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise EtcdError(f"etcd endpoint {endpoint!r}: expected http://HOST:PORT")
        self.endpoint = endpoint
        self.timeout = timeout
        self._host, self._port = parts.hostname, parts.port

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def call(self, path: str, body: dict[str, Any] | bytearray) -> dict[str, Any]:
        """POST `body` (or JSON text already made) to `/v3/<path>`; the decoded answer, or `EtcdError`."""
        text = self.call_text(path, body)
        try:
            return cast(dict[str, Any], json.loads(text))
        except ValueError:
            raise EtcdError(f"etcd at {self.endpoint}: /v3/{path} answered 200: {text[:200]!r}") from None

    def call_text(self, path: str, body: dict[str, Any] | bytearray) -> bytes:
        """POST `body` to `/v3/<path>`; the answer's JSON text (an object), or `EtcdError`."""
        conn = self._connect(self.timeout)
        try:
            data = body if isinstance(body, bytearray) else orjson.dumps(body)
            conn.request("POST", f"/v3/{path}", data, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as err:
            raise EtcdUnavailable(f"etcd at {self.endpoint} does not answer: {_why(err)}") from None
        finally:
            conn.close()
        if resp.status == 200 and data.lstrip()[:1] == b"{":
            return data
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        message = answer.get("message") or answer.get("error") if isinstance(answer, dict) else None
        raise EtcdError(f"etcd at {self.endpoint}: /v3/{path} answered {resp.status}: "
                        f"{message or data[:200]!r}")

    def status(self) -> dict[str, Any]:
        """The member's status (version, revision in `header`)."""
        return self.call("maintenance/status", {})

    def range_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix` (sorted by key) and the revision they were read at."""
        text = self.call_text("kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        try:
            return _revision(text), [_kv(kv) for kv in ijson.items(text, "kvs.item")]
        except (ijson.JSONError, ValueError, KeyError, TypeError) as err:
            raise EtcdError(f"etcd at {self.endpoint}: /v3/kv/range answered what is not a range: {err}") \
                from None

    def get(self, key: str) -> KeyValue | None:
        """One key, or None."""
        kvs = self.call("kv/range", {"key": _b64(key)}).get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Put one key (attached to `lease` when not 0); the revision it got."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("kv/put", body)["header"]["revision"])

    def txn_if_mod(self, guard: str, mod_revision: int, ops: Iterable[Op]) -> tuple[bool, int, int]:
        """Run `ops` if `guard`'s mod revision is `mod_revision` (0: absent), all or none.

        Returns (succeeded, revision after, guard's current mod revision on failure). The request's JSON
        is written op by op into one buffer (base64 needs no escaping), so that a 9,000-service apply
        does not hold every op as dicts and strings beside the text: `ops` may be a generator.
        """
        guard64 = _b64(guard).encode()
        body = bytearray(b'{"compare":[{"key":"%s","target":"MOD","result":"EQUAL","mod_revision":"%d"}],'
                         b'"failure":[{"request_range":{"key":"%s"}}],"success":['
                         % (guard64, mod_revision, guard64))
        for op in ops:
            key = base64.b64encode(op.key.encode())
            if op.value is None:
                body += b'{"request_delete_range":{"key":"%s"}},' % key
            else:
                body += b'{"request_put":{"key":"%s","value":"%s"}},' % (key, base64.b64encode(op.value))
        if body.endswith(b","):
            body[-1:] = b"]}"
        else:
            body += b"]}"
        answer = self.call("kv/txn", body)
        revision = int(answer["header"]["revision"])
        if answer.get("succeeded"):
            return True, revision, revision
        kvs = answer.get("responses", [{}])[0].get("response_range", {}).get("kvs", [])
        return False, revision, int(kvs[0]["mod_revision"]) if kvs else 0

    def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        return int(self.call("lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew `lease` once; its remaining TTL in seconds, 0 when etcd no longer has it (expired)."""
        answer = self.call("lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """End `lease` now: etcd deletes every key attached to it."""
        self.call("lease/revoke", {"ID": str(lease)})

    def compact(self, revision: int) -> None:
        """Forget the history before `revision`."""
        self.call("kv/compaction", {"revision": str(revision)})

    def watch(self, prefix: str, start_revision: int, read: Callable[[Event], T], idle_timeout: float = 30.0,
              skip: Callable[[str, int], bool] | None = None) -> Iterator[tuple[int, list[T]]]:
        """Stream (revision, events) under `prefix` from `start_revision` on, until the connection ends.

        Each event is `read` as soon as it is parsed (`as_event` keeps it; a caller that decodes the value
        there holds no raw value beyond the one being read). The first item, once etcd created the watch,
        has no events. Events for which `skip(key, mod_revision)` is true are left out (a writer's own
        changes, which it applied already). Raises `EtcdCompacted` when that revision is gone,
        `EtcdUnavailable` when etcd is unreachable (`EtcdIdle` when it was silent for `idle_timeout`
        seconds); the caller resumes from the last revision it saw.
        """
        create = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                  "start_revision": str(start_revision)}
        conn = self._connect(idle_timeout)
        try:
            conn.request("POST", "/v3/watch", orjson.dumps({"create_request": create}),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise EtcdError(f"etcd at {self.endpoint}: /v3/watch answered {resp.status}")
            while (answer := _read_answer(resp, skip, read)) is not None:
                created = False
                if not answer.count:  # created, compacted, cancelled or a progress note: a short line
                    result = json.loads(answer.text).get("result", {})
                    if result.get("compact_revision"):
                        raise EtcdCompacted(self.endpoint, int(result["compact_revision"]))
                    if result.get("canceled"):
                        raise EtcdError(f"etcd at {self.endpoint} cancelled the watch: "
                                        f"{result.get('cancel_reason', 'no reason given')}")
                    created = bool(result.get("created"))
                if answer.count or created:
                    yield answer.revision, answer.events
                del answer  # a 10,000-object change is not held while the watch waits for the next one
        except TimeoutError:
            raise EtcdIdle(f"etcd at {self.endpoint}: the watch heard nothing for {idle_timeout:.0f} s") \
                from None
        except (OSError, http.client.HTTPException, ValueError, ijson.JSONError) as err:
            raise EtcdUnavailable(f"etcd at {self.endpoint}: the watch ended: {_why(err)}") from None
        finally:
            conn.close()
        raise EtcdUnavailable(f"etcd at {self.endpoint}: the watch ended: connection closed")


def _why(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    return str(err) or type(err).__name__


FOLLOW_MIN_BACKOFF_SECONDS = 0.5
FOLLOW_MAX_BACKOFF_SECONDS = 5.0
_log = logging.getLogger("velvet.etcd")


def follow_prefix(client: EtcdClient, prefix: str, stop: threading.Event, *, what: str,
                  reset: Callable[[Sequence[KeyValue]], None],
                  update: Callable[[Sequence[tuple[KeyValue, bool]]], None],
                  idle_timeout: float = 30.0) -> None:
    """List `prefix`, then watch it from the next revision until `stop` is set (an informer's loop).

    `reset` gets every key of a (re)list, `update` each batch of changes as (kv, deleted). A compacted
    revision or a lost connection means a relist; while etcd is unreachable the loop backs off
    (0.5 s doubling to 5 s) and says so once per attempt, naming `what` it follows.
    """
    delay = FOLLOW_MIN_BACKOFF_SECONDS
    revision = 0
    listed = False
    while not stop.is_set():
        try:
            if not listed:
                revision, kvs = client.range_prefix(prefix)
                reset(kvs)
                listed = True
            for seen, events in client.watch(prefix, revision + 1, as_event, idle_timeout=idle_timeout):
                delay = FOLLOW_MIN_BACKOFF_SECONDS
                revision = max(revision, seen)
                if events:
                    update([(e.kv, e.kind == "DELETE") for e in events])
                del events  # not held while the watch waits
                if stop.is_set():
                    return
        except EtcdIdle:
            continue
        except EtcdCompacted as err:
            _log.warning("%s: listing the %s again", err, what)
            listed = False
            continue
        except EtcdError as err:
            _log.warning("following the %s: %s; retrying in %.1f s", what, err, delay)
            listed = False
        stop.wait(delay)
        delay = min(delay * 2, FOLLOW_MAX_BACKOFF_SECONDS)
