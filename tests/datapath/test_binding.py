"""Tests of the libbpf binding against the real kernel (root): load, maps, pins, attach, test_run, ring."""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from ctypes import Structure, c_uint8, c_uint16, c_uint32, c_uint64
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from velvet.datapath import build, features, libbpf
from velvet.datapath.attach import (
    BPF_CGROUP_INET4_CONNECT,
    attach_cgroup,
    attach_tc_legacy,
    attach_tcx,
    attach_tracepoint,
    detach_pinned,
    list_pinned_links,
)
from velvet.datapath.bpfobject import BpfObject, load_over_pins
from velvet.datapath.btf import struct_layouts
from velvet.datapath.maps import BPF_EXIST, BPF_NOEXIST, Map
from velvet.datapath.ringbuf import RingBuffer
from velvet.datapath.testrun import SkBuff, skb_ctx, test_run
from velvet.errors import DatapathError, KeyNotFound, MapFull, VerifierError
from velvet.system import mounts
from velvet.system.netns import in_netns, netns_inode

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and a BPF-capable kernel"),
]

FIXTURES = Path(__file__).parent / "bpf_fixtures"
EVENT = np.dtype([("seq", "<u8"), ("cpu", "<u4"), ("tag", "<u4")])


class Pair(Structure):
    """struct pair of binding.bpf.c."""

    _fields_ = [("a", c_uint32), ("b", c_uint16), ("c", c_uint8), ("d", c_uint8), ("e", c_uint64)]


class LpmV4(Structure):
    """struct lpm_v4 of binding.bpf.c."""

    _fields_ = [("prefixlen", c_uint32), ("addr", c_uint32)]


def fixture_object(name: str) -> Path:
    """Compile tests/datapath/bpf_fixtures/<name>.bpf.c into the build dir."""
    return build.compile(FIXTURES / f"{name}.bpf.c", build.build_dir() / "fixtures" / f"{name}.bpf.o")


@pytest.fixture(scope="session")
def binding_o() -> Path:
    return fixture_object("binding")


@pytest.fixture
def obj(binding_o: Path) -> Iterator[BpfObject]:
    with BpfObject.open(binding_o) as o:
        yield o.load()


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    path = mounts.ensure_bpffs() / f"velvet-test-{secrets.token_hex(4)}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"velvet-tb-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def cgroup() -> Iterator[Path]:
    path = mounts.cgroup2_mount() / f"velvet-test-{secrets.token_hex(4)}"
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()


def counter(m: Map[c_uint32, c_uint64], slot: int) -> int:
    value = m.lookup(c_uint32(slot))
    assert value is not None
    return int(value.value)


def counters(o: BpfObject) -> Map[c_uint32, c_uint64]:
    return o.map("test_counters").typed(c_uint32, c_uint64)


