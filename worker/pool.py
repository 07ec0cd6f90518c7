"""Worker processes driven from asyncio: one handle per process, and a pool that feeds several.

:class:`ProcessHandle` is the parent's side of one ``python -m worker.process``
subprocess (see :mod:`worker.process` for the frames spoken over its socketpair): spawn
it, wait for ``ready``/``fatal``, send ``run``/``cancel``/``stop``, read ``results``,
and stop it (SIGTERM, then SIGKILL). The scheduler's local backend wraps one handle per
local worker; :class:`ProcessPool` runs ``size`` of them for the remote worker daemon.

The pool hands tasks out the way the scheduler's dispatcher does: one at a time while
tasks are long (so none waits behind another while a process is idle), a few at a time
when they are tiny (so the socket round trip does not dominate). Tasks are identified by
integer keys the pool's user picks, so ids from different bundles can never collide inside
a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from protocol.errors import FrameError
from protocol.framing import FrameReader, encode_frame
from protocol.messages import W_CANCEL, W_READY, W_RESULTS, W_RUN, W_STOP
from worker.errors import ProcessStartError
from worker.execute import cancelled_result, failed_result

log = structlog.get_logger("taskmill.pool")

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
KILL_GRACE_S = 2.0

ResultsCallback = Callable[[list[dict[str, Any]]], None]


class ProcessHandle:
    """One worker process and its control socket. ``label`` names it in errors."""

    def __init__(self, worker_id: str, *, label: str = "worker process") -> None:
        self.id = worker_id
        self.label = label
        self.pid: int | None = None
        self.alive = False
        self.stopping = False
        self.returncode: int | None = None
        self.handlers: frozenset[str] = frozenset()
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: FrameReader | None = None

    async def start(
        self,
        handlers: Sequence[str],
        *,
        log_level: str = "info",
        log_format: str = "json",
        kill_grace_s: float = 2.0,
    ) -> None:
        """Spawn the process and wait for its ``ready``; raises :class:`ProcessStartError`."""
        parent, child = socket.socketpair()
        env = dict(os.environ)
        # Handler modules are named relative to where the user runs taskmill.
        path = [os.getcwd(), *[p for p in sys.path if p]]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
        argv = [
            sys.executable,
            "-m",
            "worker.process",
            "--fd",
            str(child.fileno()),
            "--worker-id",
            self.id,
        ]
        if handlers:
            argv += ["--handlers", ",".join(handlers)]
        argv += ["--log-level", log_level, "--log-format", log_format]
        argv += ["--kill-grace", str(kill_grace_s)]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL, env=env
            )
        except OSError as exc:
            parent.close()
            raise ProcessStartError(f"cannot start {self.label} {self.id}: {exc}") from exc
        finally:
            child.close()
        self.pid = self._proc.pid
        try:
            reader, self._writer = await asyncio.open_connection(sock=parent)
            self._reader = FrameReader(reader)
            hello = await asyncio.wait_for(self._reader.read(), READY_TIMEOUT_S)
        except (TimeoutError, FrameError, OSError) as exc:
            await self.kill()
            raise ProcessStartError(
                f"{self.label} {self.id} did not report ready: {exc!r}"
            ) from exc
        except asyncio.CancelledError:
            await self.kill()  # the owner is closing: leave no process behind
            raise
        if not isinstance(hello, dict) or hello.get("op") != W_READY:
            reason = hello.get("error") if isinstance(hello, dict) else None
            await self.kill()
            raise ProcessStartError(f"{self.label} {self.id} failed to start: {reason or hello!r}")
        self.handlers = frozenset(hello.get("handlers") or ())
        self.alive = True

    async def serve(self, on_results: ResultsCallback) -> None:
        """Read result frames until the process goes away; then reap it."""
        assert self._reader is not None
        try:
            while True:
                msg = await self._reader.read()
                if msg is None:
                    break
                if isinstance(msg, dict) and msg.get("op") == W_RESULTS:
                    on_results(msg["results"])
                else:
                    log.warning(
                        "unexpected message from a worker process",
                        worker=self.id,
                        msg=repr(msg)[:200],
                    )
        except (FrameError, OSError) as exc:
            log.error("worker process connection broken", worker=self.id, error=str(exc))
        finally:
            self.alive = False
            if self._writer is not None:
                self._writer.close()
            if self._proc is not None:
                self.returncode = await self._proc.wait()

    def send_run(self, wires: list[dict[str, Any]]) -> None:
        assert self._writer is not None
        self._writer.write(encode_frame({"op": W_RUN, "tasks": wires}))

    def send_cancel(self, ids: list[Any]) -> None:
        if self._writer is not None and self.alive:
            self._writer.write(encode_frame({"op": W_CANCEL, "ids": ids}))

    def terminate(self) -> None:
        """SIGTERM now, without waiting: the process kills its task and exits."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the process to finish what it holds and exit; kill it if it will not."""
        self.stopping = True
        if self._writer is not None and self.alive:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(encode_frame({"op": W_STOP}))
                await self._writer.drain()
        if self._proc is not None:
            try:
                await asyncio.wait_for(self._proc.wait(), timeout_s)
            except TimeoutError:
                await self.kill()

    async def kill(self) -> None:
        """SIGTERM first: the process's handler takes its running task's process group
        down with it, which a SIGKILL of the process alone would orphan."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._writer is not None:
            self._writer.close()


# --- the pool ------------------------------------------------------------------------------

LONG_TASK_S = 0.05  # above this mean runtime, a process holds one task at a time
# Below LONG_TASK_S a process holds about this much work, to hide round trips. It must
# stay well above the process's result batch age (worker.process.BATCH_AGE_S): a process
# reports every 20 ms at most, and must not run dry before its report brings a refill.
WORK_AHEAD_S = 0.05
MAX_HOLD = 64  # this pool's cap; the scheduler's local workers take more (scheduler.dispatch)
RESTART_DELAY_MAX_S = 30.0
QUICK_DEATH_S = 5.0  # a process that dies sooner than this after starting is backed off


@dataclass(slots=True)
class PoolTask:
    """One task for the pool: ``wire`` is an execution wire whose ``id`` is ``key``."""

    key: int
    wire: dict[str, Any]


@dataclass(eq=False)
class _Slot:
    index: int
    process: ProcessHandle | None = None
    held: dict[int, PoolTask] = field(default_factory=dict)  # in order sent; first one runs
    cancelling: set[int] = field(default_factory=set)


def hold_target(
    avg_runtime_s: float | None, backlog: int, processes: int, *, max_hold: int = MAX_HOLD
) -> int:
    """How many tasks one worker process should hold (running plus buffered).

    The one batching policy of both the scheduler's dispatcher and this pool. Long
    tasks are handed out one at a time so no task waits behind another while a process
    is idle (Celery's prefetch problem). Short tasks are sent in batches worth
    ``WORK_AHEAD_S`` of work (at most ``max_hold``), but never more than a fair share
    of the backlog so the tail of a workload still spreads over every process.
    """
    if avg_runtime_s is None or avg_runtime_s >= LONG_TASK_S:
        per_process = 1
    else:
        per_process = max(2, min(max_hold, math.ceil(WORK_AHEAD_S / max(avg_runtime_s, 1e-6))))
    fair_share = math.ceil(backlog / max(1, processes))
    return max(1, min(per_process, fair_share))


class ProcessPool:
    """``size`` worker processes fed from one local queue, each supervised and restarted.

    Results (with ``id`` = the task's key) go to ``on_results``. A process that dies
    fails the task it was running (or reports it cancelled, when a cancel was asked) and
    its unstarted tasks go back to the front of the queue; those made-up results go to
    ``on_lost`` when given, so the owner may decide otherwise (a draining worker hands the
    task back rather than report a failure that a SIGTERM to its processes caused).
    """

    def __init__(
        self,
        size: int,
        *,
        name: str,
        handlers: Sequence[str],
        on_results: ResultsCallback,
        on_lost: ResultsCallback | None = None,
        log_level: str = "info",
        log_format: str = "json",
        kill_grace_s: float = 2.0,
    ) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one process, got {size}")
        self.name = name
        self.handlers = tuple(handlers)
        self.log_level = log_level
        self.log_format = log_format
        self.kill_grace_s = kill_grace_s
        self.avg_runtime_s: float | None = None
        self._on_results = on_results
        self._on_lost = on_lost or on_results
        self._slots = [_Slot(i) for i in range(size)]
        self._queue: deque[PoolTask] = deque()
        self._supervisors: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start every process; raises :class:`ProcessStartError` (and leaves none running)."""
        outcomes = await asyncio.gather(
            *(self._spawn(slot) for slot in self._slots), return_exceptions=True
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            await asyncio.gather(
                *(s.process.kill() for s in self._slots if s.process is not None),
                return_exceptions=True,
            )
            raise errors[0]
        loop = asyncio.get_running_loop()
        self._supervisors = [loop.create_task(self._supervise(slot)) for slot in self._slots]

    async def close(self, *, kill: bool = False) -> None:
        """Stop every process (``kill``: at once, else after its held tasks), await all."""
        self._closing = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        processes = [s.process for s in self._slots if s.process is not None]
        if kill:
            await asyncio.gather(*(p.kill() for p in processes), return_exceptions=True)
        else:
            await asyncio.gather(*(p.stop() for p in processes), return_exceptions=True)
        for task in self._supervisors:
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)

    async def _spawn(self, slot: _Slot) -> ProcessHandle:
        process = ProcessHandle(f"{self.name}.p{slot.index}")
        await process.start(
            self.handlers,
            log_level=self.log_level,
            log_format=self.log_format,
            kill_grace_s=self.kill_grace_s,
        )
        slot.process = process
        return process

    async def _supervise(self, slot: _Slot) -> None:
        """Serve the slot's process; when it dies, settle its tasks and start another."""
        failures = 0
        while not self.closing:
            process = slot.process
            if process is None:
                try:
                    process = await self._spawn(slot)
                except ProcessStartError as exc:
                    failures += 1
                    log.error("worker process failed to start", slot=slot.index, error=str(exc))
                    await asyncio.sleep(min(RESTART_DELAY_MAX_S, 0.5 * 2**failures))
                    continue
            started = time.monotonic()
            self._pump()
            await process.serve(lambda results: self._on_process_results(slot, results))
            slot.process = None
            self._on_process_exit(slot, process)
            failures = failures + 1 if time.monotonic() - started < QUICK_DEATH_S else 0
            if failures and not self.closing:
                await asyncio.sleep(min(RESTART_DELAY_MAX_S, 0.5 * 2**failures))

    # --- tasks ---------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def held(self) -> int:
        """Tasks inside processes (running or buffered there)."""
        return sum(len(s.held) for s in self._slots)

    @property
    def outstanding(self) -> int:
        """Tasks given to the pool and not finished yet."""
        return len(self._queue) + self.held

    @property
    def busy(self) -> int:
        """Processes running a task."""
        return sum(1 for s in self._slots if s.held)

    def submit(self, tasks: Iterable[PoolTask]) -> None:
        self._queue.extend(tasks)
        self._pump()

    def withdraw(self, keys: Collection[int]) -> set[int]:
        """Take back queued tasks among ``keys`` without results; returns the keys taken.

        Tasks already inside a process are not touched: they are running or about to.
        """
        if not keys or not self._queue:
            return set()
        taken = {t.key for t in self._queue if t.key in keys}
        if taken:
            kept = [t for t in self._queue if t.key not in taken]
            self._queue.clear()
            self._queue.extend(kept)
        return taken

    def cancel(self, keys: Collection[int]) -> None:
        """Cancel tasks: queued ones get a cancelled result at once; a process drops the
        ones it holds and kills a running shell task's process group. A running call
        cannot be interrupted inside its process: its process is terminated if the call is
        still running after the kill grace period (and a fresh one started)."""
        if not keys:
            return
        wanted = set(keys)
        unstarted = [t for t in self._queue if t.key in wanted]
        if unstarted:
            gone = {t.key for t in unstarted}
            kept = [t for t in self._queue if t.key not in gone]
            self._queue.clear()
            self._queue.extend(kept)
            self._on_results([cancelled_result(t.wire, worker_id=self.name) for t in unstarted])
        for slot in self._slots:
            process = slot.process
            ids = [k for k in slot.held if k in wanted]
            if not ids or process is None:
                continue
            slot.cancelling.update(ids)
            process.send_cancel(ids)
            running = next(iter(slot.held.values()))
            if running.key in wanted and running.wire.get("kind") == "call":
                self._terminate_later(slot, process, running.key)

    def _terminate_later(self, slot: _Slot, process: ProcessHandle, key: int) -> None:
        loop = asyncio.get_running_loop()

        def check() -> None:
            self._timers.discard(handle)
            if slot.process is process and process.alive and next(iter(slot.held), None) == key:
                log.info("terminating a worker process to cancel a running call", key=key)
                process.terminate()

        handle = loop.call_later(self.kill_grace_s, check)
        self._timers.add(handle)

    async def wait_idle(self) -> None:
        """Until no process holds a task."""
        while self.held:
            self._idle.clear()
            await self._idle.wait()

    # --- plumbing ------------------------------------------------------------------------

    def _pump(self) -> None:
        if self._closing or not self._queue:
            return
        backlog = len(self._queue) + self.held
        target = hold_target(self.avg_runtime_s, backlog, len(self._slots))
        for slot in self._slots:
            process = slot.process
            if process is None or not process.alive or process.stopping:
                continue
            held = len(slot.held)
            if held > target // 2:
                continue
            batch = [self._queue.popleft() for _ in range(min(target - held, len(self._queue)))]
            for task in batch:
                slot.held[task.key] = task
            process.send_run([t.wire for t in batch])
            if not self._queue:
                break

    def _on_process_results(self, slot: _Slot, results: list[dict[str, Any]]) -> None:
        done: list[dict[str, Any]] = []
        runtime_sum = 0.0
        timed = 0
        for result in results:
            key = result.get("id")
            task = slot.held.pop(key, None)  # type: ignore[arg-type]
            if task is None:
                log.warning("result for a task the process does not hold", key=key)
                continue
            slot.cancelling.discard(task.key)
            started, finished = result.get("started"), result.get("finished")
            if started is not None and finished is not None:
                runtime_sum += finished - started
                timed += 1
            done.append(result)
        if timed:
            mean = runtime_sum / timed
            prev = self.avg_runtime_s
            self.avg_runtime_s = mean if prev is None else 0.7 * prev + 0.3 * mean
        self._settle(done)

    def _on_process_exit(self, slot: _Slot, process: ProcessHandle) -> None:
        held = list(slot.held.values())
        slot.held.clear()
        cancelling, slot.cancelling = slot.cancelling, set()
        if held:
            # A process runs its tasks in order: only the first one it held had started.
            first, rest = held[0], held[1:]
            if first.key in cancelling:
                self._on_results([cancelled_result(first.wire, worker_id=process.id)])
            else:
                reason = (
                    f"worker process {process.id} exited (code {process.returncode}) "
                    "while running the task"
                )
                self._on_lost([failed_result(first.wire, worker_id=process.id, error=reason)])
            if not self._closing:
                self._queue.extendleft(reversed(rest))
                log.warning("worker process died", process=process.id, code=process.returncode)
        self._settle([])

    def _settle(self, done: list[dict[str, Any]]) -> None:
        if done:
            self._on_results(done)
        if not self.held:
            self._idle.set()
        self._pump()
