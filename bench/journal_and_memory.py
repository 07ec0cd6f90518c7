"""Issue 3's figures: journal cost on throughput, and scheduler memory per queued task.

Runs by hand; prints one JSON line per result.

- journal: 10,000 no-op call tasks end to end over TCP with the SQLite journal on
  (a fresh state dir) and off (``--state-dir none``), alternating, median of 3.
- memory: a scheduler with no local workers (so nothing runs) receives N queued
  shell tasks; resident memory (VmRSS) is read before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import emit, start_scheduler, stop_scheduler  # noqa: E402
from client.client import Client  # noqa: E402


def _env(state_dir: str) -> dict[str, str]:
    # The memory run queues a million tasks for one user: lift the per-user cap.
    return {
        **os.environ,
        "TASKMILL_STATE_DIR": state_dir,
        "TASKMILL_MAX_QUEUED_PER_USER": "100000000",
    }


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def timed_run(port: int, tasks: list[dict[str, Any]]) -> float:
    async with Client("127.0.0.1", port) as client:
        await client.run(tasks[:50])
        t0 = time.perf_counter()
        sub = await client.submit(tasks)
        n = 0
        async for batch in client.result_batches(sub.job):
            n += len(batch.results)
        assert n == len(tasks)
        return time.perf_counter() - t0


def bench_journal(n: int, repeat: int) -> None:
    tasks = [{"fn": "noop"}] * n
    times: dict[str, list[float]] = {"none": [], "sqlite": []}
    for _ in range(repeat):
        for mode in ("none", "sqlite"):
            with tempfile.TemporaryDirectory() as tmp:
                proc, port = start_scheduler(
                    "-lw", "2", env=_env("none" if mode == "none" else tmp)
                )
                try:
                    times[mode].append(asyncio.run(timed_run(port, tasks)))
                finally:
                    stop_scheduler(proc)
    medians = {mode: statistics.median(ts) for mode, ts in times.items()}
    for mode, median in medians.items():
        emit(
            system="taskmill",
            workload="noop",
            journal=mode,
            tasks=n,
            workers=2,
            elapsed_s=round(median, 4),
            throughput=round(n / median, 1),
        )
    emit(
        ratio="journal-on/journal-off throughput",
        value=round(medians["none"] / medians["sqlite"], 3),
    )


async def fill(port: int, n: int) -> None:
    async with Client("127.0.0.1", port) as client:
        await client.submit([{"cmd": "sleep 0"}] * n, batch_size=20_000)


def bench_memory(n: int, journal: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_scheduler("-lw", "0", env=_env(tmp if journal else "none"))
        try:
            before = rss_bytes(proc.pid)
            t0 = time.perf_counter()
            asyncio.run(fill(port, n))
            elapsed = time.perf_counter() - t0
            after = rss_bytes(proc.pid)
        finally:
            stop_scheduler(proc)
    emit(
        metric="scheduler memory per queued task",
        journal=journal,
        tasks=n,
        rss_before_mb=round(before / 2**20, 1),
        rss_after_mb=round(after / 2**20, 1),
        bytes_per_task=round((after - before) / n, 1),
        submit_s=round(elapsed, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--queued", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip", choices=("journal", "memory"), action="append", default=[])
    args = parser.parse_args()
    if "journal" not in args.skip:
        bench_journal(args.tasks, args.repeat)
    if "memory" not in args.skip:
        bench_memory(args.queued, journal=False)
        bench_memory(args.queued, journal=True)


if __name__ == "__main__":
    main()
