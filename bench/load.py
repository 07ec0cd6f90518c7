"""Load: N concurrent clients each submitting M no-op call tasks (default 200 x 500).

Prints one JSON line per client count: total throughput, per-client completion time
p50/p99, the ping round trip under load, and the scheduler's peak resident memory.

Scale figures (issue 7): the same 100,000 tasks split over 1, 10 and 100 clients::

    python bench/load.py --clients 1,10,100 --total 100000 [--journal]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, start_scheduler, stop_scheduler
from client.client import Client


def nearest_rank(ordered: list[float], q: float) -> float:
    """The q-quantile of a sorted, non-empty list by the nearest-rank method."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(port: int, pid: int, clients: int, tasks: int) -> dict[str, float]:
    peak = 0.0
    pings: list[float] = []
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        async with Client("127.0.0.1", port) as probe:
            while not done.is_set():
                peak = max(peak, rss_mb(pid))
                pings.append(await probe.ping())
                await asyncio.sleep(0.05)  # sampling period

    async def one(n: int) -> float:
        async with Client("127.0.0.1", port) as client:
            t0 = time.perf_counter()
            await client.run([{"fn": "noop", "id": f"c{n}.{i}"} for i in range(tasks)])
            return time.perf_counter() - t0

    watcher = asyncio.create_task(watch())
    t0 = time.perf_counter()
    latencies = sorted(await asyncio.gather(*(one(n) for n in range(clients))))
    elapsed = time.perf_counter() - t0
    done.set()
    await watcher
    pings.sort()
    return {
        "elapsed_s": round(elapsed, 3),
        "throughput": round(clients * tasks / elapsed, 1),
        "client_p50_s": round(statistics.median(latencies), 3),
        "client_p99_s": round(nearest_rank(latencies, 0.99), 3),
        "ping_p50_ms": round(1000 * statistics.median(pings), 2) if pings else 0.0,
        "ping_p99_ms": round(1000 * nearest_rank(pings, 0.99), 2) if pings else 0.0,
        "peak_rss_mb": round(peak, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", default="200", help="comma-separated client counts")
    parser.add_argument("--tasks", type=int, default=500, help="tasks per client")
    parser.add_argument(
        "--total", type=int, default=0, help="split this many tasks over the clients instead"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--journal", action="store_true", help="a fresh SQLite journal")
    args = parser.parse_args()
    for clients in (int(c) for c in args.clients.split(",")):
        tasks = args.total // clients if args.total else args.tasks
        with tempfile.TemporaryDirectory() as state:
            env = {
                **os.environ,
                "TASKMILL_STATE_DIR": state if args.journal else "none",
                "TASKMILL_MONITOR_PORT": "-1",
            }
            proc, port = start_scheduler("-lw", str(args.workers), env=env)
            try:
                figures = uvloop.run(run(port, proc.pid, clients, tasks))
            finally:
                stop_scheduler(proc)
        emit(
            bench="load",
            clients=clients,
            tasks_per_client=tasks,
            workers=args.workers,
            journal=args.journal,
            **figures,
        )


if __name__ == "__main__":
    main()
