"""Test the etcd client and the etcd-backed store against a real etcd, in a network namespace of the test.

Each test starts its own etcd (Debian's etcd-server) on the loopback of a namespace it creates,
with a private temporary data dir; the test thread works inside that namespace, and the etcd
process is stopped by its pid and the namespace removed by name, whatever happened.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
import shutil
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from velvet.durable import StorageError
from velvet.model import Namespace, ObjectMeta, Service
from velvet.model.codec import to_dict
from velvet.model.service import ServicePort, ServiceSpec
from velvet.sandbox import netlink
from velvet.sources.delta import Delta
from velvet.sources.etcd_client import EtcdClient, EtcdCompacted, EtcdError, Event, KeyValue, Op, as_event
from velvet.sources.etcd_store import DEFAULT_PREFIX, HEAD, EtcdBackend, object_key
from velvet.sources.local import LocalStore, StoreError
from velvet.system.netns import in_netns

pytestmark = pytest.mark.privileged

T = TypeVar("T")
URL = "http://127.0.0.1:2379"


@dataclass
class Etcd:
    """A running etcd of one test: where it listens, its data, its process."""

    netns: str
    data: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start etcd (again, on the same data) and wait until it answers."""
        peer = "http://127.0.0.1:2380"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "etcd", "--name", "t", "--data-dir", str(self.data),
             "--listen-client-urls", URL, "--advertise-client-urls", URL, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", f"t={peer}", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                EtcdClient(URL, timeout=1).status()
                return
            except EtcdError:
                assert time.monotonic() < deadline, "etcd did not answer within 30 s"
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop etcd by its pid."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    """An etcd in a fresh namespace; the test runs inside that namespace."""
    assert shutil.which("etcd"), "etcd is not installed: run scripts/setup.sh"
    name = f"vtest-etcd-{secrets.token_hex(3)}"
    data = tmp_path / "etcd"
    data.mkdir(mode=0o700)
    netlink.create_netns(name)
    server = Etcd(name, data)
    try:
        with netlink.ipr(name) as ipr:
            netlink.set_up(ipr, "lo")
        with in_netns(name):
            server.start()
            yield server
    finally:
        server.stop()
        netlink.remove_netns(name)


def open_store(tmp_path: Path, client: EtcdClient | None = None) -> LocalStore:
    """A store on the test's etcd."""
    return LocalStore.open(tmp_path / "unused", backend=EtcdBackend(client or EtcdClient(URL, timeout=2)))


def namespace(name: str) -> Namespace:
    """A namespace object as apply receives it."""
    return Namespace(ObjectMeta(name=name))


def service(name: str, ns: str = "default") -> Service:
    """A ClusterIP service with one port."""
    return Service(ObjectMeta(name=name, namespace=ns), ServiceSpec(ports=(ServicePort(port=80),)))


def wait_until(what: str, ok: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `ok` until true; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.05)


def drained(store: LocalStore, watch_queue: asyncio.Queue[Delta | None]) -> list[Delta]:
    """The deltas queued so far on a watch taken without an event loop."""
    found = []
    while not watch_queue.empty():
        item = watch_queue.get_nowait()
        if item is not None:
            found.append(item)
    return found


def test_a_stale_transaction_loses_and_changes_nothing(etcd: Etcd) -> None:
    """Test that a transaction made on an old head revision fails, writes nothing, names the current one."""
    client = EtcdClient(URL)
    ok, first, _ = client.txn_if_mod("/t/head", 0, [Op("/t/a", b"1"), Op("/t/head", b"")])
    assert ok
    ok, _, current = client.txn_if_mod("/t/head", 0, [Op("/t/b", b"2"), Op("/t/head", b"")])
    assert not ok
    assert current == first
    assert client.get("/t/b") is None
    assert [kv.key for kv in client.range_prefix("/t/")[1]] == ["/t/a", "/t/head"]


