"""Turn bench/results/results.jsonl into REPORT.md (one table per metric) and PNG plots (matplotlib).

    .venv/bin/python -m bench.report [bench/results]

Every value is the median over repetitions of each repetition's statistic; ratios come from the same run.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

PEER_ORDER = ("none", "legacy", "nft", "vmap", "velvet")
PEER_TITLE = {"none": "no rules", "legacy": "iptables-legacy", "nft": "iptables-nft", "vmap": "nft-vmap",
              "velvet": "Velvet"}


def load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run's context and its result rows."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    context: dict[str, Any] = next((r for r in rows if r["metric"] == "context"), {})
    return context, [r for r in rows if r["metric"] != "context"]


def med(values: list[Any]) -> float | None:
    """Median of the non-None values, None when there are none."""
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a table cell ('—' when missing)."""
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    """a/b as '1.23x'."""
    return "—" if a is None or not b else f"{a / b:.2f}x"


Grouped = dict[tuple[int, int], dict[str, list[Any]]]


def grouped(rows: list[dict[str, Any]], metric: str, field: str) -> Grouped:
    """(n, e) -> peer -> values of `field`."""
    out: dict[tuple[int, int], dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["metric"] == metric and "rules" not in r:
            out[(r["n"], r["e"])][r["peer"]].append(r.get(field))
    return out


def peer_table(rows: list[dict[str, Any]], metric: str, field: str, unit: str,
               spread: bool = False) -> list[str]:
    """Markdown table: N, E, each peer, and Velvet's ratios."""
    data = grouped(rows, metric, field)
    peers = [p for p in PEER_ORDER if any(p in v for v in data.values())]
    head = ["N", "E", *(f"{PEER_TITLE[p]} ({unit})" for p in peers),
            "Velvet/no rules", "Velvet/legacy", "Velvet/nft", "Velvet(N)/Velvet(10)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base: dict[int, float | None] = {}
    for (n, e) in sorted(data):
        cells = [str(n), str(e)]
        values = {p: med(data[(n, e)].get(p, [])) for p in peers}
        for p in peers:
            cell = fmt(values[p])
            if spread and data[(n, e)].get(p):
                p10 = med([r.get("p10") for r in rows if r["metric"] == metric and r.get("peer") == p
                           and r.get("n") == n and r.get("e") == e and "rules" not in r])
                p99 = med([r.get("p99") for r in rows if r["metric"] == metric and r.get("peer") == p
                           and r.get("n") == n and r.get("e") == e and "rules" not in r])
                cell += f" <sub>p10 {fmt(p10)} · p99 {fmt(p99)}</sub>"
            cells.append(cell)
        v = values.get("velvet")
        base.setdefault(e, v)
        cells += [ratio(v, values.get("none")), ratio(v, values.get("legacy")), ratio(v, values.get("nft")),
                  ratio(v, base.get(e))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def m5_table(rows: list[dict[str, Any]]) -> list[str]:
    """Control-plane times per peer and operation."""
    ops: dict[tuple[int, int, str, str], list[Any]] = defaultdict(list)
    hwm: dict[tuple[int, int], tuple[int, int]] = {}
    for r in rows:
        if r["metric"] == "M5":
            value = r.get("seconds")
            if r.get("timeout") is not None:
                value = None
            ops[(r["n"], r["e"], r["peer"], r["op"])].append(value)
            if r.get("agent_hwm_kib"):
                hwm[(r["n"], r["e"])] = (r["agent_hwm_kib"], r.get("agent_rss_kib", 0))
    lines = ["| N | E | peer | operation | seconds |", "|---|---|---|---|---|"]
    for (n, e, peer, op), values in sorted(ops.items()):
        timed_out = [r for r in rows if r["metric"] == "M5" and (r["n"], r["e"], r["peer"], r["op"]) == (
            n, e, peer, op) and r.get("timeout") is not None]
        cell = f"> {timed_out[0]['timeout']:.0f} (stopped)" if timed_out else fmt(med(values), 3)
        extra = ""
        if peer == "velvet" and op == "apply":
            applied = next((r.get("applied") for r in rows if r["metric"] == "M5" and r["n"] == n
                            and r["e"] == e and r["peer"] == peer and r["op"] == op), None)
            peak, rss = hwm.get((n, e), (0, 0))
            extra = (f" ({applied} services in this apply; agent VmHWM {peak / 1024:.0f}, "
                     f"VmRSS {rss / 1024:.0f} MiB)")
        elif peer == "velvet":
            extra = " via API" if op.endswith("_api") else " via CLI"
        lines.append(f"| {n} | {e} | {PEER_TITLE[peer]} | {op.removesuffix('_api')}{extra} | {cell} |")
    return lines


def restart_table(rows: list[dict[str, Any]]) -> list[str]:
    """The agent killed with SIGKILL: seconds until it runs again, /v1/health, /v1/status, an apply."""
    lines = ["| N | exec | health | status | apply served | maps unchanged | connection unharmed |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["metric"] == "restart":
            lines.append(f"| {r['n']} | {fmt(r.get('exec'), 2)} | {fmt(r.get('health'), 2)} | "
                         f"{fmt(r.get('status'), 2)} | {fmt(r.get('apply'), 2)} | {r.get('maps_equal')} | "
                         f"{r.get('rr_ok')} |")
    return lines


def _m5(rows: list[dict[str, Any]], peer: str, n: int, op: str) -> float | None:
    return med([r.get("seconds") for r in rows if r["metric"] == "M5" and r["peer"] == peer
                and r["n"] == n and r["e"] == 1 and r["op"] == op and r.get("timeout") is None])


def _m1(rows: list[dict[str, Any]], peer: str, n: int, field: str) -> float | None:
    return med([r.get(field) for r in rows if r["metric"] == "M1" and r["peer"] == peer and r["n"] == n
                and r["e"] == 1 and "rules" not in r])


def _row(what: str, velvet: str, peer: str, target: str, ok: bool | None, how: str) -> str:
    verdict = "not measured" if ok is None else "met" if ok else "missed"
    return f"| {what} | {velvet} | {peer} | {target} | {verdict}: {how} |"


def _at_most(value: float | None, limit: float | None) -> bool | None:
    return None if value is None or limit is None else value <= limit


def targets_table(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 14's targets against this run: each met or missed, from the same run's numbers."""
    counts = sorted({r["n"] for r in rows if r["metric"] == "M1" and r.get("e") == 1})
    if not counts:
        return []
    low, top = counts[0], counts[-1]
    big = 10000 if 10000 in counts else top
    lines = ["| what | Velvet | peer in the same run | target | verdict |", "|---|---|---|---|---|"]
    grow = next((r for r in rows if r["metric"] == "M5" and r["peer"] == "velvet" and r["op"] == "apply"
                 and r["n"] == big and r["e"] == 1), {})
    v, legacy = grow.get("seconds"), _m5(rows, "legacy", big, "full_load")
    lines.append(_row(f"program {grow.get('applied', '?')} services on top of the others up to N={big} "
                      "(CLI, until served)", f"{fmt(v, 2)} s", f"legacy full load of N: {fmt(legacy, 2)} s",
                      "≤ 0.5x", _at_most(v, None if legacy is None else 0.5 * legacy), ratio(v, legacy)))
    api, cli = _m5(rows, "velvet", low, "add_one_api"), _m5(rows, "velvet", low, "add_one")
    legacy = _m5(rows, "legacy", low, "add_one")
    lines.append(_row(f"add one service at N={low}, via the API", f"{fmt(api, 4)} s",
                      f"legacy {fmt(legacy, 4)} s", "≤ 2x",
                      _at_most(api, None if legacy is None else 2 * legacy), ratio(api, legacy)))
    lines.append(_row(f"add one service at N={low}, via the CLI", f"{fmt(cli, 3)} s", "–", "≤ 150 ms",
                      _at_most(cli, 0.150), f"{fmt(cli, 3)} s"))
    for op in ("add_one", "remove_one", "change_endpoints"):
        v = _m5(rows, "velvet", big, f"{op}_api")
        peer = _m5(rows, "legacy", big, "add_one") if op == "add_one" else None
        lines.append(_row(f"{op.replace('_', ' ')} at N={big}, via the API", f"{fmt(v, 4)} s",
                          f"legacy add {fmt(peer, 3)} s" if peer else "–", "≤ 10 ms", _at_most(v, 0.010),
                          f"{fmt(v, 4)} s"))
    v, none = _m1(rows, "velvet", low, "median"), _m1(rows, "none", low, "median")
    lines.append(_row(f"connect() median, N={low}", f"{fmt(v)} µs", f"no rules {fmt(none)} µs", "≤ 1.05x",
                      _at_most(v, None if none is None else 1.05 * none), ratio(v, none)))
    for n in counts:
        v, none = _m1(rows, "velvet", n, "p99"), _m1(rows, "none", n, "p99")
        lines.append(_row(f"connect() p99, N={n}", f"{fmt(v)} µs", f"no rules {fmt(none)} µs", "≤ 1.5x",
                          _at_most(v, None if none is None else 1.5 * none), ratio(v, none)))
    kills = [r for r in rows if r["metric"] == "restart"]
    health, status = med([r.get("health") for r in kills]), med([r.get("status") for r in kills])
    unharmed = bool(kills) and all(r.get("rr_ok") and r.get("maps_equal") for r in kills)
    lines.append(_row(f"agent kill -9 → API answers, N={kills[0]['n'] if kills else '?'}",
                      f"health {fmt(health, 2)} s, status {fmt(status, 2)} s", "–",
                      "< 1 s, connections unharmed",
                      None if health is None else health < 1 and unharmed,
                      f"/v1/health {fmt(health, 2)} s; maps unchanged and connection unharmed: {unharmed}"))
    rss = next((r.get("agent_rss_kib") for r in rows if r["metric"] == "M5" and r["peer"] == "velvet"
                and r["op"] == "apply" and r["n"] == big and r["e"] == 1), None)
    mb = None if not rss else rss * 1024 / 1e6
    lines.append(_row(f"agent VmRSS, N={big} (the bench's 5 pods, not 1,000)", f"{fmt(mb, 0)} MB", "–",
                      "< 150 MB", None if mb is None else mb < 150, f"{fmt(mb, 0)} MB"))
    lines += memory_rows(rows)
    for name in ("velvet", "legacy", "nft"):
        reached = _m1(rows, name, top, "median")
        how = (f"the quick run stops at N={top}" if top < 50000 else
               f"M1 measured at N={top}" if reached is not None else "stopped before: see Errors")
        lines.append(_row(f"{PEER_TITLE[name]} reaches 50,000 services", f"N={top}: {fmt(reached)} µs", "–",
                          "N = 50,000 in `make bench`", None if top < 50000 else reached is not None, how))
    return lines


MEMORY_READINGS = (("grown", "served"), ("applied", "5 s later"), ("after_traffic", "after traffic"),
                   ("restarted", "after node 0's restart"))


def memory_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The agents' VmRSS with 1,000 pods (bench.memory on several nodes, full runs): the highest node at
    each reading, judged against < 150 MB."""
    found = next((r for r in rows if r["metric"] == "memory-pods"), None)
    if found is None:
        return []
    highest = {label: found.get(key, {}).get("max_rss_mb") for key, label in MEMORY_READINGS}
    measured = [mb for mb in highest.values() if mb is not None]
    worst = max(measured) if len(measured) == len(highest) else None
    what = (f"agent VmRSS, N={found.get('services')} and {found.get('pods')} pods on {found.get('nodes')} "
            "nodes (the highest node)")
    readings = " / ".join(f"{label} {fmt(mb, 0)} MB" for label, mb in highest.items())
    return [_row(what, readings, "–", "< 150 MB", None if worst is None else worst < 150,
                 f"{fmt(worst, 1)} MB at most")]


def simple_table(rows: list[dict[str, Any]], metric: str, keys: tuple[str, ...], value: str) -> list[str]:
    """Median of `value` grouped by `keys`."""
    groups: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for r in rows:
        if r["metric"] == metric:
            groups[tuple(r.get(k) for k in keys)].append(r.get(value))
    lines = ["| " + " | ".join([*keys, value]) + " |", "|" + "---|" * (len(keys) + 1)]
    for key, values in sorted(groups.items(), key=lambda kv: tuple(str(x).zfill(8) for x in kv[0])):
        lines.append("| " + " | ".join([*(str(k) for k in key), fmt(med(values))]) + " |")
    return lines


def policy_table(rows: list[dict[str, Any]]) -> list[str]:
    """M8: Velvet's M1/M3 by number of policy rules."""
    lines = ["| policy rules | policy map entries | apply (s) | M1 connect median (us) | M1 p99 (us) | "
             "M3 trans/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["metric"] != "M8-apply":
            continue
        k = r["rules"]
        m1 = [x for x in rows if x["metric"] == "M1" and x.get("rules") == k]
        m3 = [x for x in rows if x["metric"] == "M3" and x.get("rules") == k]
        lines.append(f"| {k} | {r.get('entries')} | {fmt(r.get('seconds'), 2)} | "
                     f"{fmt(med([x['median'] for x in m1]))} | {fmt(med([x['p99'] for x in m1]))} | "
                     f"{fmt(med([x['per_s'] for x in m3]))} |")
    return lines


def m9_table(rows: list[dict[str, Any]]) -> list[str]:
    """Flow events reaching the agent and a `velvet observe --follow` client during a connect burst."""
    lines = ["| connections | conn/s | flows seen by the agent | flows/s | lost in the ring | dropped for "
             "the observe follower |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["metric"] == "M9":
            dropped = int(r["after"].get("follower_dropped", 0)) - int(r["before"].get("follower_dropped", 0))
            lines.append(f"| {r['connections']} | {fmt(r.get('conn_per_s'))} | {r['flows_seen']} | "
                         f"{fmt(r['flows_per_s'])} | {r['flows_lost']} | {dropped} |")
    return lines


def plots(rows: list[dict[str, Any]], out: Path, title: str) -> list[str]:
    """latency_vs_n.png (M1, M2 median vs N, log x) and rr_vs_n.png; names of the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for metric, field, ylabel, name in (("M1", "median", "connect to service, median µs", "m1_connect_vs_n"),
                                        ("M2", "median", "connect to pod IP, median µs", "m2_connect_vs_n"),
                                        ("M3", "per_s", "RR transactions/s", "m3_rr_vs_n")):
        data = grouped(rows, metric, field)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for e in sorted({e for (_, e) in data}):
            for p in PEER_ORDER:
                points = [(n, y) for (n, ee), v in sorted(data.items())
                          if ee == e and v.get(p) and (y := med(v[p])) is not None]
                if points:
                    ax.plot([x for x, _ in points], [y for _, y in points], marker="o",
                            label=f"{PEER_TITLE[p]} (E={e})")
        ax.set_xscale("log")
        ax.set_xlabel("services (N)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{metric} — {title}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        written.append(f"{name}.png")
    return written


def write(out: Path) -> Path:
    """Write REPORT.md (and plots) for the results in `out`; returns the report's path."""
    context, rows = load(out / "results.jsonl")
    title = f"{context.get('cpu', '?')} ×{context.get('cpus', '?')}, Linux {context.get('kernel', '?')}"
    md = [f"# Velvet vs kube-proxy — {context.get('mode', '?')} run, {context.get('started', '')}", "",
          f"Machine: {title}, {context.get('mem_gib', '?')} GiB; {context.get('iptables', '')}; "
          f"{context.get('nft', '')}; Python {context.get('python', '')}.", "",
          f"Plan: `{json.dumps(context.get('plan', {}))}`", "",
          "Every cell is the median over repetitions (peers interleaved, order rotated per repetition); "
          "E = endpoints per service; the target service is the last of N. Ratios < 1 mean Velvet is "
          "lower (better for latency, worse for rates).", ""]
    sections = (
        ("M1 — connect() latency to a service", "M1", "median", "µs", True),
        ("M1 — connections/s to a service", "M1", "per_s", "conn/s", False),
        ("M2 — connect() latency to a pod IP", "M2", "median", "µs", True),
        ("M3 — request/response transactions/s on one connection", "M3", "per_s", "trans/s", False),
        ("M4 — bulk TCP throughput", "M4", "per_s", "Gbit/s", False),
        ("M4 — machine CPU seconds per GiB moved", "M4", "cpu_s_per_gib", "CPU s/GiB", False),
    )
    for heading, metric, field, unit, spread in sections:
        md += [f"## {heading}", "", *peer_table(rows, metric, field, unit, spread), ""]
    md += ["## Targets of issue 14 against this run", "", *targets_table(rows), ""]
    md += ["## M5 — control plane", "", *m5_table(rows), ""]
    md += ["## Restart — the agent killed with SIGKILL at N (seconds from the kill)", "",
           *restart_table(rows), ""]
    md += ["## M6 — map updates through Velvet's binding (fresh lb4_backends map)", "",
           *simple_table(rows, "M6", ("mode", "entries"), "per_s"), ""]
    md += ["## M7 — ns/packet per tc program (BPF_PROG_TEST_RUN, median of 5 × 20,000 repeats; "
           "case new: median of 301 single runs, each a new connection's SYN)", "",
           *simple_table(rows, "M7", ("program", "case", "n"), "ns"), ""]
    md += ["## M8 — Velvet with NetworkPolicy rules in force", "", *policy_table(rows), ""]
    md += ["## M9 — observability", "", *m9_table(rows), "",
           *simple_table(rows, "M9-rr", ("reader",), "per_s"), ""]
    written = plots(rows, out, title)
    md += ["## Plots", "", *(f"![{w}]({w})" for w in written), ""]
    errors = [r for r in rows if r["metric"] == "error"]
    if errors:
        md += ["## Errors (why a peer stopped)", "",
               *(f"- {PEER_TITLE[r['peer']]} at N={r['n']}, E={r['e']}: `{r['what'].strip()[-300:]}`"
                 for r in errors), ""]
    duration = next((r["seconds"] for r in rows if r["metric"] == "duration"), None)
    md.append(f"Run took {fmt(duration, 0)} s.")
    path = out / "REPORT.md"
    path.write_text("\n".join(md) + "\n")
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"))
