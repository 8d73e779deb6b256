"""The local store on disk: a snapshot of every object plus an append-only journal of the changes since.

`store.json` is `{"objects": [...], "version": V, "seal": H}` with one object per line, each the fields
`kubectl get -o json` prints as one compact JSON text (keys sorted, UTF-8: orjson, as etcd values are
written; texts in the stdlib's spaced form from earlier versions read the same). `store.journal` holds
one JSON line per committed change,
`{"delete": [[kind, namespace, name], ...], "since": S, "upsert": [objects], "version": V, "seal": H}`
(S: the version the change was made on; H: below), fsync'd before the change is applied or
published, so a change costs what it touched and a failed write changes nothing. A new store's
first change is its journal's first line (since 0).

Loading reads the snapshot and replays the journal lines newer than it. Without a snapshot the
journal is replayed from version 0 when it holds every change from the first; otherwise loading
refuses and touches nothing (the snapshot must be restored). A torn last line (the writer died
mid-line) is dropped and cut off. An object or line that no longer decodes (validation tightened,
a newer Velvet wrote it) is reported in one log line, appended with the reason to
`store.quarantine.jsonl` and left out; the caller then compacts, so it is moved aside, never lost.

Every text the store writes is sealed (`seal`): the snapshot and each journal line end with
`, "seal": "<hex>"}`, the seal of what comes before it. Services and EndpointSlices in a text whose
seal matches were written by this very code from objects it held, so they are read back without
validation (`model.decode_stored`, ~5x faster); every other object, and every object of a text
edited by hand, damaged or written by another Velvet, is validated in full as above. A load that met texts
not sealed by this code asks for a compaction (`Loaded.rewrite`), after which all of it is.

Once the journal outgrows the snapshot the two are compacted: a new snapshot is written atomically
(`durable.write_atomic`), then the journal is emptied; a crash in between leaves only lines the
snapshot already holds, which replay skips by version. Compaction encodes only what the files do not
hold yet: where each object's text lies in the snapshot or the journal is remembered (one int per
object, not a second copy of the text) and those bytes are copied over. Files are 0600 in a 0700
directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from velvet.durable import StorageError, open_append, private_dir, private_file, write_atomic
from velvet.errors import InvalidManifest
from velvet.model import KubeObject
from velvet.model.codec import from_dict, to_dict
from velvet.model.decode_stored import read_stored
from velvet.sources.index import Key, key_of
from velvet.sources.seal import SEAL_CHARS, seal

STATE_FILE = "store.json"
JOURNAL_FILE = "store.journal"
QUARANTINE_FILE = "store.quarantine.jsonl"
_SEAL_HEAD, _SEAL_TAIL = b', "seal": "', b'"}\n'  # how a sealed text ends: `..., "seal": "<hex>"}`
_OBJECTS_HEAD, _VERSION_HEAD = b'{"objects": [\n', b'\n], "version": '  # around a snapshot's objects

log = logging.getLogger("velvet.store")


@dataclass
class Loaded:
    """What `StateFiles.load` found: the version, the objects in creation order, the documents set aside."""

    version: int
    objects: list[KubeObject]
    quarantined: list[Any] = field(default_factory=list)  # raw documents (or {"text": line}) left out
    rewrite: bool = False  # some texts were not sealed by this code: compact, so that all of them are


@dataclass(frozen=True)
class _Line:
    """One complete journal line: its number, its text and what it parsed to (None when unreadable)."""

    number: int
    text: bytes
    entry: Any
    error: str = ""
    sealed: bool = False  # written by this code and unchanged since


class StateFiles:
    """The snapshot, journal and quarantine of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir
        self.snapshot_path = state_dir / STATE_FILE
        self.journal_path = state_dir / JOURNAL_FILE
        self.quarantine_path = state_dir / QUARANTINE_FILE
        self._spans = _Spans()  # where each object's JSON text lies in the files
        self._snapshot_bytes = 0
        self._journal_bytes = 0
        self._tail_dirty = False  # a failed append may have left bytes after _journal_bytes
        self._unsaved: list[dict[str, Any]] = []  # quarantine records not yet in the quarantine file

    def prepare(self) -> None:
        """Make the directory 0700 and its files 0600; remove temp files of interrupted snapshot writes."""
        private_dir(self.directory)
        for path in (self.snapshot_path, self.journal_path, self.quarantine_path):
            private_file(path)
        leftovers = [*self.directory.glob(f"{STATE_FILE}.tmp"), *self.directory.glob(f".{STATE_FILE}.*.tmp")]
        for leftover in leftovers:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def exists(self) -> bool:
        """Something was saved here: a snapshot or a journal with at least one change."""
        return self.snapshot_path.exists() or _size(self.journal_path) > 0

    @property
    def oversized(self) -> bool:
        """The journal outgrew the snapshot: time to compact."""
        return self._journal_bytes > self._snapshot_bytes

    def load(self) -> Loaded:
        """The saved version and objects: the snapshot plus the journal's changes, bad documents set aside."""
        loaded = Loaded(0, [])
        objects: dict[Key, KubeObject] = {}
        quarantine: list[dict[str, Any]] = []
        have_snapshot = self.snapshot_path.exists()
        items: Iterable[Any] = ()
        sealed = True
        if have_snapshot:
            loaded.version, items, sealed = self._read_snapshot()
        lines, end = self._read_journal()
        self._check_journal_start(lines, loaded.version, have_snapshot)
        seen: dict[str, str] = {}  # equal strings of the decoded objects become one object
        for index, item in enumerate(items, start=1):
            obj = self._decode(item, str(self.snapshot_path), index, f"object {index}", quarantine, seen,
                               sealed)
            if obj is not None:
                objects[key_of(obj)] = obj
        loaded.rewrite = not sealed
        for line in lines:
            before = loaded.version
            loaded.version = self._replay(line, loaded.version, objects, quarantine, seen)
            loaded.rewrite |= loaded.version > before and not line.sealed
        self._journal_bytes = end
        if end < _size(self.journal_path):
            log.warning("%s: the last line was torn by a crash (the change never completed): cut off",
                        self.journal_path)
            self._tail_dirty = True
            self._cut_tail()
        self._unsaved.extend(quarantine)
        self._save_quarantine()
        loaded.objects = list(objects.values())
        loaded.quarantined = [q.get("document", {"text": q.get("text")}) for q in quarantine]
        return loaded

    def record(self, since: int, version: int, upserts: Sequence[KubeObject], deletes: Sequence[Key]) -> None:
        """Append one committed change (made on version `since`) to the journal; durable when this returns.

        On failure the journal is as before and `StorageError` says why.
        """
        data = bytearray(f'{{"delete": {json.dumps([list(k) for k in deletes])}, "since": {since}, '
                         '"upsert": ['.encode())
        spans: list[int] = []  # within `data`: built in one buffer, never as text first and then bytes
        for index, obj in enumerate(upserts):
            if index:
                data += b", "
            start = len(data)
            data += _dump(obj)
            spans.append(_span(start, len(data) - start))
        data += f'], "version": {version}'.encode()
        data += _SEAL_HEAD + seal(data) + _SEAL_TAIL
        fd = open_append(self.journal_path)
        try:
            if self._tail_dirty:
                os.ftruncate(fd, self._journal_bytes)
                self._tail_dirty = False
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as err:
            try:
                os.ftruncate(fd, self._journal_bytes)  # never leave half a line for the next one to follow
            except OSError:
                self._tail_dirty = True
            raise StorageError(self.journal_path, "append the change to", err) from err
        finally:
            os.close(fd)
        base = _span(self._snapshot_bytes + self._journal_bytes, 0)
        self._journal_bytes += len(data)
        for key in deletes:
            self._spans.pop(key)
        for obj, span in zip(upserts, spans, strict=True):
            self._spans.put(key_of(obj), base + span)

    def compact(self, version: int, objects: Iterable[KubeObject]) -> None:
        """Write every object as the new snapshot, then empty the journal; `StorageError` on failure.

        Documents set aside at load time must be in the quarantine file first: compaction drops them.
        """
        if not self._save_quarantine():
            raise StorageError(self.quarantine_path, "append to", "the set-aside documents are not saved yet")
        saved = self._saved_texts()  # the snapshot followed by the journal, or None
        known = self._spans if saved else _Spans()
        data = bytearray(_OBJECTS_HEAD)
        spans = _Spans()
        for index, obj in enumerate(objects):
            if index:
                data += b",\n"
            key = key_of(obj)
            start = len(data)
            span = known.get(key)
            if span is None:
                data += _dump(obj)
            else:
                at, length = span >> 32, span & 0xFFFFFFFF
                data += saved[at: at + length]
            spans.put(key, _span(start, len(data) - start))
        data += _VERSION_HEAD + str(version).encode()
        data += _SEAL_HEAD + seal(data) + _SEAL_TAIL
        write_atomic(self.snapshot_path, bytes(data))
        self._snapshot_bytes, self._spans = len(data), spans
        self._truncate_journal(0)
        self._journal_bytes, self._tail_dirty = 0, False

    def _saved_texts(self) -> bytes:
        """The snapshot followed by the journal as this store wrote them; b"" when they are not."""
        try:
            snapshot = self.snapshot_path.read_bytes() if self._snapshot_bytes else b""
            journal = self.journal_path.read_bytes()
        except OSError:
            return b""  # then every object is encoded again
        if len(snapshot) != self._snapshot_bytes or len(journal) < self._journal_bytes:
            return b""
        return snapshot + journal[: self._journal_bytes]

    def _read_snapshot(self) -> tuple[int, Iterator[Any], bool]:
        """The snapshot's version, its objects as saved (parsed as they are taken, not decoded) and whether
        its seal matches.

        A sealed snapshot is parsed one object (line) at a time and any other as a whole, each document
        let go once taken: never all 20,000 parsed documents of 10k services at once.
        """
        path = str(self.snapshot_path)
        try:
            raw = self.snapshot_path.read_bytes()
        except OSError as err:
            raise StorageError(path, "read the store snapshot", _reason(err)) from err
        self._snapshot_bytes = len(raw)
        if _sealed(raw) and (layout := _compacted(raw)) is not None:
            return layout[0], layout[1], True
        log.info("%s is not sealed by this Velvet (written by another, or changed since): validating "
                 "each of its objects", path)
        try:
            data = json.loads(raw)  # not orjson: ~20 ms faster at 10k services, but 17 MB more at its peak
            version = int(data.get("version", 0))
            items = data.get("objects", [])
            if not isinstance(items, list):
                raise ValueError('"objects" is not a list')
        except (ValueError, AttributeError, TypeError) as err:
            raise StorageError(path, "read the store snapshot", _reason(err)) from err
        return version, _released(items), False

    def _read_journal(self) -> tuple[list[_Line], int]:
        """The journal's complete lines and where they end (a torn last line lies beyond)."""
        try:
            raw = self.journal_path.read_bytes()
        except FileNotFoundError:
            return [], 0
        except OSError as err:
            raise StorageError(self.journal_path, "read the store journal", err) from err
        lines: list[_Line] = []
        end = 0
        while (stop := raw.find(b"\n", end) + 1) > 0:
            text = raw[end:stop]
            try:
                lines.append(_Line(len(lines) + 1, text, json.loads(text), sealed=_sealed(text)))
            except ValueError as err:
                lines.append(_Line(len(lines) + 1, text, None, f"not a JSON line: {err}"))
            end = stop
        return lines, end

    def _check_journal_start(self, lines: list[_Line], version: int, have_snapshot: bool) -> None:
        """Refuse a journal that does not follow on from the snapshot (or from nothing, without one)."""
        first = lines[0].entry if lines else None
        since = first.get("since") if isinstance(first, dict) else None
        if have_snapshot:
            if isinstance(since, int) and since > version:
                raise StorageError(self.journal_path, "load the store", (
                    f"the journal starts at version {since} but {self.snapshot_path.name} holds only up to "
                    f"{version}: changes in between are missing; restore the {self.snapshot_path.name} "
                    "this journal follows"))
            return
        if lines and since != 0:
            where = f"at version {since}" if isinstance(since, int) else "after an unknown version"
            raise StorageError(self.journal_path, "load the store", (
                f"{self.snapshot_path.name} is missing and the journal starts {where}, so the objects "
                f"saved before it are lost; restore {self.snapshot_path} (or move both files aside to "
                "start an empty store)"))

    def _replay(self, line: _Line, version: int, objects: dict[Key, KubeObject],
                quarantine: list[dict[str, Any]], seen: dict[str, str]) -> int:
        """Apply one journal line newer than `version` to `objects`; the version after it."""
        path = str(self.journal_path)
        where = f"line {line.number}"
        entry = line.entry
        try:
            if line.error:
                raise ValueError(line.error)
            newer = int(entry["version"])
            deletes = [(str(kind), str(ns), str(name)) for kind, ns, name in entry["delete"]]
            upserts = list(entry["upsert"])
        except (KeyError, TypeError, ValueError) as err:
            self._quarantine(quarantine, path, where, _reason(err), text=line.text.decode(errors="replace"))
            return version
        if newer <= version:
            return version  # already in the snapshot (a crash interrupted compaction)
        for key in deletes:
            objects.pop(key, None)
        for index, item in enumerate(upserts, start=1):
            obj = self._decode(item, path, line.number, f"{where}, object {index}", quarantine, seen,
                               line.sealed)
            if obj is not None:
                objects[key_of(obj)] = obj
            elif (claimed := _raw_key(item)) is not None:
                objects.pop(claimed, None)  # its older state is not its current one
        return newer

    def _decode(self, item: Any, path: str, document: int, where: str, quarantine: list[dict[str, Any]],
                seen: dict[str, str], sealed: bool) -> KubeObject | None:
        """One saved object, or None when it no longer decodes (then it is quarantined).

        From a `sealed` text, a kind `read_stored` reads is taken as written; anything else is validated.
        """
        if sealed and type(item) is dict:
            try:
                found = read_stored(item, seen.setdefault)
            except Exception:  # not the shape this code writes after all: the strict decoder says why
                found = None
            if found is not None:
                return found
        if isinstance(item, dict | list):
            share_strings(item, seen)
        try:
            return from_dict(item, path=path, document=document, trusted=True)
        except InvalidManifest as err:
            reason = f"{err.field}: {err.reason}"
        except Exception as err:  # a decoder bug must not stop the agent either: set the object aside
            reason = f"cannot decode: {err!r}"
        self._quarantine(quarantine, path, where, reason, document=item)
        return None

    def _quarantine(self, quarantine: list[dict[str, Any]], path: str, where: str, reason: str, *,
                    document: Any = None, text: str | None = None) -> None:
        log.warning("%s: %s: %s (moved to %s)", path, where, reason, self.quarantine_path)
        record: dict[str, Any] = {"file": path, "entry": where, "reason": reason}
        if text is None:
            record["document"] = document
        else:
            record["text"] = text
        quarantine.append(record)

    def _save_quarantine(self) -> bool:
        """Append the set-aside documents to the quarantine file, durably; False (logged) when it failed."""
        if not self._unsaved:
            return True
        data = "".join(json.dumps(q, sort_keys=True, default=str) + "\n" for q in self._unsaved).encode()
        try:
            _append_whole(self.quarantine_path, data)
        except StorageError as err:
            log.warning("%s; the documents stay in the store files until they can be saved", err)
            return False
        self._unsaved.clear()
        return True

    def _cut_tail(self) -> None:
        """Cut the journal back to its last complete line; on failure the next append cuts it first."""
        try:
            self._truncate_journal(self._journal_bytes)
        except StorageError as err:
            log.warning("%s; cut before the next change is appended", err)
            return
        self._tail_dirty = False

    def _truncate_journal(self, size: int) -> None:
        fd = open_append(self.journal_path)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError as err:
            raise StorageError(self.journal_path, "truncate", err) from err
        finally:
            os.close(fd)


