"""The seed-002 tables: taskmill throughput and efficiency by local worker count.

Run under the project venv:

    .venv/bin/python bench/peers/seed_tables.py [--sizes 10000,100000]
        [--workers 1,2,4,8,16] [--markdown FILE]

- Throughput: SIZE ``sleep 0`` shell tasks, submit all then gather all, through a
  scheduler with ``-lw W``; next to it, ``xargs -P W -I{} sh -c {}`` on a file of the
  same lines, the floor for starting shell commands.
- Efficiency: ``sleep`` call tasks of 10 ms (100 per worker) and of 1 s (4 per
  worker); efficiency = (tasks x duration / W) / elapsed, 1.0 being perfect. The
  xargs column runs ``sleep 0.01`` lines, W x 100 of them.

One scheduler per worker count serves all of that count's runs. One JSON line per
figure; ``--markdown`` writes the tables in the seed's layout. Medians of
``--repeat`` runs (default 1: the 100,000-task runs take minutes each at 1 worker).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import emit  # noqa: E402
from bench.peers.drivers import xargs  # noqa: E402
from bench.peers.drivers.common import Spec  # noqa: E402
from bench.peers.drivers.shellfile import ShellFileSession  # noqa: E402
from bench.peers.drivers.taskmill import TaskmillSession  # noqa: E402

Line = dict[str, Any]


def spec(workload: str, tasks: int, workers: int, duration: float = 0.01) -> Spec:
    return Spec(
        workload=workload,
        tasks=tasks,
        slots=workers,
        repeat=1,
        duration=duration,
        warmup=0,
        timeout=24 * 3600.0,
        processes=1,
    )


def measure(run_once: Callable[[], float], repeat: int) -> tuple[float, list[float]]:
    runs = [run_once() for _ in range(repeat)]
    return statistics.median(runs), [round(r, 4) for r in runs]


def throughput_line(system: str, n: int, workers: int, median: float, runs: list[float]) -> Line:
    return {
        "table": "throughput",
        "system": system,
        "tasks": n,
        "workers": workers,
        "throughput": round(n / median, 1),
        "elapsed_s": round(median, 4),
        "runs": runs,
    }


def efficiency_line(
    system: str, n: int, workers: int, duration: float, median: float, runs: list[float]
) -> Line:
    return {
        "table": "efficiency",
        "system": system,
        "tasks": n,
        "workers": workers,
        "duration_s": duration,
        "efficiency": round(n * duration / workers / median, 4),
        "elapsed_s": round(median, 4),
        "runs": runs,
    }


def taskmill_lines(args: argparse.Namespace, workers: int) -> list[Line]:
    """Every taskmill figure for one worker count, from one scheduler."""
    out: list[Line] = []
    biggest = max([*args.sizes, workers * args.short_per_worker, workers * args.long_per_worker])
    with TaskmillSession(spec("shell", biggest, workers), args.journal == "on") as tm:
        tm.timed([{"fn": "noop"}] * 50)  # warm the workers and the connection
        for n in args.sizes:
            median, runs = measure(partial(tm.timed, [{"cmd": "sleep 0"}] * n), args.repeat)
            out.append(throughput_line(tm.system, n, workers, median, runs))
            emit(**out[-1])
        for duration, per_worker in (
            (args.short_duration, args.short_per_worker),
            (args.long_duration, args.long_per_worker),
        ):
            n = workers * per_worker
            tasks = [{"fn": "sleep", "kwargs": {"seconds": duration}}] * n
            median, runs = measure(partial(tm.timed, tasks), args.repeat)
            out.append(efficiency_line(tm.system, n, workers, duration, median, runs))
            emit(**out[-1])
    return out


def xargs_lines(args: argparse.Namespace, workers: int) -> list[Line]:
    out: list[Line] = []
    with ShellFileSession("xargs", spec("shell", 1, workers), xargs.argv) as xs:
        for n in args.sizes:
            median, runs = measure(partial(xs.batch, n), args.repeat)
            out.append(throughput_line("xargs", n, workers, median, runs))
            emit(**out[-1])
    short = spec("short", 1, workers, args.short_duration)
    with ShellFileSession("xargs", short, xargs.argv) as xs:
        n = workers * args.short_per_worker
        median, runs = measure(partial(xs.batch, n), args.repeat)
        out.append(efficiency_line("xargs", n, workers, args.short_duration, median, runs))
        emit(**out[-1])
    return out


def duration_label(seconds: float) -> str:
    return f"{seconds:g}s" if seconds >= 1 else f"{1000 * seconds:g}ms"


def seed_markdown(lines: Sequence[Line]) -> str:
    """The seed's tables: "#Workers Throughput" per size, "Workers 10ms 1s" for efficiency."""
    thr = {
        (ln["system"] == "xargs", ln["tasks"], ln["workers"]): ln
        for ln in lines
        if ln.get("table") == "throughput"
    }
    eff = {
        (ln["system"] == "xargs", ln["duration_s"], ln["workers"]): ln
        for ln in lines
        if ln.get("table") == "efficiency"
    }
    workers = sorted({ln["workers"] for ln in lines if "workers" in ln})
    sizes = sorted({size for (_, size, _) in thr})
    durations = sorted({d for (is_xargs, d, _) in eff if not is_xargs})
    xargs_durations = sorted({d for (is_xargs, d, _) in eff if is_xargs})

    def fmt(line: Line | None, key: str) -> str:
        if line is None:
            return "—"
        return f"{line[key]:,.0f}/s" if key == "throughput" else f"{100 * line[key]:.1f}%"

    out: list[str] = []
    for size in sizes:
        out += [f"### {size:,} tasks (`sleep 0`)", ""]
        out += ["| #Workers | Throughput | xargs -P W |", "|---:|---:|---:|"]
        for w in workers:
            tm, xa = thr.get((False, size, w)), thr.get((True, size, w))
            out.append(f"| {w} | {fmt(tm, 'throughput')} | {fmt(xa, 'throughput')} |")
        out.append("")
    if durations:
        # The seed's own headings: "10ms Tasks", "1s tasks".
        heads = [f"{duration_label(d)} {'tasks' if d >= 1 else 'Tasks'}" for d in durations]
        heads += [f"xargs {duration_label(d)}" for d in xargs_durations]
        out += ["### Efficiency", ""]
        out += ["| Workers | " + " | ".join(heads) + " |", "|---:|" + "---:|" * len(heads)]
        for w in workers:
            cells = [fmt(eff.get((False, d, w)), "efficiency") for d in durations]
            cells += [fmt(eff.get((True, d, w)), "efficiency") for d in xargs_durations]
            out.append(f"| {w} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int_list, default=[10_000, 100_000])
    p.add_argument("--workers", type=int_list, default=[1, 2, 4, 8, 16])
    p.add_argument("--short-duration", type=float, default=0.01)
    p.add_argument("--short-per-worker", type=int, default=100, help="10 ms tasks per worker")
    p.add_argument("--long-duration", type=float, default=1.0)
    p.add_argument("--long-per-worker", type=int, default=4, help="1 s tasks per worker")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--journal", choices=("on", "off"), default="off")
    p.add_argument("--no-xargs", action="store_true", help="taskmill only")
    p.add_argument("--markdown", metavar="FILE")
    args = p.parse_args(argv)
    header = {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "journal": args.journal,
    }
    emit(**header)
    lines: list[Line] = []
    for workers in args.workers:
        lines += taskmill_lines(args, workers)
        if not args.no_xargs:
            lines += xargs_lines(args, workers)
    if args.markdown:
        text = (
            f"Machine `{header['machine']}`, {header['cpus']} CPUs, Python {header['python']}, "
            f"{header['date']}, journal {args.journal}.\n\n" + seed_markdown(lines)
        )
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
