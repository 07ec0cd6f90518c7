"""From the drivers' JSON lines to ratios and a markdown table: pure functions.

Kept apart from ``run.py`` (which starts processes) so the arithmetic and the layout
can be tested on synthetic lines. Stdlib only.

Each workload has one headline figure; a ratio is always "how many times better
taskmill is", so above 1 means taskmill wins whatever the unit:

- noop, shell: throughput (tasks/s), ratio taskmill / peer;
- short: efficiency (ideal time / actual time), ratio taskmill / peer;
- latency: p50 in ms, lower is better, so the ratio is peer / taskmill.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

WORKLOAD_ORDER = ("noop", "shell", "short", "latency")
TASKMILL_SYSTEMS = ("taskmill", "taskmill (no journal)")
METRIC = {"noop": "throughput", "shell": "throughput", "short": "efficiency", "latency": "p50_ms"}
LOWER_IS_BETTER = frozenset({"latency"})
UNIT = {
    "noop": "tasks/s",
    "shell": "tasks/s",
    "short": "efficiency",
    "latency": "p50 latency",
}
DASH = "—"

Line = Mapping[str, Any]


def is_result(line: Line) -> bool:
    """A driver's result line (not a header, ratio, error or skip line)."""
    return (
        "system" in line
        and line.get("workload") in METRIC
        and "error" not in line
        and "skipped" not in line
        and isinstance(line.get(METRIC[line["workload"]]), int | float)
    )


def index(lines: Iterable[Line]) -> dict[tuple[str, str], Line]:
    """(system, workload) -> its result line; a later line replaces an earlier one."""
    return {(str(ln["system"]), str(ln["workload"])): ln for ln in lines if is_result(ln)}


def systems_in_order(lines: Iterable[Line]) -> list[str]:
    """taskmill's variants first, then the peers in the order they appear."""
    seen: list[str] = []
    for ln in lines:
        if is_result(ln) and ln["system"] not in seen:
            seen.append(str(ln["system"]))
    first = [s for s in TASKMILL_SYSTEMS if s in seen]
    return first + [s for s in seen if s not in TASKMILL_SYSTEMS]


def workloads_in_order(lines: Iterable[Line]) -> list[str]:
    present = {ln["workload"] for ln in lines if is_result(ln)}
    return [w for w in WORKLOAD_ORDER if w in present]


def ratio(workload: str, taskmill: float, peer: float) -> float | None:
    """How many times better taskmill is than the peer on this workload's figure."""
    num, den = (peer, taskmill) if workload in LOWER_IS_BETTER else (taskmill, peer)
    if den <= 0:
        return None
    return num / den


def ratio_lines(lines: Sequence[Line]) -> list[dict[str, Any]]:
    """``{"ratio": "taskmill/dask", "workload": "noop", "value": 12.3}`` for every pair."""
    table = index(lines)
    systems = systems_in_order(lines)
    peers = [s for s in systems if s not in TASKMILL_SYSTEMS]
    out: list[dict[str, Any]] = []
    for tm in (s for s in systems if s in TASKMILL_SYSTEMS):
        for workload in workloads_in_order(lines):
            mine = table.get((tm, workload))
            if mine is None:
                continue
            for peer in peers:
                theirs = table.get((peer, workload))
                if theirs is None:
                    continue
                metric = METRIC[workload]
                value = ratio(workload, float(mine[metric]), float(theirs[metric]))
                if value is None:
                    continue
                out.append(
                    {
                        "ratio": f"{tm}/{peer}",
                        "workload": workload,
                        "metric": metric,
                        "value": round(value, 2),
                    }
                )
    return out


def cell(line: Line | None) -> str:
    """The headline figure of one result, formatted for a table cell."""
    if line is None:
        return DASH
    workload = line["workload"]
    if workload == "latency":
        return f"{line['p50_ms']:.2f} ms (p99 {line['p99_ms']:.2f})"
    if workload == "short":
        return f"{100 * line['efficiency']:.1f} %"
    return f"{line['throughput']:,.0f}/s"


def row_label(workload: str, lines: Sequence[Line]) -> str:
    sample = next(ln for ln in lines if is_result(ln) and ln["workload"] == workload)
    what = {
        "noop": "no-op calls",
        "shell": "`sleep 0` shell",
        "short": f"{1000 * float(sample.get('duration_s', 0.01)):g} ms sleeps",
        "latency": "sequential no-op",
    }[workload]
    return (
        f"**{workload}**: {UNIT[workload]}<br>{sample['tasks']:,} {what}, {sample['slots']} slots"
    )


def markdown(lines: Sequence[Line], header: Line | None = None) -> str:
    """Rows = workloads (each followed by its ratio row), columns = systems."""
    table = index(lines)
    systems = systems_in_order(lines)
    if not systems:
        return "No results.\n"
    base = next((s for s in TASKMILL_SYSTEMS if s in systems), None)
    out: list[str] = []
    if header:
        out.append(
            f"Machine `{header.get('machine', '?')}`, {header.get('cpus', '?')} CPUs, "
            f"Python {header.get('python', '?')}, {header.get('date', '?')}"
            + (f", commit `{header['commit']}`" if header.get("commit") else "")
            + ".\n"
        )
    out.append("| workload | " + " | ".join(systems) + " |")
    out.append("|---|" + "---:|" * len(systems))
    for workload in workloads_in_order(lines):
        cells = [cell(table.get((s, workload))) for s in systems]
        out.append(f"| {row_label(workload, lines)} | " + " | ".join(cells) + " |")
        if base is None or (base, workload) not in table:
            continue
        mine = float(table[(base, workload)][METRIC[workload]])
        ratios = []
        for system in systems:
            theirs = table.get((system, workload))
            if system in TASKMILL_SYSTEMS or theirs is None:
                ratios.append("")
                continue
            value = ratio(workload, mine, float(theirs[METRIC[workload]]))
            ratios.append(DASH if value is None else f"{value:.2f}x")
        label = "peer p50 ÷ taskmill p50" if workload in LOWER_IS_BETTER else "taskmill ÷ peer"
        out.append(f"| _{label}_ | " + " | ".join(ratios) + " |")
    out.append("")
    if base:
        out.append(f"Ratios are against `{base}`; above 1 means taskmill is better.")
    out.append(f"{DASH} : not measured (xargs and parallel run shell lines only) or failed.")
    out.append("")
    out.append("Slot layout per system:")
    out.append("")
    for system in systems:
        configs: list[str] = []
        for workload in WORKLOAD_ORDER:
            ln = table.get((system, workload))
            if ln is not None and ln.get("config") and ln["config"] not in configs:
                configs.append(str(ln["config"]))
        out.append(f"- {system}: " + ("; ".join(f"`{c}`" for c in configs) or DASH))
    return "\n".join(out) + "\n"
