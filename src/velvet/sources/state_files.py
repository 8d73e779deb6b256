"""The local store on disk: a snapshot of every object plus an append-only journal of the changes since.

`store.json` is `{"objects": [...], "version": V}` with one object per line, each as `kubectl get -o
json` prints it. `store.journal` holds one JSON line per committed change made after the snapshot,
`{"delete": [[kind, namespace, name], ...], "upsert": [objects], "version": V}`, fsync'd before the
change is published, so a change costs what it touched. Loading reads the snapshot and replays the
journal lines newer than it; a torn last line (the writer died mid-line) is dropped and cut off.
Once the journal outgrows the snapshot the two are compacted: a new snapshot is written atomically
(temp file, fsync, rename, directory fsync), then the journal is emptied; a crash in between leaves
only lines the snapshot already holds, which replay skips by version. Each object's encoding is
cached, so compaction encodes only what the journal did not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from velvet.errors import InvalidManifest
from velvet.model import KubeObject
from velvet.model.codec import from_dict, to_dict
from velvet.sources.index import Key, key_of

STATE_FILE = "store.json"
JOURNAL_FILE = "store.journal"


class StateFiles:
    """The snapshot and journal of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.snapshot_path = state_dir / STATE_FILE
        self.journal_path = state_dir / JOURNAL_FILE
        self._encoded: dict[Key, str] = {}
        self._snapshot_bytes = 0
        self._journal_bytes = 0

    def exists(self) -> bool:
        """A snapshot was saved here."""
        return self.snapshot_path.exists()

    @property
    def oversized(self) -> bool:
        """The journal outgrew the snapshot: time to compact."""
        return self._journal_bytes > self._snapshot_bytes

    def load(self) -> tuple[int, list[KubeObject]]:
        """The saved version and objects (in creation order): the snapshot plus the journal's changes."""
        path = str(self.snapshot_path)
        try:
            data = json.loads(self.snapshot_path.read_bytes())
            self._snapshot_bytes = self.snapshot_path.stat().st_size
            version = int(data.get("version", 0))
            items = data.get("objects", [])
        except (OSError, ValueError, AttributeError) as err:
            raise InvalidManifest(path, 0, "<file>", f"cannot read the store: {err}") from err
        objects: dict[Key, KubeObject] = {}
        for index, item in enumerate(items, start=1):
            obj = from_dict(item, path=path, document=index, trusted=True)
            objects[key_of(obj)] = obj
        for line, entry in enumerate(self._read_journal(), start=1):
            version = self._replay(line, entry, version, objects)
        return version, list(objects.values())

    def record(self, version: int, upserts: Sequence[KubeObject], deletes: Sequence[Key]) -> None:
        """Append one committed change to the journal; durable when this returns."""
        for key in deletes:
            self._encoded.pop(key, None)
        encoded = [self._encode(obj) for obj in upserts]
        text = (f'{{"delete": {json.dumps([list(k) for k in deletes])}, "upsert": [{", ".join(encoded)}], '
                f'"version": {version}}}\n')
        data = text.encode()
        with self.journal_path.open("ab") as out:
            try:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            except OSError:
                out.truncate(self._journal_bytes)  # never leave half a line for the next one to follow
                raise
        self._journal_bytes += len(data)

    def compact(self, version: int, objects: Iterable[KubeObject]) -> None:
        """Write every object as the new snapshot, then empty the journal."""
        lines = ",\n".join(self._encoded.get(key_of(obj)) or self._encode(obj) for obj in objects)
        data = f'{{"objects": [\n{lines}\n], "version": {version}}}\n'.encode()
        tmp = self.snapshot_path.with_name(self.snapshot_path.name + ".tmp")
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.snapshot_path)
        with self.journal_path.open("ab") as journal:
            journal.truncate(0)
            os.fsync(journal.fileno())
        self._fsync_dir()
        self._snapshot_bytes, self._journal_bytes = len(data), 0

    def _encode(self, obj: KubeObject) -> str:
        text = json.dumps(to_dict(obj), sort_keys=True)  # one-shot: the C encoder (json.dump is pure Python)
        self._encoded[key_of(obj)] = text
        return text

    def _read_journal(self) -> list[Any]:
        """The journal's complete lines, parsed; a torn last line is cut off the file."""
        try:
            raw = self.journal_path.read_bytes()
        except FileNotFoundError:
            raw = b""
        entries: list[Any] = []
        end = 0
        while end < len(raw):
            stop = raw.find(b"\n", end) + 1
            try:
                if not stop:
                    raise ValueError("the line has no end")
                entries.append(json.loads(raw[end:stop]))
            except ValueError as err:
                if 0 < stop < len(raw):
                    raise InvalidManifest(str(self.journal_path), len(entries) + 1, "<file>",
                                          f"cannot read the store journal: {err}") from err
                break  # the last line was torn by a crash: the change it held never completed
            end = stop
        if end < len(raw) or not self.journal_path.exists():
            with self.journal_path.open("ab") as journal:
                journal.truncate(end)
                os.fsync(journal.fileno())
            self._fsync_dir()
        self._journal_bytes = end
        return entries

    def _replay(self, line: int, entry: Any, version: int, objects: dict[Key, KubeObject]) -> int:
        """Apply one journal entry newer than `version` to `objects`; the version after it."""
        path = str(self.journal_path)
        try:
            newer = int(entry["version"])
            if newer <= version:
                return version  # already in the snapshot (a crash interrupted compaction)
            deletes = [(str(kind), str(ns), str(name)) for kind, ns, name in entry["delete"]]
            upserts = list(entry["upsert"])
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidManifest(path, line, "<file>", f"cannot read the store journal: {err!r}") from err
        for key in deletes:
            objects.pop(key, None)
        for item in upserts:
            obj = from_dict(item, path=path, document=line, trusted=True)
            objects[key_of(obj)] = obj
        return newer

    def _fsync_dir(self) -> None:
        dir_fd = os.open(self.snapshot_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
