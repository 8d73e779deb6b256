"""The runtime bench's pure helpers: medians and ratios to `off`, the verdict, the burst's account, the
report's lines (the bench itself needs root and is never run by the tests)."""

from __future__ import annotations

import math
from pathlib import Path

from bench.runtime import burst_account, markdown, policies, summarize, verdict
from velvet.model.codec import parse_documents
from velvet.model.tracing import VelvetTracingPolicy


def sample(config: str, ns: float, workload: str = "openat") -> dict[str, object]:
    return {"workload": workload, "config": config, "ns_per_op": ns}


def test_summarize_takes_medians_and_divides_by_off() -> None:
    """Test that each configuration's median per-op time is divided by the `off` median of the same
    workload, and its best by `off`'s best, configurations in the bench's order."""
    rows = [sample("events", 110), sample("off", 100), sample("off", 300), sample("off", 200),
            sample("events", 400), sample("events", 220), sample("off", 1000, "exec")]
    summary = summarize(rows)
    assert list(summary["openat"]) == ["off", "events"]
    assert summary["openat"]["off"] == {"ns_per_op": 200, "n": 3, "ratio": 1.0, "best": 100,
                                        "best_ratio": 1.0}
    assert summary["openat"]["events"]["ratio"] == 1.1
    assert summary["openat"]["events"]["best_ratio"] == 1.1
    assert summary["exec"]["off"]["ratio"] == 1.0


def test_summarize_without_a_baseline_gives_no_ratio() -> None:
    """Test that a workload measured without `off` has NaN ratios rather than made-up ones."""
    assert math.isnan(summarize([sample("events", 5)])["openat"]["events"]["ratio"])


def test_verdict_meets_at_the_target_and_misses_above() -> None:
    """Test that 1.05x meets the ≤ 5 % target and 1.06x misses it."""
    assert verdict(1.05) == "met: 1.05x"
    assert verdict(1.0625) == "missed: 1.06x"


def test_burst_account_flags_events_neither_received_nor_lost() -> None:
    """Test that received + lost ≥ generated is accounted, and a shortfall is counted."""
    assert burst_account(4000, 3000, 1000) == {"generated": 4000, "received": 3000, "lost": 1000,
                                               "accounted": True, "unaccounted": 0}
    short = burst_account(4000, 2000, 500)
    assert (short["accounted"], short["unaccounted"]) == (False, 1500)


def test_markdown_names_the_target_verdict_and_a_discrepancy() -> None:
    """Test that the report judges the issue's target on exec_policy and says why, gives every other
    configuration's verdict on the syscall loop (a miss with its reason, a met one without), other
    sandboxes' links and a burst discrepancy in words."""
    summary = summarize([sample("off", 1000), sample("exec_policy", 1020), sample("idle_policy", 1500),
                         sample("events", 1040)])
    burst = {"children": 10, **burst_account(20, 5, 5)}
    text = markdown(summary, burst, [0, 4])
    assert "| idle_policy | 1.50 µs | 1.50x | 1.50 µs | 1.50x | 1 |" in text
    assert ("Target ≤ 1.05x on the syscall loop, judged on exec_policy (process events and the policy kind "
            "users mostly run (exec Sigkill, matchBinaries In), present and not matching; medians): "
            "met: 1.02x (best runs: 1.02x)" in text)
    assert "- events: met: 1.04x (best runs: 1.04x)\n" in text
    assert ("- idle_policy: missed: 1.50x (best runs: 1.50x) — the sys_enter_openat tracepoint and its "
            "program" in text)
    assert "- exec_policy:" not in text
    assert "Other sandboxes' proc_* links attached meanwhile: 0–4" in text
    assert "DISCREPANCY: 10 events neither received nor counted lost" in text


def test_the_bench_policies_decode_as_velvet_decodes_them() -> None:
    """Test that the configurations' policies are VelvetTracingPolicy documents Velvet accepts (what
    `velvet apply` would refuse would stop the bench half-way), one per configuration that has one."""
    made = policies(Path("/tmp/rt"))
    assert sorted(made) == ["exec_policy", "guard_rule", "idle_policy", "post_policy", "scoped_policy"]
    for text in made.values():
        [policy] = parse_documents(text, "bench.runtime")
        assert isinstance(policy, VelvetTracingPolicy)
