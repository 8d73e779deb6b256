"""Typed access to a BPF map through its fd, keys and values as ctypes types (needs the bpf() syscall).

Batch operations need Linux >= 5.6 and a map type that implements them; where the kernel answers
EINVAL/ENOTSUPP (e.g. LPM trie) they fall back to one syscall per element.
"""

from __future__ import annotations

import ctypes
import errno
import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from velvet.datapath import libbpf
from velvet.errors import DatapathError, KeyNotFound, MapFull

if TYPE_CHECKING:
    from ctypes import _CData

T = TypeVar("T", bound="_CData")
K = TypeVar("K", bound="_CData")
V = TypeVar("V", bound="_CData")

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

MAP_TYPES: dict[int, str] = dict(enumerate((
    "unspec", "hash", "array", "prog_array", "perf_event_array", "percpu_hash", "percpu_array",
    "stack_trace", "cgroup_array", "lru_hash", "lru_percpu_hash", "lpm_trie", "array_of_maps",
    "hash_of_maps", "devmap", "sockmap", "cpumap", "xskmap", "sockhash", "cgroup_storage",
    "reuseport_sockarray", "percpu_cgroup_storage", "queue", "stack", "sk_storage", "devmap_hash",
    "struct_ops", "ringbuf", "inode_storage", "task_storage", "bloom_filter", "user_ringbuf",
    "cgrp_storage", "arena",
)))
PER_CPU_TYPES = frozenset({"percpu_hash", "percpu_array", "lru_percpu_hash", "percpu_cgroup_storage"})
ARRAY_TYPES = frozenset({"array", "percpu_array"})
_UNSUPPORTED = (errno.EINVAL, errno.EOPNOTSUPP, libbpf.ENOTSUPP)
_FULL = (errno.E2BIG, errno.ENOSPC)
_NO_BATCH_TYPES = frozenset({"lpm_trie"})  # no BPF_MAP_LOOKUP_BATCH in the kernel


@dataclass(frozen=True)
class MapInfo:
    """What the kernel reports about a map (BPF_OBJ_GET_INFO_BY_FD)."""

    id: int
    name: str
    type: str
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def map_info(fd: int) -> MapInfo:
    """Ask the kernel for the description of the map behind `fd`."""
    raw = libbpf.MapInfoStruct()
    size = ctypes.c_uint32(ctypes.sizeof(raw))
    libbpf.check(libbpf.bpf_obj_get_info_by_fd(fd, ctypes.byref(raw), ctypes.byref(size)), "map info")
    return MapInfo(id=raw.id, name=raw.name.decode(), type=MAP_TYPES.get(raw.type, str(raw.type)),
                   key_size=raw.key_size, value_size=raw.value_size, max_entries=raw.max_entries,
                   flags=raw.map_flags)


def _copy(ctype: type[T], buf: bytes | ctypes.Array[ctypes.c_char], offset: int = 0) -> T:
    """A new instance of `ctype` holding a copy of its bytes at `offset` in `buf`."""
    return ctype.from_buffer_copy(buf, offset)  # type: ignore[attr-defined, no-any-return]


def _batch_opts(flags: int = BPF_ANY) -> libbpf.MapBatchOpts:
    """A bpf_map_batch_opts with `sz` set."""
    return libbpf.MapBatchOpts(sz=ctypes.sizeof(libbpf.MapBatchOpts), elem_flags=flags, flags=0)