def test_two_writers_never_both_win_the_loser_retries_on_the_new_state(etcd: Etcd, tmp_path: Path) -> None:
    """Test that a store whose view is stale is refused by etcd, catches up and applies on the new state;
    resourceVersions are etcd revisions."""
    a, b = open_store(tmp_path), open_store(tmp_path)
    try:
        assert a.version == b.version > 0  # one of them created the initial namespaces, the other listed them
        a.apply([service("one")])
        version_a = a.version
        # b has not caught up with a's write yet (its follower may lag): its write must still be correct
        b.apply([service("two")])
        assert b.version > version_a
        one, two = b.find("Service", "default", "one"), b.find("Service", "default", "two")
        assert isinstance(one, Service)
        assert isinstance(two, Service)
        assert one.spec.cluster_ip != two.spec.cluster_ip  # b allocated on a's state
        _, kvs = EtcdClient(URL).range_prefix(DEFAULT_PREFIX)
        revisions = {kv.key: kv.mod_revision for kv in kvs}
        assert revisions[f"{DEFAULT_PREFIX}Service/default/two"] == two.metadata.resource_version == b.version
        assert revisions[DEFAULT_PREFIX + HEAD] == b.version
        wait_until("a sees b's service", lambda: a.find("Service", "default", "two") is not None)
        seen = a.find("Service", "default", "two")
        assert isinstance(seen, Service)
        assert (seen.spec.cluster_ip, seen.metadata.resource_version) == (two.spec.cluster_ip, b.version)
        assert a.version == b.version
    finally:
        a.close()
        b.close()


def test_another_writers_changes_reach_the_watch(etcd: Etcd, tmp_path: Path) -> None:
    """Test that what one store writes is streamed as deltas by another store on the same etcd."""
    a, b = open_store(tmp_path), open_store(tmp_path)
    try:
        watch = b.watch()
        a.apply([namespace("blue"), service("echo", "blue")])
        a.delete([service("echo", "blue")])
        deltas: list[Delta] = []

        def streamed() -> bool:
            gone = b.objects("Service") == []  # a read catches up, publishing what the follower queued
            deltas.extend(drained(b, watch._queue))
            return gone and len(deltas) >= 3

        wait_until("b streams a's changes", streamed)
        seen = [(d.kind, d.op, d.obj.metadata.name) for d in deltas]
        assert ("Namespace", "upsert", "blue") in seen
        assert ("Service", "upsert", "echo") in seen
        assert seen[-1] == ("Service", "delete", "echo")
    finally:
        a.close()
        b.close()


class RecordingClient(EtcdClient):
    """A real client that keeps the key and mod revision of every event its watches yield, and hands over
    etcd's answer to a transaction only 0.3 s after it came (the watch brings the change first)."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        super().__init__(endpoint, timeout)
        self.seen: list[tuple[str, int]] = []

    def watch(self, prefix: str, start_revision: int, read: Callable[[Event], T], idle_timeout: float = 30.0,
              skip: Callable[[str, int], bool] | None = None) -> Iterator[tuple[int, list[T]]]:
        def recorded(event: Event) -> T:
            self.seen.append((event.kv.key, event.kv.mod_revision))
            return read(event)

        return super().watch(prefix, start_revision, recorded, idle_timeout, skip)

    def txn_if_mod(self, guard: str, mod_revision: int, ops: Iterable[Op]) -> tuple[bool, int, int]:
        answer = super().txn_if_mod(guard, mod_revision, ops)
        time.sleep(0.3)
        return answer


def test_a_writer_reads_back_only_the_head_of_its_own_change(etcd: Etcd, tmp_path: Path) -> None:
    """Test that a store's watch yields of the store's own apply only the head (its version), not the
    objects it applied when it committed, even when the watch brings them before etcd's answer to the
    transaction does; and every object of another writer's apply."""
    recording = RecordingClient(URL, timeout=2)
    a, b = open_store(tmp_path, recording), open_store(tmp_path)
    try:
        a.apply([service(f"mine{i}") for i in range(50)])
        mine = a.version
        b.apply([service("theirs")])
        wait_until("a takes in b's service", lambda: a.find("Service", "default", "theirs") is not None)
        assert (DEFAULT_PREFIX + HEAD, mine) in recording.seen
        assert [k for k, _ in recording.seen if k.startswith(DEFAULT_PREFIX + "Service/")] == [
            object_key(DEFAULT_PREFIX, ("Service", "default", "theirs"))]
    finally:
        a.close()
        b.close()


