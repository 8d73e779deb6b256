"""bench.report's row for the agents' memory with 1,000 pods (issue 14: < 150 MB on every node)."""

from __future__ import annotations

from typing import Any

from bench.report import memory_rows


def reading(*nodes_mb: float) -> dict[str, Any]:
    """One bench.memory reading over several nodes: each node's VmRSS and the highest."""
    nodes = {f"node{i}": {"rss_mb": mb} for i, mb in enumerate(nodes_mb)}
    return {"nodes": nodes, "max_rss_mb": max(nodes_mb)}


def memory_run(**readings: dict[str, Any]) -> list[dict[str, Any]]:
    """A results.jsonl of one memory-pods row with these readings."""
    return [{"metric": "M1", "n": 10}, {"metric": "memory-pods", "services": 10000, "pods": 1000, "nodes": 5,
                                         **readings}]


def test_every_reading_of_the_highest_node_under_150_mb_is_met() -> None:
    (row,) = memory_rows(memory_run(grown=reading(140.2, 147.1), applied=reading(139.7, 135.9),
                                  after_traffic=reading(146.4, 139.9), restarted=reading(141.8, 139.7)))
    assert "N=10000 and 1000 pods on 5 nodes" in row
    assert "served 147 MB / 5 s later 140 MB / after traffic 146 MB / after node 0's restart 142 MB" in row
    assert row.endswith("| < 150 MB | met: 147.1 MB at most |")


def test_one_node_at_150_mb_in_one_reading_misses_it() -> None:
    (row,) = memory_rows(memory_run(grown=reading(140.2, 147.1), applied=reading(139.7, 150.0),
                                  after_traffic=reading(146.4, 139.9), restarted=reading(141.8, 139.7)))
    assert row.endswith("| < 150 MB | missed: 150.0 MB at most |")


def test_a_reading_that_did_not_happen_is_not_measured_and_no_run_gives_no_row() -> None:
    readings = {"grown": reading(140.2), "applied": reading(139.7), "after_traffic": reading(146.4)}
    (row,) = memory_rows(memory_run(**readings))
    assert "after node 0's restart — MB" in row
    assert row.endswith("| not measured: — MB at most |")
    assert memory_rows([{"metric": "M1", "n": 10}]) == []