class FileBackend:
    """The `Backend` of a single agent: a `StateFiles` directory; nobody else writes there."""

    own_versions = False

    def __init__(self, state_dir: Path) -> None:
        self.files = StateFiles(state_dir)

    def open(self) -> Loaded | None:
        """Prepare the directory; the saved state, or None when nothing was saved."""
        self.files.prepare()
        if self.files.exists():
            return self.files.load()
        if self.files.journal_path.exists():
            log.warning("%s: no snapshot and an empty journal: starting an empty store", self.files.directory)
        return None

    def record(self, since: int, version: int, upserts: Sequence[KubeObject], deletes: Sequence[Key]) -> int:
        """Journal the change (`StorageError` when it cannot be); it keeps the version it was given."""
        self.files.record(since, version, upserts, deletes)
        return version

    def committed(self, version: int, snapshot: Callable[[], list[KubeObject]]) -> None:
        """Compact once the journal outgrew the snapshot."""
        if self.files.oversized:
            self.compact(version, snapshot())

    def compact(self, version: int, objects: Sequence[KubeObject]) -> None:
        """Fold the journal into a new snapshot; a failure is logged and retried after the next change."""
        try:
            self.files.compact(version, objects)
        except StorageError as err:
            log.warning("%s; the journal keeps every change and compaction is retried later", err)

    def incoming(self) -> list[Any]:
        """Nobody else writes here."""
        return []

    def wait_for(self, version: int, timeout: float) -> bool:
        """Always up to date."""
        return True

    def status(self) -> dict[str, Any]:
        """The store kind and its directory."""
        return {"kind": "local", "directory": str(self.files.directory), "connected": True}

    def close(self) -> None:
        """Nothing to stop."""