def send_udp_on_lo(count: int = 3) -> None:
    """Send a few UDP datagrams to 127.0.0.1 in the calling thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"velvet", ("127.0.0.1", 9))


# --- objects and maps ----------------------------------------------------------------------------


def test_that_programs_and_maps_are_listed_with_kernel_ids(obj: BpfObject) -> None:
    progs = obj.programs()
    assert {"tc_rewrite", "tc_count_a", "cg_connect4", "tc_events", "tp_getppid"} <= set(progs)
    assert progs["tc_rewrite"].prog_type == 3
    assert progs["cg_connect4"].prog_type == 18
    assert progs["tc_rewrite"].id > 0
    assert progs["tc_rewrite"].fd >= 0
    types = {name: m.info.type for name, m in obj.maps().items()}
    assert types == {"test_hash": "hash", "test_small": "hash", "test_lpm": "lpm_trie",
                     "test_percpu": "percpu_hash", "test_counters": "array", "test_events": "ringbuf"}
    with pytest.raises(DatapathError, match="no map"):
        obj.map("nope")


def test_that_hash_map_crud_and_iteration_work(obj: BpfObject) -> None:
    m = obj.map("test_hash").typed(c_uint32, Pair)
    assert m.lookup(c_uint32(1)) is None
    m.update(c_uint32(1), Pair(a=1, b=2, c=3, d=4, e=5))
    got = m.lookup(c_uint32(1))
    assert got is not None
    assert (got.a, got.b, got.c, got.d, got.e) == (1, 2, 3, 4, 5)
    with pytest.raises(DatapathError) as exists:
        m.update(c_uint32(1), Pair(), BPF_NOEXIST)
    assert exists.value.errno == errno.EEXIST
    with pytest.raises(KeyNotFound):
        m.update(c_uint32(2), Pair(), BPF_EXIST)
    for i in range(2, 50):
        m.update(c_uint32(i), Pair(a=i))
    keys = list(m.keys())
    assert sorted(k.value for k in keys) == sorted(k.value for k in m) == list(range(1, 50))
    assert {k.value: v.a for k, v in m.items()} == {i: i for i in range(1, 50)}
    assert m.count() == 49
    for k in m:  # deleting while iterating must neither skip nor repeat
        assert m.delete(k)
    assert m.count() == 0
    assert not m.delete(c_uint32(1))
    m.update(c_uint32(7), Pair())
    m.clear()
    assert m.count() == 0


def test_that_a_full_map_raises_map_full_with_capacity(obj: BpfObject) -> None:
    m = obj.map("test_small").typed(c_uint32, c_uint64)
    for i in range(4):
        m.update(c_uint32(i), c_uint64(i))
    with pytest.raises(MapFull) as full:
        m.update(c_uint32(99), c_uint64(0))
    assert (full.value.map_name, full.value.capacity) == ("test_small", 4)
    m.clear()
    with pytest.raises(MapFull):
        m.update_batch([c_uint32(i) for i in range(10)], [c_uint64(i) for i in range(10)])


def test_that_batch_operations_round_trip_on_a_hash_map(obj: BpfObject) -> None:
    m = obj.map("test_hash").typed(c_uint32, Pair)
    keys = [c_uint32(i) for i in range(1000)]
    m.update_batch(keys, [Pair(a=i, e=i * 3) for i in range(1000)])
    got = {k.value: (v.a, v.e) for k, v in m.lookup_batch()}
    assert got == {i: (i, i * 3) for i in range(1000)}
    # deleting present and absent keys: the absent ones are skipped
    assert m.delete_batch([c_uint32(i) for i in range(0, 2000, 2)]) == 500
    assert m.count() == 500
    assert m.lookup(c_uint32(2)) is None
    assert m.lookup(c_uint32(3)) is not None
    # a full map: count() (from batch chunks) agrees with a key-by-key walk
    m.update_batch([c_uint32(i) for i in range(m.info.max_entries)], [Pair()] * m.info.max_entries)
    assert m.count() == sum(1 for _ in m) == m.info.max_entries


def test_that_counting_entries_reads_batches_not_one_key_per_syscall(obj: BpfObject,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that count() (the agent's map-fill gauges, every few seconds on every map) reads a 1,000-entry
    hash map with BPF_MAP_LOOKUP_BATCH chunks and never key by key."""
    m = obj.map("test_hash").typed(c_uint32, Pair)
    m.update_batch([c_uint32(i) for i in range(1000)], [Pair()] * 1000)
    calls = {"bpf_map_lookup_batch": 0, "bpf_map_get_next_key": 0}
    for name in calls:
        def counted(*args: object, _real: object = getattr(libbpf, name), _name: str = name) -> int:
            calls[_name] += 1
            return int(_real(*args))  # type: ignore[operator]
        monkeypatch.setattr(libbpf, name, counted)
    assert m.count() == 1000
    assert calls["bpf_map_get_next_key"] == 0
    assert 1 <= calls["bpf_map_lookup_batch"] <= 2