def test_a_change_seen_by_the_watch_is_not_kept_while_it_waits(etcd: Etcd, tmp_path: Path) -> None:
    """Test that once another store took in a 100-service change, no watched event of it stays alive
    while the watch waits for the next change, and that the next change still arrives."""
    a, b = open_store(tmp_path), open_store(tmp_path)
    try:
        a.apply([service(f"s{i}") for i in range(100)])
        wait_until("b takes in the 100 services", lambda: len(b.objects("Service")) == 100)
        time.sleep(0.2)  # the watch thread is back waiting on etcd
        gc.collect()
        assert sum(isinstance(o, Event | KeyValue) for o in gc.get_objects()) == 0
        a.apply([service("next")])
        wait_until("b takes in the next one", lambda: b.find("Service", "default", "next") is not None)
    finally:
        a.close()
        b.close()


def test_objects_listed_or_watched_share_equal_strings_and_equal_what_was_written(
        etcd: Etcd, tmp_path: Path) -> None:
    """Test that the services one store reads from etcd, by its first list or through its watch, are
    those another wrote, and that equal strings among them (namespace, port protocol) are one object."""
    watching = open_store(tmp_path)
    a = open_store(tmp_path)
    try:
        a.apply([namespace("blue")] + [service(f"s{i}", "blue") for i in range(100)])
        wait_until("the watch takes in 100 services", lambda: len(watching.objects("Service")) == 100)
        listing = open_store(tmp_path)
        written = {s.metadata.name: to_dict(s) for s in a.objects("Service")}
        for store in (watching, listing):
            services = [s for s in store.objects("Service") if isinstance(s, Service)]
            assert {s.metadata.name: to_dict(s) for s in services} == written
            assert len({id(s.metadata.namespace) for s in services}) == 1
            assert len({id(s.spec.ports[0].protocol) for s in services}) == 1
        listing.close()
    finally:
        a.close()
        watching.close()


def test_a_transaction_over_etcds_limit_is_refused_in_one_line_naming_its_size(
        etcd: Etcd, tmp_path: Path) -> None:
    """Test that 130 services in one apply (etcd's default --max-txn-ops is 128) fail with one line that
    says how many operations the transaction had, and change nothing; a delete and puts together commit."""
    a = open_store(tmp_path)
    try:
        refused = r"refused one transaction of 131 operations .*nothing was changed"
        with pytest.raises(StoreError, match=refused):
            a.apply([service(f"s{i}") for i in range(130)])
        assert a.objects("Service") == []
        a.apply([service("keep"), service("gone")])
        a.delete([service("gone")])
        assert [s.metadata.name for s in open_store(tmp_path).objects("Service")] == ["keep"]
    finally:
        a.close()