def share_strings(node: dict[Any, Any] | list[Any], seen: dict[str, str]) -> None:
    """Replace equal string values by one object (`seen`), in place, through nested dicts and lists.

    The decoded objects keep these strings: without this, each of 10,000 services and slices holds its
    own copy of its namespace, labels, port names, protocol and the like (7 MiB of the store's heap
    after a restart at 10,000 services, for about 60 ms of the load). JSON's keys are shared already.
    """
    pairs = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in pairs:
        if type(value) is str:
            node[key] = seen.setdefault(value, value)
        elif isinstance(value, dict | list):
            share_strings(value, seen)


class _Spans:
    """Where each object's text lies (`_span`), by (kind, namespace), then name: no key tuple per object."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], dict[str, int]] = {}

    def get(self, key: Key) -> int | None:
        group = self.groups.get(key[:2])
        return None if group is None else group.get(key[2])

    def put(self, key: Key, span: int) -> None:
        self.groups.setdefault(key[:2], {})[key[2]] = span

    def pop(self, key: Key) -> None:
        group = self.groups.get(key[:2])
        if group is not None:
            group.pop(key[2], None)


def _compacted(raw: bytes) -> tuple[int, Iterator[Any]] | None:
    """The version and objects of a snapshot in the layout `compact` writes, one line parsed at a time."""
    end = raw.rfind(_VERSION_HEAD)
    if not raw.startswith(_OBJECTS_HEAD) or end < 0:
        return None
    try:
        version = int(raw[end + len(_VERSION_HEAD): raw.rindex(_SEAL_HEAD)])
    except ValueError:
        return None
    return version, _parsed_lines(raw, len(_OBJECTS_HEAD), end)


def _parsed_lines(raw: bytes, start: int, end: int) -> Iterator[Any]:
    """The objects between `start` and `end`, one per line (JSON text holds no raw newline)."""
    while start < end:
        stop = raw.find(b",\n", start, end)
        stop = end if stop < 0 else stop
        try:
            yield json.loads(raw[start:stop])
        except ValueError:  # not what compact writes after all: the strict decoder refuses it with its text
            yield raw[start:stop].decode(errors="replace")
        start = stop + 2


def _released(items: list[Any]) -> Iterator[Any]:
    """Each item of `items`, let go from the list once taken."""
    for index, item in enumerate(items):
        items[index] = None
        yield item


def _sealed(text: bytes) -> bool:
    """Whether a snapshot or journal line ends with the seal by this code of everything before it."""
    cut = len(text) - len(_SEAL_TAIL) - SEAL_CHARS - len(_SEAL_HEAD)
    head = cut + len(_SEAL_HEAD)
    return (cut > 0 and text.endswith(_SEAL_TAIL) and text[cut:head] == _SEAL_HEAD
            and text[head:-len(_SEAL_TAIL)] == seal(memoryview(text)[:cut]))


def _span(start: int, length: int) -> int:
    """Where a text lies in the snapshot followed by the journal, as one int: start << 32 | length."""
    return start << 32 | length


def _dump(obj: KubeObject) -> bytes:
    """An object's JSON text as the store writes it: keys sorted, UTF-8, as etcd_store.encode writes it."""
    return orjson.dumps(to_dict(obj), option=orjson.OPT_SORT_KEYS)


def _append_whole(path: Path, data: bytes) -> None:
    """Append `data` to `path` and fsync it, or leave the file as it was and raise `StorageError`."""
    fd = open_append(path)
    size = -1
    try:
        size = os.fstat(fd).st_size
        _write_all(fd, data)
        os.fsync(fd)
    except OSError as err:
        if size >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
        raise StorageError(path, "append to", err) from err
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _reason(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"missing field {err}"
    return str(err)


def _raw_key(item: Any) -> Key | None:
    """The store key a saved object claims, when it names one."""
    if not isinstance(item, dict) or not isinstance(meta := item.get("metadata"), dict):
        return None
    kind, namespace, name = item.get("kind"), meta.get("namespace", ""), meta.get("name")
    if isinstance(kind, str) and isinstance(namespace, str) and isinstance(name, str):
        return (kind, namespace, name)
    return None
