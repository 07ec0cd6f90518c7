"""What every peers driver shares: the workloads, the command line, the statistics.

Each driver only knows how to start its system for one (workload, slots) pair and
how to push a batch of tasks through it (or one task, for latency); the warm-up,
repeats, medians, result checks and the one JSON line per run-set are done here,
identically for every system, so the figures are comparable. Stdlib only: the
drivers run under the project venv (taskmill, pool, xargs, parallel) as well as
under ``bench/peers/.venv`` (dask, celery, dramatiq, pool).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # so bench.common imports however the driver is started
    sys.path.insert(0, str(REPO))

from bench.common import emit  # noqa: E402

WORKLOADS = ("noop", "shell", "short", "latency")
SHELL_WORKLOADS = ("shell", "short")  # all that xargs and GNU parallel can run
DEFAULT_TASKS = {"noop": 20_000, "shell": 5_000, "short": 2_000, "latency": 500}
# noop, shell and latency measure overhead with 2 slots (= the reference machine's
# cores); short measures how well 8 slots are kept busy with 10 ms tasks.
DEFAULT_SLOTS = {"noop": 2, "shell": 2, "short": 8, "latency": 2}
DEFAULT_DURATION_S = 0.01
DEFAULT_WARMUP = 50
DEFAULT_PROCESSES = 2  # process count for systems that mix processes and threads
SHELL_CMD = "sleep 0"
REDIS_URL_ENV = "PEERS_REDIS_URL"


class BenchError(RuntimeError):
    """A run that did not do what it was asked: the figures would be meaningless."""


@dataclass(frozen=True, slots=True)
class Spec:
    """One run-set: ``repeat`` timed runs of ``tasks`` tasks of ``workload``."""

    workload: str
    tasks: int
    slots: int
    repeat: int
    duration: float
    warmup: int
    timeout: float
    processes: int


class Session:
    """One started system (workers and all) for one workload; reused across repeats.

    Subclasses implement :meth:`batch` (submit ``n`` tasks of the workload, gather
    them all, check them, return the seconds from the first submit to the last
    result) and :meth:`one` (one no-op task, waited for) for latency.
    """

    config = ""  # how the slots are laid out, for the record (e.g. "2 workers x 1 thread")

    def batch(self, n: int) -> float:
        raise NotImplementedError

    def one(self) -> None:
        raise NotImplementedError

    def latencies(self, warmup: int, n: int) -> list[float]:
        """Seconds per sequential single task, after ``warmup`` untimed ones."""
        for _ in range(warmup):
            self.one()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.one()
            out.append(time.perf_counter() - t0)
        return out

    def close(self) -> None:
        """Stop whatever the session started; must not raise on a half-open session."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def check_count(system: str, got: int, n: int) -> None:
    if got != n:
        raise BenchError(f"{system}: {got} results for {n} tasks")


def check_exit_codes(system: str, codes: Sequence[Any]) -> None:
    bad = [c for c in codes if c != 0]
    if bad:
        raise BenchError(f"{system}: {len(bad)} shell tasks failed (first exit code {bad[0]})")


def split_slots(slots: int, processes: int = DEFAULT_PROCESSES) -> tuple[int, int]:
    """``slots`` as (processes, threads per process): 2 -> 2x1, 8 -> 2x4, 1 -> 1x1."""
    procs = max(1, min(processes, slots))
    if slots % procs:
        raise BenchError(f"{slots} slots do not split evenly over {procs} processes")
    return procs, slots // procs


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), for 1+ values."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    k = (len(ordered) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def redis_url() -> str:
    return os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0")


