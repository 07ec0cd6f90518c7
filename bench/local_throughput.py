"""Seed-002 style throughput experiments through taskmill, with peers in the same run.

Runs by hand (`make bench` or `python bench/local_throughput.py`); prints one JSON
line per result. Each taskmill figure is end to end over TCP: a scheduler daemon
in its own process (`taskmill scheduler`), this process as the client, submit all,
gather all. Peers on the same machine in the same run give the ratios:
`xargs -P 2 -I{} sh -c {}` on the same `sleep 0` file, and a bare
`ProcessPoolExecutor(2)` mapping a no-op (no network, no scheduler).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import emit, start_scheduler, stop_scheduler  # noqa: E402
from client.client import Client  # noqa: E402


async def run_once(port: int, tasks: list[dict[str, Any]]) -> float:
    async with Client("127.0.0.1", port) as client:
        await client.run(tasks[:50])  # warm the connection and the workers
        t0 = time.perf_counter()
        submission = await client.submit(tasks)
        n = 0
        async for batch in client.result_batches(submission.job):
            n += len(batch.results)
        elapsed = time.perf_counter() - t0
        assert n == len(tasks), (n, len(tasks))
        return elapsed


def bench_taskmill(name: str, tasks: list[dict[str, Any]], workers: int, repeat: int) -> float:
    proc, port = start_scheduler(
        "-lw", str(workers), env={**os.environ, "TASKMILL_STATE_DIR": "none"}
    )
    try:
        times = [asyncio.run(run_once(port, tasks)) for _ in range(repeat)]
    finally:
        stop_scheduler(proc)
    median = statistics.median(times)
    emit(
        system="taskmill",
        workload=name,
        tasks=len(tasks),
        workers=workers,
        elapsed_s=round(median, 4),
        throughput=round(len(tasks) / median, 1),
        runs=[round(t, 4) for t in times],
    )
    return len(tasks) / median


def bench_xargs(n: int, parallel: int, repeat: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("sleep 0\n" * n)
        path = fh.name
    times = []
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            with open(path) as stdin:
                subprocess.run(
                    ["xargs", "-P", str(parallel), "-I{}", "sh", "-c", "{}"],
                    stdin=stdin,
                    check=True,
                )
            times.append(time.perf_counter() - t0)
    finally:
        os.unlink(path)
    median = statistics.median(times)
    emit(
        system=f"xargs -P{parallel} sh -c",
        workload="sleep0",
        tasks=n,
        workers=parallel,
        elapsed_s=round(median, 4),
        throughput=round(n / median, 1),
    )
    return n / median


def _noop(_: int) -> None:
    return None


def bench_pool(n: int, repeat: int) -> float:
    times = []
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_noop, range(100)))
        for _ in range(repeat):
            t0 = time.perf_counter()
            futures = [pool.submit(_noop, i) for i in range(n)]
            for f in futures:
                f.result()
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    emit(
        system="ProcessPoolExecutor(2)",
        workload="noop",
        tasks=n,
        workers=2,
        elapsed_s=round(median, 4),
        throughput=round(n / median, 1),
    )
    return n / median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    emit(
        machine=platform.node(),
        cpus=os.cpu_count(),
        python=platform.python_version(),
        date=time.strftime("%Y-%m-%d"),
    )
    worker_counts = [int(w) for w in args.workers.split(",")]
    shell = [{"cmd": "sleep 0"}] * args.tasks
    noop = [{"fn": "noop"}] * args.tasks
    xargs = bench_xargs(args.tasks, 2, args.repeat)
    pool = bench_pool(args.tasks, args.repeat)
    for workers in worker_counts:
        tm_shell = bench_taskmill("sleep0", shell, workers, args.repeat)
        emit(
            ratio="taskmill/xargs-P2",
            workload="sleep0",
            workers=workers,
            value=round(tm_shell / xargs, 2),
        )
    for workers in worker_counts:
        tm_noop = bench_taskmill("noop", noop, workers, args.repeat)
        emit(
            ratio="taskmill/ProcessPoolExecutor(2)",
            workload="noop",
            workers=workers,
            value=round(tm_noop / pool, 2),
        )


if __name__ == "__main__":
    main()
