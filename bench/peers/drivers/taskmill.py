"""taskmill, end to end: a scheduler daemon with ``-lw SLOTS`` and this process as client.

Run under the project venv:

    python -m bench.peers.drivers.taskmill --workload noop --journal off

One scheduler (``taskmill scheduler -s 0 -lw SLOTS``) per run-set, reused across
repeats, with one client connection over loopback TCP running under uvloop, as a
user's script would. ``--journal on`` gives the scheduler a fresh state directory
(the SQLite journal, the default for a real deployment); ``off`` keeps everything
in memory. The web monitor is turned off so a second scheduler on the machine (or
someone else's on port 7071) cannot collide with this one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

import uvloop

from bench.common import start_scheduler, stop_scheduler
from bench.peers.drivers.common import (
    SHELL_CMD,
    BenchError,
    Session,
    Spec,
    check_count,
    parser,
    run,
)
from client.client import Client
from protocol.model import Result

SYSTEM = {"on": "taskmill", "off": "taskmill (no journal)"}
NOOP: dict[str, Any] = {"fn": "noop"}


def task_for(spec: Spec) -> dict[str, Any]:
    if spec.workload == "shell":
        return {"cmd": SHELL_CMD}
    if spec.workload == "short":
        return {"fn": "sleep", "kwargs": {"seconds": spec.duration}}
    return NOOP


def first_failure(results: list[Result]) -> Result | None:
    return next((r for r in results if not r.ok), None)


class TaskmillSession(Session):
    def __init__(self, spec: Spec, journal: bool) -> None:
        self.system = SYSTEM["on" if journal else "off"]
        self.task = task_for(spec)
        self.config = f"-lw {spec.slots}, journal {'on' if journal else 'off'}"
        self.state_dir = tempfile.mkdtemp(prefix="taskmill-peers-") if journal else None
        self.proc: subprocess.Popen[str] | None = None
        self.runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        self.client: Client | None = None
        try:
            env = {
                **os.environ,
                "TASKMILL_STATE_DIR": self.state_dir or "none",
                "TASKMILL_MONITOR_PORT": "-1",
                "TASKMILL_MAX_QUEUED_PER_USER": str(max(100_000, 2 * spec.tasks)),
            }
            self.proc, port = start_scheduler("-lw", str(spec.slots), env=env)
            self.client = Client("127.0.0.1", port)
            self.runner.run(self.client.open())
        except BaseException:
            self.close()
            raise

    async def _batch(self, tasks: list[dict[str, Any]]) -> float:
        assert self.client is not None
        t0 = time.perf_counter()
        submission = await self.client.submit(tasks)
        n = 0
        failed: Result | None = None
        async for batch in self.client.result_batches(submission.job):
            n += len(batch.results)
            if failed is None:
                failed = first_failure(batch.results)
        elapsed = time.perf_counter() - t0
        check_count(self.system, n, len(tasks))
        if failed is not None:
            raise BenchError(f"{self.system}: task {failed.id} {failed.state}: {failed.error}")
        return elapsed

    def timed(self, tasks: list[dict[str, Any]]) -> float:
        """Submit ``tasks`` as one job, gather and check every result; seconds taken."""
        return self.runner.run(self._batch(tasks))

    def batch(self, n: int) -> float:
        return self.timed([self.task] * n)  # the list is built before the clock starts

    async def _latencies(self, warmup: int, n: int) -> list[float]:
        assert self.client is not None
        run_one = self.client.run
        out: list[float] = []
        for i in range(warmup + n):
            t0 = time.perf_counter()
            results = await run_one([NOOP])
            dt = time.perf_counter() - t0
            check_count(self.system, len(results), 1)
            if not results[0].ok:
                raise BenchError(f"{self.system}: noop {results[0].state}: {results[0].error}")
            if i >= warmup:
                out.append(dt)
        return out

    def latencies(self, warmup: int, n: int) -> list[float]:
        # The whole series runs in one coroutine: no event-loop re-entry per task.
        return self.runner.run(self._latencies(warmup, n))

    def close(self) -> None:
        try:
            if self.client is not None:
                self.runner.run(self.client.close())
        finally:
            self.runner.close()
            if self.proc is not None:
                stop_scheduler(self.proc)
                self.proc = None
            if self.state_dir is not None:
                shutil.rmtree(self.state_dir, ignore_errors=True)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--journal", choices=("on", "off"), default="on")
    args = p.parse_args()
    journal = args.journal == "on"
    run(SYSTEM[args.journal], args, lambda spec: TaskmillSession(spec, journal))


if __name__ == "__main__":
    main()