class Map(Generic[K, V]):
    """A BPF map seen through ctypes key and value types; owns a duplicate of the fd it was given.

    Per-CPU maps (detected from the kernel's map type, or forced with per_cpu=True) hold one value
    per possible CPU: reads return list[V]; writes take one V (copied to every CPU) or a list.
    """

    def __init__(self, fd: int, name: str, key_type: type[K], value_type: type[V], *,
                 per_cpu: bool = False) -> None:
        self.info = map_info(fd)
        self.name = name
        self.key_type = key_type
        self.value_type = value_type
        for what, ctype, size in (("key", key_type, self.info.key_size),
                                  ("value", value_type, self.info.value_size)):
            if ctypes.sizeof(ctype) != size:
                raise DatapathError(f"map {name}: {what} type {ctype.__name__} is {ctypes.sizeof(ctype)} "
                                    f"bytes but the kernel's {what} size is {size}")
        self.per_cpu = per_cpu or self.info.type in PER_CPU_TYPES
        self._ksize = self.info.key_size
        self._stride = (self.info.value_size + 7) & ~7
        self._ncpus = libbpf.num_possible_cpus() if self.per_cpu else 1
        self._vbuf_size = self._stride * self._ncpus if self.per_cpu else self.info.value_size
        self.fd = os.dup(fd)
        self._finalizer = weakref.finalize(self, os.close, self.fd)

    @classmethod
    def from_pin(cls, path: Path, key_type: type[K], value_type: type[V]) -> Map[K, V]:
        """Open a map pinned on bpffs (BPF_OBJ_GET)."""
        fd = libbpf.check(libbpf.bpf_obj_get(str(path).encode()), f"opening pinned map {path}")
        try:
            return cls(fd, path.name, key_type, value_type)
        finally:
            os.close(fd)

    def typed(self, key_type: type[K2], value_type: type[V2]) -> Map[K2, V2]:
        """The same kernel map seen through other ctypes types (sizes are checked)."""
        return Map(self.fd, self.name, key_type, value_type, per_cpu=self.per_cpu)

    def close(self) -> None:
        """Release this view's fd (the kernel map lives on while pinned or used)."""
        self._finalizer()

    def __enter__(self) -> Map[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Map({self.name!r}, {self.info.type}, max_entries={self.info.max_entries})"

    # --- encoding -------------------------------------------------------------------------------

    def _value_bytes(self, value: V | Sequence[V]) -> bytes:
        """Encode a value (or, for per-CPU maps, one value or one per CPU) as the kernel expects."""
        if not self.per_cpu:
            return bytes(cast(V, value))
        per_cpu: list[V] = list(value) if isinstance(value, list | tuple) else [cast(V, value)] * self._ncpus
        if len(per_cpu) != self._ncpus:
            raise DatapathError(f"map {self.name}: {len(per_cpu)} per-CPU values given, "
                                f"{self._ncpus} possible CPUs")
        pad = b"\0" * (self._stride - self.info.value_size)
        return b"".join(bytes(v) + pad for v in per_cpu)

    def _decode_value(self, buf: bytes | ctypes.Array[ctypes.c_char], offset: int = 0) -> V | list[V]:
        """Decode one value (a list of per-CPU values for per-CPU maps) at `offset` in `buf`."""
        if not self.per_cpu:
            return _copy(self.value_type, buf, offset)
        return [_copy(self.value_type, buf, offset + i * self._stride) for i in range(self._ncpus)]

    # --- single elements ------------------------------------------------------------------------

    def lookup(self, key: K) -> V | None:
        """The value for `key`, or None; on a per-CPU map the list of per-CPU values (see lookup_percpu)."""
        return self._lookup(bytes(key))  # type: ignore[return-value]

    def lookup_percpu(self, key: K) -> list[V] | None:
        """The per-CPU values for `key` (one per possible CPU), or None; per-CPU maps only."""
        if not self.per_cpu:
            raise DatapathError(f"map {self.name} ({self.info.type}) is not a per-CPU map")
        return self._lookup(bytes(key))  # type: ignore[return-value]

    def _lookup(self, key: bytes) -> V | list[V] | None:
        """Look up raw key bytes."""
        raw = self._lookup_raw(key)
        return None if raw is None else self._decode_value(raw)

    def _lookup_raw(self, key: bytes) -> bytes | None:
        """The raw value bytes of raw key bytes, or None."""
        out = ctypes.create_string_buffer(self._vbuf_size)
        ret = libbpf.bpf_map_lookup_elem(self.fd, key, out)
        if ret == -errno.ENOENT:
            return None
        libbpf.check(ret, f"lookup in map {self.name}")
        return out.raw

    def update(self, key: K, value: V | Sequence[V], flags: int = BPF_ANY) -> None:
        """Insert or replace one entry; BPF_NOEXIST/BPF_EXIST restrict to create/replace."""
        self._update(bytes(key), self._value_bytes(value), flags)

    def _update(self, key: bytes, value: bytes, flags: int) -> None:
        """Update with raw bytes, translating a full map into MapFull."""
        ret = libbpf.bpf_map_update_elem(self.fd, key, value, flags)
        if ret < 0 and -ret in _FULL and self.info.type not in ARRAY_TYPES:
            raise MapFull(self.name, self.info.max_entries, self.count() + 1)
        if ret == -errno.ENOENT:
            raise KeyNotFound(f"map {self.name}: key does not exist (BPF_EXIST)", errno.ENOENT)
        libbpf.check(ret, f"update of map {self.name}")

    def delete(self, key: K) -> bool:
        """Remove `key`; False if it was not there."""
        ret = libbpf.bpf_map_delete_elem(self.fd, bytes(key))
        if ret == -errno.ENOENT:
            return False
        libbpf.check(ret, f"delete from map {self.name}")
        return True

    # --- iteration ------------------------------------------------------------------------------

    def _raw_keys(self) -> Iterator[bytes]:
        """Walk keys with BPF_MAP_GET_NEXT_KEY, tolerating entries deleted meanwhile.

        The next key is fetched before the current one is yielded (so the caller may delete it);
        when the kernel restarts from the first key because ours vanished, keys already seen are
        skipped, and the walk is bounded so a churning map cannot keep it running forever.
        """
        seen: set[bytes] = set()
        nxt = ctypes.create_string_buffer(max(self._ksize, 1))
        ret = libbpf.bpf_map_get_next_key(self.fd, None, nxt)
        budget = 4 * self.info.max_entries + 1024
        while ret == 0 and budget > 0:
            budget -= 1
            cur = nxt.raw[: self._ksize]
            ret = libbpf.bpf_map_get_next_key(self.fd, cur, nxt)
            if cur not in seen:
                seen.add(cur)
                yield cur
        if ret < 0 and ret != -errno.ENOENT:
            libbpf.check(ret, f"iterating map {self.name}")

    def keys(self) -> Iterator[K]:
        """Every key currently in the map (safe against concurrent deletes)."""
        for raw in self._raw_keys():
            yield _copy(self.key_type, raw)

    def __iter__(self) -> Iterator[K]:
        """Iterate keys, like a dict."""
        return self.keys()

    def items(self) -> Iterator[tuple[K, V]]:
        """Every (key, value) pair; entries that vanish during the walk are skipped."""
        for raw in self._raw_keys():
            value = self._lookup(raw)
            if value is not None:
                yield _copy(self.key_type, raw), value  # type: ignore[misc]

    def count(self) -> int:
        """Number of entries (max_entries for arrays, which always hold every index).

        Counted from BPF_MAP_LOOKUP_BATCH chunks: one syscall per 4,096 entries rather than one per key
        (a 10k-service node's maps took the agent 40-190 ms of CPU every 5 s key by key); maps without
        batch operations (LPM tries) are walked key by key.
        """
        if self.info.type in ARRAY_TYPES:
            return self.info.max_entries
        if self.info.type in _NO_BATCH_TYPES:
            return sum(1 for _ in self._raw_keys())
        return sum(count for _, _, count in self._raw_chunks())

    def clear(self) -> None:
        """Remove every entry (arrays: reset every value to zeros)."""
        if self.info.type in ARRAY_TYPES:
            zero = b"\0" * self._vbuf_size
            for raw in list(self._raw_keys()):
                self._update(raw, zero, BPF_ANY)
            return
        keys = list(self._raw_keys())
        self.delete_raw_batch(keys)

    # --- batches --------------------------------------------------------------------------------

    def update_batch(self, keys: Sequence[K], values: Sequence[V] | Sequence[Sequence[V]],
                     flags: int = BPF_ANY) -> None:
        """Insert or replace many entries with BPF_MAP_UPDATE_BATCH (single updates where unsupported)."""
        if len(keys) != len(values):
            raise DatapathError(f"map {self.name}: {len(keys)} keys but {len(values)} values")
        values_raw = b"".join(self._value_bytes(v) for v in values)
        self.update_raw_batch(b"".join(bytes(k) for k in keys), values_raw, flags)

    def update_raw_batch(self, kbuf: bytes, vbuf: bytes, flags: int = BPF_ANY) -> None:
        """Insert or replace many entries given as concatenated key and value bytes, laid out as
        `lookup_batch_raw` returns them."""
        total = len(kbuf) // self._ksize
        if not total:
            return
        count = ctypes.c_uint32(total)
        opts = _batch_opts(flags)
        ret = libbpf.bpf_map_update_batch(self.fd, kbuf, vbuf, ctypes.byref(count), ctypes.byref(opts))
        if ret == 0:
            return
        done = count.value
        if -ret in _UNSUPPORTED and done == 0:
            for i in range(total):
                self._update(kbuf[i * self._ksize:(i + 1) * self._ksize],
                             vbuf[i * self._vbuf_size:(i + 1) * self._vbuf_size], flags)
            return
        if -ret in _FULL and self.info.type not in ARRAY_TYPES:
            raise MapFull(self.name, self.info.max_entries, self.count() + total - done)
        libbpf.check(ret, f"batch update of map {self.name} (stopped after {done} of {total})")

    def delete_batch(self, keys: Sequence[K]) -> int:
        """Remove many keys with BPF_MAP_DELETE_BATCH; missing keys are ignored; returns how many went."""
        return self.delete_raw_batch([bytes(k) for k in keys])

    def delete_raw_batch(self, keys: list[bytes]) -> int:
        """Remove many keys given as bytes (BPF_MAP_DELETE_BATCH), skipping absent ones; how many went."""
        deleted = 0
        start = 0
        opts = _batch_opts()
        while start < len(keys):
            kbuf = b"".join(keys[start:])
            count = ctypes.c_uint32(len(keys) - start)
            ret = libbpf.bpf_map_delete_batch(self.fd, kbuf, ctypes.byref(count), ctypes.byref(opts))
            deleted += count.value
            if ret == 0:
                break
            if -ret in _UNSUPPORTED and count.value == 0:
                return deleted + self._delete_singles(keys[start:])
            if ret != -errno.ENOENT:
                libbpf.check(ret, f"batch delete from map {self.name}")
            start += count.value + 1  # skip the key that was not there
        return deleted

    def _delete_singles(self, keys: list[bytes]) -> int:
        """Delete raw keys one syscall each; returns how many existed."""
        deleted = 0
        for raw in keys:
            ret = libbpf.bpf_map_delete_elem(self.fd, raw)
            if ret != -errno.ENOENT:
                libbpf.check(ret, f"delete from map {self.name}")
                deleted += 1
        return deleted

    def lookup_batch(self) -> list[tuple[K, V]]:
        """Every entry via BPF_MAP_LOOKUP_BATCH (iteration where unsupported); per-CPU values are lists."""
        result: list[tuple[K, V]] = []
        for kbuf, vbuf, count in self._raw_chunks():
            for i in range(count):
                key = _copy(self.key_type, kbuf, i * self._ksize)
                result.append((key, self._decode_value(vbuf, i * self._vbuf_size)))  # type: ignore[arg-type]
        return result

    def lookup_batch_raw(self) -> tuple[bytes, bytes]:
        """Every entry's key bytes and value bytes, each concatenated in the same order (nothing decoded:
        for numpy views of large maps)."""
        keys: list[bytes] = []
        values: list[bytes] = []
        for kchunk, vchunk in self.lookup_batch_chunks():
            keys.append(kchunk)
            values.append(vchunk)
        return b"".join(keys), b"".join(values)

    def lookup_batch_chunks(self) -> Iterator[tuple[bytes, bytes]]:
        """The entries as `lookup_batch_raw` has them, a chunk of up to 4,096 at a time: a walk that
        decides per entry holds one chunk's copy, not the whole map's."""
        for kbuf, vbuf, count in self._raw_chunks():
            yield (memoryview(kbuf).cast("B")[: count * self._ksize].tobytes(),
                   memoryview(vbuf).cast("B")[: count * self._vbuf_size].tobytes())

    def _raw_chunks(self) -> Iterator[tuple[bytes | ctypes.Array[ctypes.c_char],
                                            bytes | ctypes.Array[ctypes.c_char], int]]:
        """Chunks of (keys, values, count) via BPF_MAP_LOOKUP_BATCH (single entries where unsupported)."""
        chunk = max(1, min(self.info.max_entries, 4096))
        token_in: bytes | None = None
        token_out = ctypes.create_string_buffer(max(self._ksize, 8))
        opts = _batch_opts()
        while True:
            kbuf = ctypes.create_string_buffer(self._ksize * chunk)
            vbuf = ctypes.create_string_buffer(self._vbuf_size * chunk)
            count = ctypes.c_uint32(chunk)
            ret = libbpf.bpf_map_lookup_batch(self.fd, token_in, token_out, kbuf, vbuf,
                                              ctypes.byref(count), ctypes.byref(opts))
            if ret < 0 and -ret in _UNSUPPORTED and token_in is None and count.value == 0:
                for key in self._raw_keys():
                    value = self._lookup_raw(key)
                    if value is not None:
                        yield key, value, 1
                return
            if ret == -errno.ENOSPC and count.value == 0:
                chunk *= 2  # a hash bucket holds more entries than fit: retry with room for them
                continue
            if ret < 0 and ret != -errno.ENOENT:
                libbpf.check(ret, f"batch lookup of map {self.name}")
            yield kbuf, vbuf, count.value
            if ret == -errno.ENOENT:
                return
            token_in = token_out.raw


K2 = TypeVar("K2", bound="_CData")
V2 = TypeVar("V2", bound="_CData")


def untyped(fd: int, name: str) -> Map[Any, Any]:
    """A view of any map with byte-array keys and values of the kernel's sizes."""
    info = map_info(fd)
    return Map(fd, name, ctypes.c_ubyte * info.key_size, ctypes.c_ubyte * info.value_size)