def test_that_lpm_trie_batches_fall_back_and_longest_prefix_wins(obj: BpfObject) -> None:
    m = obj.map("test_lpm").typed(LpmV4, c_uint32)
    net = int.from_bytes(bytes([10, 1, 2, 0]), "little")  # addresses in network byte order
    m.update_batch([LpmV4(8, net & 0xFF), LpmV4(24, net)], [c_uint32(8), c_uint32(24)])
    assert sorted(v.value for _, v in m.lookup_batch()) == [8, 24]
    host = int.from_bytes(bytes([10, 1, 2, 3]), "little")
    hit = m.lookup(LpmV4(32, host))
    other = m.lookup(LpmV4(32, int.from_bytes(bytes([10, 9, 9, 9]), "little")))
    assert hit is not None
    assert hit.value == 24
    assert other is not None
    assert other.value == 8
    assert m.delete_batch([LpmV4(24, net), LpmV4(16, net)]) == 1
    assert m.count() == 1


def test_that_per_cpu_maps_hold_one_value_per_possible_cpu(obj: BpfObject) -> None:
    m = obj.map("test_percpu").typed(c_uint32, c_uint64)
    ncpus = libbpf.num_possible_cpus()
    assert m.per_cpu
    m.update(c_uint32(1), c_uint64(7))  # one value: copied to every CPU
    values = m.lookup_percpu(c_uint32(1))
    assert values is not None
    assert [v.value for v in values] == [7] * ncpus
    m.update(c_uint32(2), [c_uint64(i) for i in range(ncpus)])
    got = {k.value: [x.value for x in cast(list[c_uint64], v)] for k, v in m.lookup_batch()}
    assert got == {1: [7] * ncpus, 2: list(range(ncpus))}


def test_that_a_ctypes_size_mismatch_is_refused_with_both_sizes(obj: BpfObject) -> None:
    with pytest.raises(DatapathError, match=r"test_hash: value type c_u\w+ is 8 bytes .* 16"):
        obj.map("test_hash").typed(c_uint32, c_uint64)


def test_that_pinned_maps_are_readopted_by_a_second_load(binding_o: Path, pin_dir: Path) -> None:
    with BpfObject.open(binding_o, pin_dir=pin_dir) as first:
        first.load()
        first.map("test_hash").typed(c_uint32, Pair).update(c_uint32(42), Pair(a=4242))
    assert (pin_dir / "test_hash").exists()
    assert not any(".bss" in p.name for p in pin_dir.iterdir())
    with BpfObject.open(binding_o, pin_dir=pin_dir) as second:
        second.load()
        got = second.map("test_hash").typed(c_uint32, Pair).lookup(c_uint32(42))
        assert got is not None
        assert got.a == 4242
    with Map.from_pin(pin_dir / "test_hash", c_uint32, Pair) as pinned:
        assert [k.value for k in pinned] == [42]


def test_that_an_upgrade_that_changes_a_pinned_map_carries_the_entries_that_still_fit(pin_dir: Path) -> None:
    """Test that loading an object over the pins of an older layout replaces them, gives the new maps whose
    key and value sizes stayed the old entries (a change of type included: LRU to hash, as ct4's) and
    starts the others empty; the new pins are what a later load adopts."""
    with BpfObject.open(fixture_object("layout_old"), pin_dir=pin_dir) as old:
        old.load()
        old.map("kept").typed(c_uint32, c_uint64).update(c_uint32(7), c_uint64(70))
        old.map("resized").typed(c_uint32, c_uint32).update(c_uint32(1), c_uint32(10))
        old.map("same").typed(c_uint32, c_uint64).update(c_uint32(2), c_uint64(20))
    new_o = fixture_object("layout_new")
    with load_over_pins(new_o, pin_dir, lambda: list(pin_dir.iterdir())) as new:
        assert new.map("kept").info.type == "hash"
        assert cast(c_uint64, new.map("kept").typed(c_uint32, c_uint64).lookup(c_uint32(7))).value == 70
        assert cast(c_uint64, new.map("same").typed(c_uint32, c_uint64).lookup(c_uint32(2))).value == 20
        assert new.map("resized").count() == 0
    with load_over_pins(new_o, pin_dir, lambda: list(pin_dir.iterdir())) as again:
        assert cast(c_uint64, again.map("kept").typed(c_uint32, c_uint64).lookup(c_uint32(7))).value == 70


