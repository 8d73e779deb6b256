"""Consume a BPF ring buffer map by mapping it directly (BPF_MAP_TYPE_RINGBUF, Linux >= 5.8).

Layout: the consumer page (read-write, offset 0) holds consumer_pos; the producer page (read-only,
offset one page) holds producer_pos and is followed by the data area, which the kernel offers twice
in a row so that a record never wraps. Only the first copy is mapped here: the kernel populates every
page of a ring mapping at mmap time, so the second copy would add the ring's whole size to the
agent's resident memory; the few records that cross the end are read in two pieces instead. Each
record has an 8-byte header (u32 length with BUSY 1<<31 / DISCARD 1<<30 bits, u32 page offset) and is
padded to 8 bytes, so a header never crosses the end. libbpf 1.1's ring_buffer__poll is not used: it has no
budget and never returns while the producer keeps pace. Assumes x86-64 memory ordering (TSO).
"""

from __future__ import annotations

import mmap
import os
import select

import numpy as np
import numpy.typing as npt

from velvet.errors import DatapathError

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8


def _record_size(length: int) -> int:
    """Bytes a record of `length` payload bytes occupies in the ring (header + padding)."""
    return (length + HEADER + 7) & ~7


class RingBuffer:
    """Reader of one ring buffer map; `max_entries` is the map's size in bytes (a power of 2)."""

    def __init__(self, map_fd: int, max_entries: int) -> None:
        page = mmap.PAGESIZE
        if max_entries < page or max_entries & (max_entries - 1):
            raise DatapathError(f"ring buffer size {max_entries} is not a power-of-2 multiple of {page}")
        self._size = max_entries
        self._mask = max_entries - 1
        self.skipped = 0  # records of another size than read_array's dtype, dropped
        self._fd = os.dup(map_fd)
        try:
            self._cons_mm = mmap.mmap(self._fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._prod_mm = mmap.mmap(self._fd, page + max_entries, mmap.MAP_SHARED, mmap.PROT_READ,
                                      offset=page)
        except OSError as exc:
            os.close(self._fd)
            raise DatapathError(f"mapping ring buffer fd {map_fd}: {exc.strerror}", exc.errno or 0) from exc
        self._cons_pos = np.frombuffer(self._cons_mm, dtype=np.uint64, count=1)
        self._prod_pos = np.frombuffer(self._prod_mm, dtype=np.uint64, count=1)
        self._data = np.frombuffer(self._prod_mm, dtype=np.uint8, offset=page)
        self._data32 = self._data.view(np.uint32)
        self._epoll = select.epoll()
        self._epoll.register(self._fd, select.EPOLLIN)

    def fileno(self) -> int:
        """The map fd, readable (EPOLLIN) while records are pending."""
        return self._fd

    def pending(self) -> int:
        """Bytes between the consumer and producer positions."""
        return int(self._prod_pos[0]) - int(self._cons_pos[0])

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds until records are pending; True if there are."""
        if self.pending() > 0:
            return True
        return bool(self._epoll.poll(timeout)) or self.pending() > 0

    def read_raw(self, max_records: int = 4096) -> list[bytes]:
        """Take up to `max_records` committed records as bytes, skipping discarded ones."""
        cons = int(self._cons_pos[0])
        prod = int(self._prod_pos[0])
        out: list[bytes] = []
        while cons < prod and len(out) < max_records:
            off = cons & self._mask
            hdr = int(self._data32[off >> 2])
            if hdr & BUSY:
                break
            length = hdr & ~(BUSY | DISCARD)
            if not hdr & DISCARD:
                out.append(self._payload(off, length))
            cons += _record_size(length)
        self._cons_pos[0] = cons
        return out

    def _payload(self, off: int, length: int) -> bytes:
        """The `length` payload bytes of the record whose header is at `off`, in two pieces past the end."""
        start = off + HEADER
        end = start + length
        if end <= self._size:
            return self._data[start:end].tobytes()
        return self._data[start:].tobytes() + self._data[: end - self._size].tobytes()

    def read_array(self, dtype: np.dtype[np.void], max_records: int = 65536) -> npt.NDArray[np.void]:
        """Take up to `max_records` committed records of one fixed-size type as a structured array.

        Runs of records of exactly dtype.itemsize bytes (up to the end of the data area) are found by
        checking their headers in numpy (positions are arithmetic) and copied in one strided copy; a
        record that crosses the end is copied alone; discarded records are skipped, records of
        another size are dropped (counted in `skipped`), and reading stops at the first record still
        BUSY. Headers are read before the data they cover.
        """
        length = dtype.itemsize
        stride = _record_size(length)
        cons = int(self._cons_pos[0])
        prod = int(self._prod_pos[0])
        parts: list[npt.NDArray[np.void]] = []
        taken = 0
        while cons < prod and taken < max_records:
            off = cons & self._mask
            run = min((prod - cons) // stride, max_records - taken, (self._size - off) // stride)
            if run:
                words = off >> 2
                headers = np.array(self._data32[words: words + run * (stride >> 2): stride >> 2])
                bad = np.flatnonzero(headers != length)
                good = int(bad[0]) if bad.size else run
                if good:
                    view = np.ndarray((good,), dtype=dtype, buffer=self._data, offset=off + HEADER,
                                      strides=(stride,))
                    parts.append(view.copy())
                    cons += good * stride
                    taken += good
                    continue
            hdr = int(self._data32[off >> 2])  # one record that breaks the run
            if hdr & BUSY:
                break
            if hdr == length:  # a whole record that crosses the end of the data area
                parts.append(np.frombuffer(self._payload(off, length), dtype=dtype).copy())
                taken += 1
            elif not hdr & DISCARD:
                self.skipped += 1
            cons += _record_size(hdr & ~(BUSY | DISCARD))
        self._cons_pos[0] = cons
        if not parts:
            return np.empty(0, dtype=dtype)
        if len(parts) == 1:
            return parts[0]
        # Joined as opaque bytes: numpy's concatenate of structured arrays makes their fields native-endian
        # (values kept, bytes swapped), and the flow decoder, which reads the ring's bytes, saw addresses
        # and ports swapped.
        raw = np.dtype((np.void, dtype.itemsize))
        return np.concatenate([part.view(raw) for part in parts]).view(dtype)

    def close(self) -> None:
        """Unmap the ring and release the fd."""
        if self._fd < 0:
            return
        self._epoll.close()
        del self._cons_pos, self._prod_pos, self._data, self._data32
        self._cons_mm.close()
        self._prod_mm.close()
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