def stop_process(proc: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL the process and its group.

    Worker subprocesses are started with ``start_new_session=True``, so their own
    children (prefork pools, forked processes) share the group led by ``proc.pid``
    and die with it even if the parent could not shut them down itself.
    """
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Leftovers of the process group we created; harmless if there are none.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=grace)


def batch_line(system: str, spec: Spec, session: Session) -> dict[str, Any]:
    """Warm up, time ``repeat`` batches, and summarise them as one result line."""
    session.batch(min(spec.tasks, max(DEFAULT_WARMUP, 2 * spec.slots)))
    runs = [session.batch(spec.tasks) for _ in range(spec.repeat)]
    median = statistics.median(runs)
    line: dict[str, Any] = {
        "system": system,
        "workload": spec.workload,
        "tasks": spec.tasks,
        "slots": spec.slots,
        "config": session.config,
        "throughput": round(spec.tasks / median, 1),
        "elapsed_s": round(median, 4),
        "runs": [round(t, 4) for t in runs],
    }
    if spec.workload == "short":
        ideal = spec.tasks * spec.duration / spec.slots
        line["duration_s"] = spec.duration
        line["efficiency"] = round(ideal / median, 4)
    return line


def latency_line(system: str, spec: Spec, session: Session) -> dict[str, Any]:
    """``repeat`` series of sequential single tasks; the median of each statistic."""
    p50s, p99s, means = [], [], []
    for _ in range(spec.repeat):
        samples = session.latencies(spec.warmup, spec.tasks)
        check_count(system, len(samples), spec.tasks)
        ms = [s * 1000.0 for s in samples]
        p50s.append(percentile(ms, 50))
        p99s.append(percentile(ms, 99))
        means.append(statistics.fmean(ms))
    return {
        "system": system,
        "workload": "latency",
        "tasks": spec.tasks,
        "slots": spec.slots,
        "config": session.config,
        "warmup": spec.warmup,
        "p50_ms": round(statistics.median(p50s), 3),
        "p99_ms": round(statistics.median(p99s), 3),
        "mean_ms": round(statistics.median(means), 3),
        "runs": len(p50s),
        "runs_p50_ms": [round(p, 3) for p in p50s],
    }


def parser(description: str, workloads: Sequence[str] = WORKLOADS) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workload", required=True, choices=list(workloads))
    p.add_argument("--tasks", type=int, help="tasks per run (default: per workload)")
    p.add_argument("--slots", type=int, help="concurrent tasks (default: per workload)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs; medians are reported")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="short: seconds")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="latency: untimed tasks")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    p.add_argument(
        "--processes",
        type=int,
        default=DEFAULT_PROCESSES,
        help="processes for systems that split slots into processes x threads",
    )
    return p


def spec_from(args: argparse.Namespace) -> Spec:
    workload = args.workload
    spec = Spec(
        workload=workload,
        tasks=args.tasks if args.tasks is not None else DEFAULT_TASKS[workload],
        slots=args.slots if args.slots is not None else DEFAULT_SLOTS[workload],
        repeat=args.repeat,
        duration=args.duration,
        warmup=args.warmup,
        timeout=args.timeout,
        processes=args.processes,
    )
    if spec.tasks < 1 or spec.slots < 1 or spec.repeat < 1 or spec.warmup < 0:
        raise SystemExit("--tasks, --slots and --repeat must be at least 1, --warmup 0+")
    if spec.duration <= 0:
        raise SystemExit("--duration must be positive")
    return spec


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(
    system: str,
    args: argparse.Namespace,
    open_session: Callable[[Spec], Session],
) -> dict[str, Any]:
    """Start the system for ``args``, measure, emit the line, stop the system.

    SIGTERM and SIGINT both raise KeyboardInterrupt, so either way the session's
    ``close()`` runs and no worker process outlives the driver. SIGINT is set
    explicitly: a process started in the background inherits it ignored.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    spec = spec_from(args)
    try:
        with open_session(spec) as session:
            if spec.workload == "latency":
                line = latency_line(system, spec, session)
            else:
                line = batch_line(system, spec, session)
    except KeyboardInterrupt:
        print(f"{system}: interrupted, workers stopped", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    emit(**line)
    return line