def test_that_a_verifier_rejection_carries_the_whole_log() -> None:
    with BpfObject.open(fixture_object("rejected")) as o, pytest.raises(VerifierError) as rejected:
        o.load()
    log = rejected.value.log
    assert "BEGIN PROG LOAD LOG" in log
    assert "END PROG LOAD LOG" in log
    assert "invalid mem access 'map_value_or_null'" in log
    assert "processed" in log
    assert rejected.value.errno == errno.EACCES


# --- test_run and BTF ----------------------------------------------------------------------------


def test_that_test_run_returns_retval_and_the_rewritten_packet(obj: BpfObject) -> None:
    packet = bytes(range(60))
    res = test_run(obj.program("tc_rewrite"), packet, ctx=skb_ctx(ifindex=1))
    assert res.retval == 5
    assert res.data_out == packet[:12] + b"\x88\xb5" + packet[14:]
    assert res.duration_ns >= 0
    assert len(res.ctx_out) == ctypes.sizeof(SkBuff)
    assert test_run(obj.program("tc_rewrite"), packet, ctx=skb_ctx(mark=7), repeat=10).retval == 2


def test_that_skb_ctx_and_struct_mirrors_match_btf(binding_o: Path) -> None:
    layouts = struct_layouts(binding_o)
    skb = layouts["__sk_buff"]
    assert skb.size == ctypes.sizeof(SkBuff)
    for name, *_ in SkBuff._fields_:
        assert skb.fields[name] == getattr(SkBuff, name).offset, name
    for mirror in (Pair, LpmV4):
        layout = layouts[mirror.__name__.lower() if mirror is Pair else "lpm_v4"]
        assert layout.size == ctypes.sizeof(mirror)
        assert layout.fields == {f[0]: getattr(mirror, f[0]).offset for f in mirror._fields_}


# --- attach ----------------------------------------------------------------------------------------


def test_that_a_pinned_tcx_link_survives_closing_and_is_updated_in_place(
        binding_o: Path, pin_dir: Path, netns: str) -> None:
    link_pin = pin_dir / "links" / "lo_ingress"
    with in_netns(netns):
        with BpfObject.open(binding_o, pin_dir=pin_dir) as o:
            o.load()
            link = attach_tcx(o.program("tc_count_a"), 1, "ingress", link_pin)
            info = link.info()
            assert (info.type, info.ifindex, info.prog_id) == ("tcx", 1, o.program("tc_count_a").id)
            link_id = info.id
            link.close()
        counts = Map.from_pin(pin_dir / "test_counters", c_uint32, c_uint64)
        send_udp_on_lo()  # every fd of the object and link is closed: the pin keeps it attached
        assert counter(counts, 0) >= 3
        assert counter(counts, 1) == 0
        with BpfObject.open(binding_o, pin_dir=pin_dir) as o2:
            o2.load()
            link = attach_tcx(o2.program("tc_count_b"), 1, "ingress", link_pin)
            assert link.id == link_id
            assert link.info().prog_id == o2.program("tc_count_b").id
        before_a = counter(counts, 0)
        send_udp_on_lo()
        assert counter(counts, 0) == before_a
        assert counter(counts, 1) >= 3
        assert [(p.name, i.type) for p, i in list_pinned_links(link_pin.parent)] == [("lo_ingress", "tcx")]
        assert detach_pinned(link_pin)
        assert not link_pin.exists()
        link.close()
        before_b = counter(counts, 1)
        send_udp_on_lo()
        assert counter(counts, 1) == before_b
        counts.close()


def test_that_the_clsact_fallback_attaches_replaces_and_detaches(obj: BpfObject, netns: str) -> None:
    counts = counters(obj)
    with in_netns(netns):
        link = attach_tc_legacy(obj.program("tc_count_a"), 1, "ingress")
        assert link.info().prog_id == obj.program("tc_count_a").id
        send_udp_on_lo()
        assert counter(counts, 0) >= 3
        link.update(obj.program("tc_count_b"))
        send_udp_on_lo()
        assert counter(counts, 1) >= 3
        link.detach()
        before = (counter(counts, 0), counter(counts, 1))
        send_udp_on_lo()
        assert (counter(counts, 0), counter(counts, 1)) == before


