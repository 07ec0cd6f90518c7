"""Local worker processes: spawn, feed, watch.

Each local worker is a ``python -m worker.process`` subprocess connected by a
socketpair that carries the same framing as the client protocol; the process itself is
driven by :class:`worker.pool.ProcessHandle`, shared with the remote worker daemon. This
backend adds what the scheduler needs around it: the tasks a worker holds, its priority
band, and the scheduler's error type. Which tasks go where is decided by
:class:`scheduler.dispatch.Dispatcher`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from scheduler.errors import WorkerStartError
from scheduler.records import TaskRecord
from scheduler.settings import WorkerGroup
from worker.errors import ProcessStartError
from worker.pool import ProcessHandle


class LocalWorker:
    """One worker process and the tasks it holds (sent, no result yet), in order."""

    kind = "local"

    def __init__(self, worker_id: str, *, group: WorkerGroup | None = None) -> None:
        self.id = worker_id
        self.group = group or WorkerGroup(1)
        self.min_p = self.group.min_p
        self.max_p = self.group.max_p
        self.slots = 1
        self.held: dict[str, TaskRecord] = {}
        self._process = ProcessHandle(worker_id, label="local worker")

    @property
    def handlers(self) -> frozenset[str]:
        return self._process.handlers

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.alive

    @property
    def stopping(self) -> bool:
        return self._process.stopping

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "pid": self.pid,
            "slots": self.slots,
            "held": len(self.held),
            "running": min(len(self.held), self.slots),
            "band": [self.min_p, self.max_p],
            "alive": self.alive,
        }

    async def start(
        self,
        handlers: Sequence[str],
        *,
        log_level: str = "info",
        log_format: str = "json",
        kill_grace_s: float = 2.0,
    ) -> None:
        try:
            await self._process.start(
                handlers, log_level=log_level, log_format=log_format, kill_grace_s=kill_grace_s
            )
        except ProcessStartError as exc:
            raise WorkerStartError(str(exc)) from exc

    async def serve(self, on_results: Callable[[LocalWorker, list[dict[str, Any]]], None]) -> None:
        """Read result frames until the process goes away."""
        await self._process.serve(lambda results: on_results(self, results))

    def send_tasks(self, recs: list[TaskRecord]) -> None:
        held = self.held
        wid = self.id
        wires = []
        for rec in recs:
            held[rec.task.id] = rec
            rec.worker = wid
            wires.append(rec.task.execution_wire(rec.attempt))
        self._process.send_run(wires)

    def terminate(self) -> None:
        """SIGTERM now, without waiting: the worker kills its task and exits; the
        supervisor sees it go and starts a replacement."""
        self._process.terminate()

    def send_cancel(self, ids: list[str]) -> None:
        self._process.send_cancel(list(ids))

    async def stop(self) -> None:
        """Ask the process to finish what it holds and exit; kill it if it will not."""
        await self._process.stop()

    async def kill(self) -> None:
        """SIGTERM first: the worker's handler takes its running task's process group
        down with it, which a SIGKILL of the worker alone would orphan."""
        await self._process.kill()
