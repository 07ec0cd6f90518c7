"""Load: N concurrent clients each submitting M no-op call tasks (default 200 x 500).

Prints one JSON line: total throughput, per-client completion time p50/p99, the
ping round trip under load, and the scheduler's peak resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, start_scheduler, stop_scheduler
from client.client import Client


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
        "client_p99_s": round(latencies[int(0.99 * (len(latencies) - 1))], 3),
        "ping_p50_ms": round(1000 * statistics.median(pings), 2) if pings else 0.0,
        "ping_p99_ms": round(1000 * pings[int(0.99 * (len(pings) - 1))], 2) if pings else 0.0,
        "peak_rss_mb": round(peak, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=500)
    args = parser.parse_args()
    env = {**os.environ, "TASKMILL_STATE_DIR": "none", "TASKMILL_MONITOR_PORT": "-1"}
    proc, port = start_scheduler("-lw", "2", env=env)
    try:
        figures = asyncio.run(run(port, proc.pid, args.clients, args.tasks))
    finally:
        stop_scheduler(proc)
    emit(bench="load", clients=args.clients, tasks_per_client=args.tasks, **figures)


if __name__ == "__main__":
    main()