def test_that_a_cgroup_connect4_link_refuses_connects_of_its_cgroup(
        obj: BpfObject, cgroup: Path, pin_dir: Path) -> None:
    code = ("import os, socket, sys\n"
            "open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid()))\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try:\n    s.connect(('127.0.0.1', 9)); print('connected')\n"
            "except PermissionError:\n    print('refused')\n")

    def connect_from_cgroup() -> str:
        return subprocess.run([sys.executable, "-c", code, str(cgroup)], capture_output=True, text=True,
                              check=True).stdout.strip()

    link = attach_cgroup(obj.program("cg_connect4"), cgroup, BPF_CGROUP_INET4_CONNECT, pin_dir / "cg")
    assert link.info().type == "cgroup"
    assert link.info().cgroup_id == os.stat(cgroup).st_ino
    assert connect_from_cgroup() == "refused"
    assert counter(counters(obj), 2) == 1
    again = attach_cgroup(obj.program("cg_connect4"), cgroup, BPF_CGROUP_INET4_CONNECT, pin_dir / "cg")
    assert again.id == link.id  # re-adopted, not a second attachment
    again.close()
    link.detach()
    assert connect_from_cgroup() == "connected"
    assert not (pin_dir / "cg").exists()


def test_that_a_tracepoint_link_can_be_pinned_and_detached(obj: BpfObject, pin_dir: Path) -> None:
    counts = counters(obj)
    link = attach_tracepoint(obj.program("tp_getppid"), "syscalls", "sys_enter_getppid", pin_dir / "tp")
    assert link.info().type == "perf_event"
    link.close()
    for _ in range(5):
        os.getppid()
    assert counter(counts, 5) >= 5
    assert detach_pinned(pin_dir / "tp")
    before = counter(counts, 5)
    os.getppid()
    assert counter(counts, 5) == before


# --- ring buffer ---------------------------------------------------------------------------------


def test_that_ring_buffer_records_arrive_in_order_without_loss_across_wraps(obj: BpfObject) -> None:
    events = obj.map("test_events")
    with RingBuffer(events.fd, events.info.max_entries) as ring:
        assert not ring.wait(0.01)
        produce = obj.program("tc_events")
        seen = []
        for _ in range(300):  # 300 * 64 records of 24 bytes through a 4 KiB ring: many wraps
            test_run(produce, bytes([64, 1]) + bytes(58))
            assert ring.wait(0.5)
            seen.append(ring.read_array(EVENT)["seq"])
        got = np.concatenate(seen)
        expected = np.arange(300 * 64)
        assert np.array_equal(got, expected[expected % 3 != 2])  # discarded records skipped
        assert counter(counters(obj), 4) == 0
        assert ring.skipped == 0
        raw = obj.program("tc_raw_event")
        for n in range(40):
            test_run(raw, bytes([n]) + bytes(range(1, 60)))
        records = ring.read_raw()
        assert [len(r) for r in records] == [1 + (n & 15) for n in range(40)]
        assert records[3] == bytes([3]) + bytes(range(1, 4))


def test_that_read_array_copies_long_runs_of_records_across_wraps(obj: BpfObject) -> None:
    events = obj.map("test_events")
    with RingBuffer(events.fd, events.info.max_entries) as ring:
        chunks = []
        for _ in range(100):  # 64 records = 1536 bytes per run: runs start at shifting ring offsets
            test_run(obj.program("tc_events"), bytes([64, 0]) + bytes(58))
            chunk = ring.read_array(EVENT)
            assert len(chunk) == 64
            chunks.append(chunk)
        got = np.concatenate(chunks)
        assert np.array_equal(got["seq"], np.arange(6400))
        assert np.array_equal(got["tag"], np.arange(6400) % 3)


