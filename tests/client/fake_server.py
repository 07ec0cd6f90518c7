"""A small but complete scheduler that speaks the real wire protocol, for client tests.

It listens on a real TCP socket, validates every request with
:func:`protocol.messages.parse_request`, and implements every client op: ``hello``,
``submit`` (jobs created on first use, sealed by ``final``, client ids idempotent),
``results`` (follow and non-follow streams in frames of ``frame_size`` results),
``status``, ``cancel``, ``stats``, ``ping``, with ``error`` replies for anything bad.

Tasks "run" instantly, with a tiny built-in interpreter:

    shell  echo TEXT -> stdout "TEXT\\n", exit 0     exit N / false -> failed
           hold       -> stays running until release() or cancel
           anything else (sleep 0, true, ...) -> succeeded, exit 0
    call   echo(x) -> x (or the kwargs map)          add(*args) -> sum
           fail(msg) -> failed with error msg        hold -> like the shell hold
           any other name -> the submit is rejected with ``unknown_handler``

For reconnection tests it can :meth:`~FakeScheduler.stop` and
:meth:`~FakeScheduler.restart` on the same port with its state kept (a scheduler
restarted on its journal), and inject faults: drop a connection after applying a
submit but before replying (``drop_after_submits``), in the middle of a result stream
(``drop_stream_after``), and serve a resumed stream from a little before the asked
position (``resume_overlap``, a server that repeats results).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from protocol.errors import ErrorCode, FrameError, ValidationError
from protocol.framing import DEFAULT_MAX_FRAME, FrameReader, encode_frame
from protocol.messages import (
    PROTOCOL_VERSION,
    Cancel,
    Hello,
    Ping,
    Results,
    Stats,
    Status,
    Submit,
    error_reply,
    parse_request,
    reply,
    results_frame,
)
from protocol.model import Task, TaskKind, TaskState

HANDLERS = frozenset({"echo", "add", "fail", "hold"})
T = TypeVar("T")


@dataclass
class Record:
    task: Task
    state: TaskState = TaskState.QUEUED
    result: dict[str, Any] | None = None
    submitted: float = field(default_factory=time.time)


@dataclass
class Job:
    id: str
    ids: list[str] = field(default_factory=list)
    sealed: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def complete(self) -> bool:
        return self.sealed and len(self.results) == len(self.ids)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.streams: set[asyncio.Task[None]] = set()

    async def send(self, msg: dict[str, Any]) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(encode_frame(msg))
        await self.writer.drain()

    def abort(self) -> None:
        """Reset the connection at once: whatever is not yet sent is lost."""
        self.writer.transport.abort()


class FakeScheduler:
    def __init__(self, *, frame_size: int = 500, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.frame_size = frame_size
        self.max_frame = max_frame
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[str, Record] = {}
        self.ops: list[str] = []  # every request op received, in order
        self.submit_sizes: list[int] = []
        self.results_requests: list[Results] = []
        self.hellos = 0
        self.connections: set[Connection] = set()
        self.port = 0
        # Faults, for reconnection tests:
        self.drop_after_submits: set[int] = set()  # 1-based submit numbers: applied, no reply
        self.drop_stream_after: int | None = None  # abort once a stream sent this many results
        self.resume_overlap = 0  # a stream asked from since > 0 starts this much earlier
        self.submits_applied = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._counter = 0

    async def start(self) -> None:
        """Listen on 127.0.0.1: a fresh port the first time, the same one after a stop."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self.drop_connections()
        if server is not None:
            await server.wait_closed()

    async def stop(self) -> None:
        """Stop listening and drop every client; jobs and tasks are kept for a restart."""
        await self.close()

    async def restart(self) -> None:
        """Listen again on the same port, with the state the fake had when it stopped."""
        await self.start()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def __aenter__(self) -> FakeScheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- test hooks -----------------------------------------------------------------

    async def drop_connections(self) -> None:
        """Close every client connection abruptly (the client sees the socket end)."""
        for conn in list(self.connections):
            conn.writer.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def broadcast_error(self, code: str, message: str) -> None:
        """Send a connection-level error (rid nil) to every client, then close them."""
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                await conn.send(error_reply(None, code, message))
        await self.drop_connections()

    def release(self) -> int:
        """Finish every held task successfully; returns how many."""
        held = [r for r in self.tasks.values() if r.state is TaskState.RUNNING]
        for record in held:
            self._finish(record, TaskState.SUCCEEDED, exit_code=0)
        return len(held)

    # --- connection handling --------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = Connection(reader, writer)
        self.connections.add(conn)
        frames = FrameReader(reader, max_size=self.max_frame)
        try:
            while True:
                try:
                    msg = await frames.read()
                except FrameError as exc:
                    await conn.send(error_reply(None, exc.code, exc.message))
                    break
                if msg is None:
                    break
                await self._handle(conn, msg)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for stream in list(conn.streams):
                stream.cancel()
            for stream in list(conn.streams):
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await stream
            self.connections.discard(conn)
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _handle(self, conn: Connection, msg: Any) -> None:
        try:
            request = parse_request(msg)
            self.ops.append(type(request).__name__.lower())
            if isinstance(request, Hello):
                self.hellos += 1
                if request.version != PROTOCOL_VERSION:
                    raise ValidationError(
                        f"protocol version {request.version} is not supported",
                        code=ErrorCode.VERSION,
                        rid=request.rid,
                    )
                out = reply("hello", request.rid, version=PROTOCOL_VERSION, server="fake/0.1")
            elif isinstance(request, Submit):
                out = self._submit(request)
                self.submits_applied += 1
                if self.submits_applied in self.drop_after_submits:
                    conn.abort()  # applied, but the reply is never sent
                    return
            elif isinstance(request, Results):
                self.results_requests.append(request)
                job = self._job(request.job, request.rid)
                stream = asyncio.create_task(self._stream(conn, request, job))
                conn.streams.add(stream)
                stream.add_done_callback(conn.streams.discard)
                return
            elif isinstance(request, Status):
                out = self._status(request)
            elif isinstance(request, Cancel):
                out = reply("cancel", request.rid, cancelled=self._cancel(request), cancelling=0)
            elif isinstance(request, Stats):
                out = reply("stats", request.rid, **self.counters())
            elif isinstance(request, Ping):
                out = reply("ping", request.rid, time=time.time())
        except ValidationError as exc:
            await conn.send(error_reply(exc.rid, exc.code, exc.message))
            return
        await conn.send(out)

    # --- ops ------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        states = [r.state for r in self.tasks.values()]
        return {
            "connections": len(self.connections),
            "jobs": len(self.jobs),
            "tasks": len(states),
            "finished": sum(1 for s in states if s.finished),
            "running": sum(1 for s in states if s is TaskState.RUNNING),
        }

    def _job(self, job_id: str, rid: int) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ValidationError(f"no job {job_id!r}", code=ErrorCode.NOT_FOUND, rid=rid)
        return job

    def _submit(self, request: Submit) -> dict[str, Any]:
        for i, task in enumerate(request.tasks):
            if task.kind is TaskKind.CALL and task.fn not in HANDLERS:
                raise ValidationError(
                    f"tasks[{i}].fn: no handler named {task.fn!r}",
                    code=ErrorCode.UNKNOWN_HANDLER,
                    rid=request.rid,
                )
        self._counter += 1
        job_id = request.job or f"job{self._counter}"
        job = self.jobs.get(job_id)
        if job is None:
            job = self.jobs[job_id] = Job(job_id)
        elif job.sealed:
            # A batch sent again after a lost reply: every id already in the job.
            tasks = self.tasks
            if not all(t.id in tasks and tasks[t.id].task.job == job_id for t in request.tasks):
                raise ValidationError(
                    f"job {job_id!r} is sealed", code=ErrorCode.CONFLICT, rid=request.rid
                )
        self.submit_sizes.append(len(request.tasks))
        ids: list[str] = []
        for task in request.tasks:
            if task.id and task.id in self.tasks:
                ids.append(task.id)  # idempotent: the existing task answers
                continue
            task.id = task.id or f"{job_id}.{len(job.ids)}"
            task.job = job_id
            record = self.tasks[task.id] = Record(task)
            job.ids.append(task.id)
            ids.append(task.id)
            self._execute(record)
        job.sealed = job.sealed or request.final
        job.notify()
        return reply("submit", request.rid, job=job_id, ids=ids)

    def _execute(self, record: Record) -> None:
        task = record.task
        if task.kind is TaskKind.SHELL:
            cmd = task.cmd or ""
            word, _, rest = cmd.partition(" ")
            if word == "hold":
                record.state = TaskState.RUNNING
            elif word == "echo":
                self._finish(record, TaskState.SUCCEEDED, exit_code=0, stdout=rest + "\n")
            elif word in ("exit", "false"):
                code = int(rest or 1)
                state = TaskState.SUCCEEDED if code == 0 else TaskState.FAILED
                self._finish(record, state, exit_code=code, stderr=f"exit {code}\n")
            else:
                self._finish(record, TaskState.SUCCEEDED, exit_code=0)
            return
        if task.fn == "hold":
            record.state = TaskState.RUNNING
        elif task.fn == "echo":
            value = task.args[0] if task.args else task.kwargs
            self._finish(record, TaskState.SUCCEEDED, value=value)
        elif task.fn == "add":
            self._finish(record, TaskState.SUCCEEDED, value=sum(task.args))
        else:  # fail
            message = str(task.args[0]) if task.args else "failed"
            self._finish(record, TaskState.FAILED, error=f"RuntimeError: {message}")

    def _finish(self, record: Record, state: TaskState, **outcome: Any) -> None:
        now = time.time()
        record.state = state
        record.result = {
            "id": record.task.id,
            "job": record.task.job,
            "state": state.value,
            "exit_code": outcome.get("exit_code"),
            "stdout": outcome.get("stdout", ""),
            "stderr": outcome.get("stderr", ""),
            "value": outcome.get("value"),
            "error": outcome.get("error"),
            "worker": "fake-0",
            "attempt": 1,
            "submitted": record.submitted,
            "started": now,
            "finished": now,
        }
        job = self.jobs[record.task.job]
        job.results.append(record.result)
        job.notify()

    async def _stream(self, conn: Connection, request: Results, job: Job) -> None:
        pos = max(0, request.since - self.resume_overlap) if request.since else 0
        sent = 0
        while True:
            event = job.changed
            complete = job.complete
            end = len(job.results)
            total = len(job.ids) if job.sealed else None
            while True:
                chunk = job.results[pos : min(end, pos + self.frame_size)]
                pos += len(chunk)
                last = pos >= end and (complete or not request.follow)
                if chunk or last:
                    await conn.send(results_frame(request.rid, chunk, done=last, total=total))
                    sent += len(chunk)
                    limit = self.drop_stream_after
                    if limit is not None and sent >= limit and not last:
                        self.drop_stream_after = None
                        conn.abort()
                        return
                if pos >= end:
                    break
            if last:
                return
            await event.wait()

    def _status(self, request: Status) -> dict[str, Any]:
        job = self.jobs.get(request.id)
        if job is not None:
            counts: dict[str, int] = {}
            for task_id in job.ids:
                state = self.tasks[task_id].state.value
                counts[state] = counts.get(state, 0) + 1
            return reply(
                "status",
                request.rid,
                kind="job",
                job=job.id,
                counts=counts,
                total=len(job.ids),
                sealed=job.sealed,
            )
        record = self.tasks.get(request.id)
        if record is None:
            raise ValidationError(
                f"no job or task {request.id!r}", code=ErrorCode.NOT_FOUND, rid=request.rid
            )
        info: dict[str, Any] = {
            "id": record.task.id,
            "job": record.task.job,
            "kind": record.task.kind.value,
            "user": record.task.user,
            "priority": record.task.priority,
            "state": record.state.value,
            "attempt": 1,
            "max_attempts": record.task.max_attempts,
            "worker": "fake-0" if record.state is not TaskState.QUEUED else None,
            "submitted": record.submitted,
            "started": None,
            "finished": None,
        }
        if record.result is not None:
            info["started"] = record.result["started"]
            info["finished"] = record.result["finished"]
            info["result"] = record.result
        return reply("status", request.rid, kind="task", task=info)

    def _cancel(self, request: Cancel) -> int:
        job = self.jobs.get(request.id)
        if job is not None:
            records = [self.tasks[i] for i in job.ids]
        elif request.id in self.tasks:
            records = [self.tasks[request.id]]
        else:
            raise ValidationError(
                f"no job or task {request.id!r}", code=ErrorCode.NOT_FOUND, rid=request.rid
            )
        unfinished = [r for r in records if not r.state.finished]
        for record in unfinished:
            self._finish(record, TaskState.CANCELLED, error="cancelled")
        return len(unfinished)


class ThreadedFakeScheduler:
    """A :class:`FakeScheduler` on its own event loop thread, for blocking callers
    (``SyncClient`` and the CLI's ``main()``, which run their own loops)."""

    def __init__(self, **kwargs: Any) -> None:
        self.server = FakeScheduler(**kwargs)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-scheduler")

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout=30)

    def run_sync(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self.call(wrapper)

    def __enter__(self) -> ThreadedFakeScheduler:
        self._thread.start()
        self.call(self.server.start)
        return self

    def stop(self) -> None:
        self.call(self.server.stop)

    def restart(self) -> None:
        self.call(self.server.restart)

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.server.close)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()