def test_reading_a_watched_change_takes_a_few_times_its_text_at_its_peak(etcd: Etcd) -> None:
    """Test that reading a watched change of 2,000 services (20 transactions, read back from an earlier
    revision in one answer) allocates at its peak, beyond the events it returns, less than the size of
    its values' base64 text (0.5 times: the answer is read and parsed 64 KiB at a time); holding the
    whole line took 2 times, the standard json's tree of it 4.2 times (orjson, which first builds a
    tree of its own, more). The events `skip` accepts (by key and revision) are left out."""
    client = EtcdClient(URL)
    start = int(client.status()["header"]["revision"])
    values = [b'{"kind":"Service","metadata":{"name":"s%d","namespace":"default"},"spec":{"clusterIP":'
              b'"10.96.%d.%d","ports":[{"name":"tcp","port":80,"protocol":"TCP","targetPort":8080}]}}'
              % (i, i // 250, i % 250) for i in range(2000)]
    for head in range(20):  # etcd's default --max-txn-ops is 128
        ops = [Op(f"/w/s{i:04d}", values[i]) for i in range(head * 100, head * 100 + 100)]
        assert client.txn_if_mod(f"/w/head{head}", 0, ops)[0]
    text = sum(len(v) * 4 // 3 for v in values)
    watch = client.watch("/w/s", start + 1, as_event, idle_timeout=5)
    events: list[Event] = []
    tracemalloc.start()
    try:
        while len(events) < len(values):
            events += next(watch)[1]
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        del watch  # closes the generator, and its connection
    assert [e.kv.value for e in events] == values
    assert peak - held < text, f"{peak - held} bytes at the peak for {text} bytes of base64"
    own = {e.kv.mod_revision for e in events[:100]}
    again = client.watch("/w/s", start + 1, as_event, idle_timeout=5,
                         skip=lambda key, rev: rev in own and key != "/w/s0000")
    try:
        events = []
        while len(events) < len(values) - 99:
            events += next(again)[1]
    finally:
        del again
    assert [e.kv.value for e in events] == values[:1] + values[100:]
    assert [e.kv.key for e in events] == [f"/w/s{i:04d}" for i in (0, *range(100, 2000))]


class GatedClient(EtcdClient):
    """A real client whose watch waits for `gate` (so the test can compact etcd while it is behind)."""

    gate = threading.Event()

    def watch(self, prefix: str, start_revision: int, read: Callable[[Event], T], idle_timeout: float = 30.0,
              skip: Callable[[str, int], bool] | None = None) -> Iterator[tuple[int, list[T]]]:
        self.gate.wait()
        return super().watch(prefix, start_revision, read, idle_timeout, skip)


def test_compaction_makes_the_follower_list_everything_again(etcd: Etcd, tmp_path: Path) -> None:
    """Test that a watch from a compacted revision fails with EtcdCompacted, and that the store then
    relists: objects removed meanwhile disappear from its view, with a delete delta."""
    a = open_store(tmp_path)
    a.apply([service("old")])
    gated = GatedClient(URL, timeout=2)
    gated.gate.clear()
    b = open_store(tmp_path, gated)
    try:
        watch = b.watch()
        assert b.find("Service", "default", "old") is not None
        a.delete([service("old")])
        a.apply([service("new")])
        client = EtcdClient(URL)
        client.compact(a.version)
        with pytest.raises(EtcdCompacted):
            for _ in client.watch(DEFAULT_PREFIX, 2, as_event, idle_timeout=5):
                pass  # the first answer says the watch was created, the next that its revision is gone
        gated.gate.set()
        wait_until("b relists", lambda: b.find("Service", "default", "new") is not None)
        assert b.find("Service", "default", "old") is None
        ops = [(d.op, d.obj.metadata.name) for d in drained(b, watch._queue)]
        assert ("delete", "old") in ops
        assert ("upsert", "new") in ops
        assert b.version == a.version
    finally:
        gated.gate.set()
        a.close()
        b.close()


def test_etcd_down_fails_writes_in_one_line_and_keeps_reads(etcd: Etcd, tmp_path: Path) -> None:
    """Test that with etcd stopped a write fails with one line and changes nothing, reads keep answering,
    status says disconnected, and the same store writes again once etcd is back."""
    store = open_store(tmp_path)
    try:
        store.apply([service("kept")])
        etcd.stop()
        with pytest.raises(StoreError) as failure:
            store.apply([service("lost")])
        message = str(failure.value)
        assert "\n" not in message
        assert "etcd at" in message
        assert "nothing was changed" in message
        assert store.find("Service", "default", "lost") is None
        assert store.find("Service", "default", "kept") is not None
        assert store.storage_status()["connected"] is False
        etcd.start()
        store.apply([service("back")])
        assert store.find("Service", "default", "back") is not None
        wait_until("the follower reconnects", lambda: store.storage_status()["connected"] is True, 30)
    finally:
        store.close()


def test_a_change_etcd_refuses_as_too_big_is_one_line_and_changes_nothing(etcd: Etcd, tmp_path: Path) -> None:
    """Test that an apply of more objects than one etcd transaction may hold (this etcd keeps the default
    --max-txn-ops, 128; the sandbox's etcd takes 65,536) fails in one line saying so, and nothing of it
    is stored, in the store or in etcd."""
    store = open_store(tmp_path)
    try:
        with pytest.raises(StoreError) as failure:
            store.apply([service(f"s{i:03d}") for i in range(200)])
        message = str(failure.value)
        assert "\n" not in message
        assert "apply fewer objects at once (nothing was changed)" in message
        assert store.find("Service", "default", "s000") is None
        _, stored = EtcdClient(URL).range_prefix("/velvet/registry/")
        assert not [kv for kv in stored if "/Service/" in kv.key]
        store.apply([service(f"s{i:03d}") for i in range(100)])
        assert store.find("Service", "default", "s099") is not None
    finally:
        store.close()


def test_the_store_starts_on_etcd_it_waits_for(tmp_path: Path) -> None:
    """Test that a store whose etcd never answers fails to open with one line naming the endpoint."""
    backend = EtcdBackend(EtcdClient("http://127.0.0.1:9", timeout=0.5), open_timeout=1)
    with pytest.raises(StorageError) as failure:
        LocalStore.open(tmp_path / "unused", backend=backend)
    assert "etcd at http://127.0.0.1:9" in str(failure.value)
    assert "\n" not in str(failure.value)