def test_that_records_crossing_the_end_of_the_ring_are_read_whole(obj: BpfObject) -> None:
    events = obj.map("test_events")
    with RingBuffer(events.fd, events.info.max_entries) as ring:
        raw = obj.program("tc_raw_event")
        test_run(raw, bytes([0]) + bytes(15))  # one 16-byte record: the 32-byte ones start mid-stride
        assert ring.read_raw() == [bytes([0])]
        chunks = [ring.read_array(EVENT)]
        for _ in range(10):  # 640 records of 32 bytes from offset 16 in a 4 KiB ring: 5 cross its end
            test_run(obj.program("tc_events"), bytes([64, 0]) + bytes(58))
            chunks.append(ring.read_array(EVENT))
        got = np.concatenate(chunks)
        assert np.array_equal(got["seq"], np.arange(640))
        assert np.array_equal(got["tag"], np.arange(640) % 3)
        assert ring.skipped == 0
        sizes = [1 + (n & 15) for n in range(300)]  # strides of 16 and 24 bytes: several cross the end
        for n in range(300):
            test_run(raw, bytes([n & 255]) + bytes(range(1, 16)))
            assert ring.read_raw() == [bytes([n & 255]) + bytes(range(1, sizes[n]))]


def test_that_a_read_in_several_pieces_keeps_the_dtypes_byte_order(obj: BpfObject) -> None:
    """Test that records read in several pieces (a run up to the ring's end, the record crossing it, a run
    after it) come back in the asked dtype, big-endian fields too, with the bytes the program wrote: joined
    by numpy's concatenate, their fields turned native-endian, and the flow decoder, which reads the
    ring's big-endian addresses, showed 10.244.0.11 as 11.0.244.10."""
    events = obj.map("test_events")
    tag_big_endian = np.dtype([("seq", "<u8"), ("cpu", "<u4"), ("tag", ">u4")])  # as flow_event's saddr
    with RingBuffer(events.fd, events.info.max_entries) as ring:
        raw = obj.program("tc_raw_event")
        test_run(raw, bytes([0]) + bytes(15))  # one 16-byte record: the 24-byte ones cross the end
        ring.read_raw()
        for n in range(10):  # 64 records of 32 bytes per read from offset 16 of 4 KiB: every second crosses
            test_run(obj.program("tc_events"), bytes([64, 0]) + bytes(58))
            chunk = ring.read_array(tag_big_endian)
            assert chunk.dtype == tag_big_endian
            written = chunk.view(EVENT)  # the bytes as the program wrote them
            assert np.array_equal(written["seq"], np.arange(64 * n, 64 * (n + 1)))
            assert np.array_equal(written["tag"], written["seq"] % 3)


def test_that_read_array_stops_at_max_records_and_resumes(obj: BpfObject) -> None:
    events = obj.map("test_events")
    with RingBuffer(events.fd, events.info.max_entries) as ring:
        test_run(obj.program("tc_events"), bytes([60, 1]) + bytes(58))
        first = ring.read_array(EVENT, max_records=5)
        rest = ring.read_array(EVENT)
        assert len(first) == 5
        assert np.array_equal(np.concatenate([first, rest])["seq"],
                                                   [s for s in range(60) if s % 3 != 2])
        assert ring.pending() == 0


# --- namespaces, mounts, features --------------------------------------------------------------


def test_that_in_netns_switches_only_inside_and_restores_on_error(netns: str) -> None:
    def current() -> int:
        return os.stat("/proc/thread-self/ns/net").st_ino

    home = current()
    with in_netns(netns):
        assert current() == netns_inode(netns) != home
    with pytest.raises(RuntimeError), in_netns(netns):
        raise RuntimeError("boom")
    assert current() == home
    with pytest.raises(DatapathError), in_netns("velvet-tb-does-not-exist"):
        pass


def test_that_mounts_and_features_are_detected() -> None:
    assert mounts.fs_type(mounts.cgroup2_mount()) == "cgroup2"
    assert mounts.ensure_bpffs() == mounts.ensure_bpffs()
    checks = {c.name: c for c in features.probe()}
    for name in ("BTF", "bpffs", "cgroup v2", "program type sched_cls", "map type ringbuf", "tcx"):
        assert checks[name].ok, checks[name]
    assert checks["SCTP"].disables == "SCTP NetworkPolicy ports"
    assert features.kernel_release() == os.uname().release
