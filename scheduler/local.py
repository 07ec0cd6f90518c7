"""Local worker processes: spawn, feed, watch.

Each local worker is a ``python -m worker.process`` subprocess connected by a
socketpair that carries the same framing as the client protocol. The backend only
moves frames; which tasks go where is decided by :class:`scheduler.dispatch.Dispatcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from protocol.errors import FrameError
from protocol.framing import FrameReader, encode_frame
from protocol.messages import W_CANCEL, W_READY, W_RESULTS, W_RUN, W_STOP
from scheduler.errors import WorkerStartError
from scheduler.records import TaskRecord
from scheduler.settings import WorkerGroup

log = structlog.get_logger("taskmill.local")

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
KILL_GRACE_S = 2.0


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
        self.handlers: frozenset[str] = frozenset()
        self.pid: int | None = None
        self.alive = False
        self.stopping = False
        self.returncode: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: FrameReader | None = None

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
            raise WorkerStartError(f"cannot start local worker {self.id}: {exc}") from exc
        finally:
            child.close()
        self.pid = self._proc.pid
        try:
            reader, self._writer = await asyncio.open_connection(sock=parent)
            self._reader = FrameReader(reader)
            hello = await asyncio.wait_for(self._reader.read(), READY_TIMEOUT_S)
        except (TimeoutError, FrameError, OSError) as exc:
            await self.kill()
            raise WorkerStartError(f"local worker {self.id} did not report ready: {exc!r}") from exc
        except asyncio.CancelledError:
            await self.kill()  # the scheduler is closing: leave no process behind
            raise
        if not isinstance(hello, dict) or hello.get("op") != W_READY:
            reason = hello.get("error") if isinstance(hello, dict) else None
            await self.kill()
            raise WorkerStartError(f"local worker {self.id} failed to start: {reason or hello!r}")
        self.handlers = frozenset(hello.get("handlers") or ())
        self.alive = True

    async def serve(self, on_results: Callable[[LocalWorker, list[dict[str, Any]]], None]) -> None:
        """Read result frames until the process goes away."""
        assert self._reader is not None
        try:
            while True:
                msg = await self._reader.read()
                if msg is None:
                    break
                if isinstance(msg, dict) and msg.get("op") == W_RESULTS:
                    on_results(self, msg["results"])
                else:
                    log.warning(
                        "unexpected message from local worker", worker=self.id, msg=repr(msg)[:200]
                    )
        except (FrameError, OSError) as exc:
            log.error("local worker connection broken", worker=self.id, error=str(exc))
        finally:
            self.alive = False
            if self._writer is not None:
                self._writer.close()
            if self._proc is not None:
                self.returncode = await self._proc.wait()

    def send_tasks(self, recs: list[TaskRecord]) -> None:
        assert self._writer is not None
        held = self.held
        wid = self.id
        wires = []
        for rec in recs:
            held[rec.task.id] = rec
            rec.worker = wid
            wires.append(rec.task.execution_wire(rec.attempt))
        self._writer.write(encode_frame({"op": W_RUN, "tasks": wires}))

    def terminate(self) -> None:
        """SIGTERM now, without waiting: the worker kills its task and exits; the
        supervisor sees it go and starts a replacement."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()

    def send_cancel(self, ids: list[str]) -> None:
        if self._writer is not None and self.alive:
            self._writer.write(encode_frame({"op": W_CANCEL, "ids": ids}))

    async def stop(self) -> None:
        """Ask the process to finish what it holds and exit; kill it if it will not."""
        self.stopping = True
        if self._writer is not None and self.alive:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(encode_frame({"op": W_STOP}))
                await self._writer.drain()
        if self._proc is not None:
            try:
                await asyncio.wait_for(self._proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                await self.kill()

    async def kill(self) -> None:
        """SIGTERM first: the worker's handler takes its running task's process group
        down with it, which a SIGKILL of the worker alone would orphan."""
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
