"""Test that removing a backend programs the maps without walking conntrack, and that the walk follows."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from velvet.agent.config import AgentConfig
from velvet.agent.node import Agent, Dirty
from velvet.controllers.services import LB_TABLES
from velvet.datapath.delta import LbDelta, MapPlan
from velvet.datapath.fake import FakeDatapath
from velvet.datapath.tables import BackendValue, StaleBackend
from velvet.datapath.writer import TableWriter


class CountingDatapath(FakeDatapath):
    """A fake datapath that counts load-balancer writes and conntrack walks (one per flush call)."""

    def __init__(self) -> None:
        super().__init__()
        self.lb_writes = 0
        self.walks = 0

    def write(self, table: str, upserts: Mapping[Any, Any], deletes: Iterable[Any]) -> None:
        self.lb_writes += table in LB_TABLES
        super().write(table, upserts, deletes)

    def flush_backends(self, stale: Sequence[StaleBackend]) -> None:
        self.walks += 1
        super().flush_backends(stale)


def services(count: int) -> str:
    """`count` ClusterIP services, each with an EndpointSlice of two ready endpoints."""
    text = ""
    for i in range(count):
        text += (f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n"
                 f"spec:\n  clusterIP: 10.96.{i // 250}.{i % 250 + 1}\n  ports: [{{port: 80}}]\n")
        text += endpoints(i, ("10.244.1.1", "10.244.1.2"))
    return text


def endpoints(i: int, addresses: Iterable[str]) -> str:
    """The EndpointSlice of service s<i> with these ready addresses on port 8080."""
    listed = ", ".join(f"{{addresses: [{a}], conditions: {{ready: true}}}}" for a in addresses)
    return (f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata: {{name: s{i}-1, labels: {{kubernetes.io/service-name: s{i}}}}}\n"
            f"addressType: IPv4\nendpoints: [{listed}]\nports: [{{port: 8080, protocol: TCP}}]\n")


def test_removing_a_backend_at_n_services_walks_no_conntrack_on_the_apply_path(tmp_path: Path) -> None:
    """Test that a pass dropping one backend at 10 or 300 services writes the same few batches and walks
    conntrack not at all, and that the agent's later flush walks it once for exactly that backend."""
    writes = {}
    for count in (10, 300):
        dp = CountingDatapath()
        config = AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path / str(count))
        agent = Agent(config, dp)
        agent.start()
        agent.apply([{"path": "s.yaml", "text": services(count)}])
        agent.reconcile(Dirty({s.metadata.key for s in agent.store.objects("Service")}))
        dp.lb_writes = dp.walks = 0

        last = count - 1
        agent.apply([{"path": "e.yaml", "text": endpoints(last, ("10.244.1.1",))}])
        agent.reconcile(Dirty({f"default/s{last}"}))
        assert dp.walks == 0
        assert dp.flushed == []
        writes[count] = dp.lb_writes
        slots = [k for k in dp.tables["lb4_services"] if k.backend_slot and k.dport == 80
                 and k.address == f"10.96.{last // 250}.{last % 250 + 1}"]
        assert len(slots) == 1  # the datapath no longer offers the removed backend

        assert agent.flush_stale() == 1
        assert dp.walks == 1
        assert [(s.frontend_address, s.backend_address, s.backend_port) for s in dp.flushed] == [
            (f"10.96.{last // 250}.{last % 250 + 1}", "10.244.1.2", 8080)]
        assert agent.flush_stale() == 0
        assert dp.walks == 1
        agent.store.close()
    assert writes[10] == writes[300] <= len(LB_TABLES)


def test_a_backend_id_pending_a_flush_is_flushed_before_it_is_written_again() -> None:
    """Test that a change reusing a dropped backend's id first flushes its conntrack entries, so no
    connection to the old backend is led to the new one under the same id."""
    dp = CountingDatapath()
    writer = TableWriter(dp)
    stale = StaleBackend("10.96.0.1", 80, 6, 7, "10.244.1.2", 8080)
    writer.write_lb(LbDelta(backends=MapPlan(deletes=[7]), stale=(stale,)))
    writer.write_lb(LbDelta(backends=MapPlan(upserts={8: BackendValue("10.244.1.3", 8080, 6)})))
    assert dp.walks == 0
    writer.write_lb(LbDelta(backends=MapPlan(upserts={7: BackendValue("10.244.1.9", 8080, 6)})))
    assert dp.walks == 1
    assert dp.flushed == [stale]
    assert dp.tables["lb4_backends"] == {7: BackendValue("10.244.1.9", 8080, 6),
                                         8: BackendValue("10.244.1.3", 8080, 6)}


class BlockingDatapath(CountingDatapath):
    """A fake datapath whose flush waits until released, recording the order of flushes and writes."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()
        self.order: list[str] = []

    def write(self, table: str, upserts: Mapping[Any, Any], deletes: Iterable[Any]) -> None:
        self.order += [f"write {k}" for k in upserts if table == "lb4_backends"]
        super().write(table, upserts, deletes)

    def flush_backends(self, stale: Sequence[StaleBackend]) -> None:
        self.entered.set()
        self.release.wait()
        self.order.append("flushed")
        super().flush_backends(stale)


def test_a_flush_on_its_own_thread_holds_back_only_a_writer_reusing_its_ids() -> None:
    """Test that while a flush runs on another thread, a change to other backends is written at once,
    and a change reusing a backend id being flushed is written only after the flush."""
    dp = BlockingDatapath()
    writer = TableWriter(dp)
    writer.write_lb(LbDelta(backends=MapPlan(deletes=[7]),
                            stale=(StaleBackend("10.96.0.1", 80, 6, 7, "10.244.1.2", 8080),)))
    flusher = threading.Thread(target=writer.flush_stale)
    flusher.start()
    assert dp.entered.wait(30)
    writer.write_lb(LbDelta(backends=MapPlan(upserts={8: BackendValue("10.244.1.3", 8080, 6)})))
    assert dp.order == ["write 8"]  # not held back by the flush
    reuse = LbDelta(backends=MapPlan(upserts={7: BackendValue("10.244.1.9", 8080, 6)}))
    reuser = threading.Thread(target=writer.write_lb, args=(reuse,))
    reuser.start()
    reuser.join(0.2)  # room to overtake the flush, if it could
    dp.release.set()
    flusher.join()
    reuser.join()
    assert dp.order == ["write 8", "flushed", "write 7"]
    assert writer.stale == ()
