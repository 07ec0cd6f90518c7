"""The client-facing TCP server: one :class:`Session` per connection.

A session reads frames, validates each into a typed request and dispatches it
through a handler table. Handlers are synchronous and touch only the task table;
results reach clients through :class:`ResultStream` objects that are flushed at
most once per event-loop tick, as large frames, and only while the socket keeps up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from protocol.auth import new_challenge
from protocol.errors import ErrorCode, FrameError, FrameTooLarge, ValidationError
from protocol.framing import FrameReader, encode_frame
from protocol.messages import (
    PROTOCOL_VERSION,
    REQUEST_OPS,
    Auth,
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
from protocol.model import DEFAULT_USER
from scheduler.errors import AuthFailed, QuotaExceeded, SchedulerError, ShuttingDown

if TYPE_CHECKING:
    from scheduler.app import Scheduler
    from scheduler.records import Job

log = structlog.get_logger("taskmill.server")

SERVER_NAME = "taskmill/0.1"
RESULTS_PER_FRAME = 2000
HIGH_WATER = 4 * 1024 * 1024  # bytes queued on a socket before we stop adding results


class ResultStream:
    """A client's subscription to one job's results, from ``offset`` on."""

    __slots__ = ("follow", "job", "offset", "rid", "session")

    def __init__(self, session: Session, rid: int, job: Job, offset: int, follow: bool) -> None:
        self.session = session
        self.rid = rid
        self.job = job
        self.offset = offset
        self.follow = follow


class Session:
    def __init__(
        self, app: Scheduler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.app = app
        self.max_frame = app.settings.max_frame_bytes
        self.reader = FrameReader(
            reader, max_size=self.max_frame, partial_timeout_s=app.settings.read_timeout_s
        )
        # Authentication: with no tokens configured every session is trusted.
        self.authenticated = not app.tokens
        self.user: str | None = None  # the user a token pins this session to
        self._challenge: str | None = None
        self._key: str | None = None
        self._hang_up = False  # set after an auth failure: reply, then close
        self.writer = writer
        self.peer = writer.get_extra_info("peername")
        self.streams: list[ResultStream] = []
        self._flush_scheduled = False
        self._drain_task: asyncio.Task[None] | None = None
        self._closed = False
        self._handlers: dict[str, Callable[[Any], None]] = {
            "hello": self.on_hello,
            "auth": self.on_auth,
            "submit": self.on_submit,
            "results": self.on_results,
            "status": self.on_status,
            "cancel": self.on_cancel,
            "stats": self.on_stats,
            "ping": self.on_ping,
        }
        assert self._handlers.keys() == REQUEST_OPS, "every request op needs a handler"

    # --- the read loop -------------------------------------------------------------

    async def run(self) -> None:
        log.debug("client connected", peer=self.peer)
        try:
            while True:
                msg = await self.reader.read()
                if msg is None:
                    break
                self.handle(msg)
                if self._hang_up:
                    break
                if self.writer.transport.get_write_buffer_size() > HIGH_WATER:
                    # Backpressure: a client that does not read stops being read.
                    await self.writer.drain()
        except FrameError as exc:
            log.warning("bad frame; closing connection", peer=self.peer, error=exc.message)
            self.send(error_reply(None, exc.code, exc.message))
        except (ConnectionError, OSError):
            pass
        finally:
            await self.close()

    def handle(self, msg: Any) -> None:
        try:
            request = parse_request(msg)
        except ValidationError as exc:
            self.send(error_reply(exc.rid, exc.code, exc.message))
            return
        op = msg["op"]
        try:
            if not self.authenticated and op not in ("hello", "auth"):
                raise AuthFailed(f"authenticate first: {op} needs a session that passed auth")
            self._handlers[op](request)
        except AuthFailed as exc:
            log.warning("authentication failed", peer=self.peer, error=str(exc))
            self.send(error_reply(request.rid, exc.code, str(exc)))
            self._hang_up = True
        except SchedulerError as exc:
            self.send(error_reply(request.rid, exc.code, str(exc)))
        except Exception as exc:  # a bug must not take the server down
            log.exception("request failed", op=op, peer=self.peer)
            self.send(error_reply(request.rid, ErrorCode.INTERNAL, f"internal error: {exc!r}"))

    def send(self, obj: dict[str, Any]) -> None:
        if self._closed or self.writer.is_closing():
            return
        self.writer.write(encode_frame(obj, max_size=self.max_frame))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in self.streams:
            self.app.unwatch(stream)
        self.streams.clear()
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
        log.debug("client disconnected", peer=self.peer)

    # --- handlers ------------------------------------------------------------------

    def on_hello(self, req: Hello) -> None:
        if req.version != PROTOCOL_VERSION:
            self.send(
                error_reply(
                    req.rid,
                    ErrorCode.VERSION,
                    f"protocol version {req.version} is not supported "
                    f"(server speaks {PROTOCOL_VERSION})",
                )
            )
            return
        if self.authenticated:
            self.send(reply("hello", req.rid, version=PROTOCOL_VERSION, server=SERVER_NAME))
            return
        if req.key is None:
            raise AuthFailed("this scheduler requires a token (--token-file or TASKMILL_TOKEN)")
        self._key = req.key
        self._challenge = new_challenge()
        self.send(
            reply(
                "hello",
                req.rid,
                version=PROTOCOL_VERSION,
                server=SERVER_NAME,
                challenge=self._challenge,
            )
        )

    def on_auth(self, req: Auth) -> None:
        if self.authenticated and self._challenge is None:
            self.send(reply("auth", req.rid, user=self.user))
            return
        if self._challenge is None or self._key is None:
            raise AuthFailed("auth must answer the challenge of a hello")
        identity = self.app.tokens.verify(self._key, self._challenge, req.mac)
        self._challenge = None  # one answer per challenge
        if identity is None:
            raise AuthFailed("authentication failed: unknown token or wrong answer")
        self.authenticated = True
        self.user = identity.user
        log.info("client authenticated", peer=self.peer, user=identity.user)
        self.send(reply("auth", req.rid, user=identity.user))

    def on_submit(self, req: Submit) -> None:
        app = self.app
        if app.closing:
            raise ShuttingDown("the scheduler is shutting down and accepts no new tasks")
        if self.user is not None:
            self._pin_user(req)
        limit = app.settings.max_tasks_per_submit
        if len(req.tasks) > limit:
            raise QuotaExceeded(
                f"a submit may carry at most {limit} tasks, this one has {len(req.tasks)}"
            )
        job, ids = app.table.submit(req.tasks, job_id=req.job, final=req.final)
        app.dispatcher.wake()
        rid = req.rid

        def acknowledge(error: BaseException | None) -> None:
            # Only a durable batch is acknowledged: a client that got the ids can
            # rely on the tasks surviving a crash of the scheduler.
            if error is None:
                self.send(reply("submit", rid, job=job.id, ids=ids))
            else:
                app.cancel_unstored(job, ids, error)
                self.send(
                    error_reply(
                        rid,
                        ErrorCode.INTERNAL,
                        f"the journal could not store the batch ({error}); it was not accepted",
                    )
                )

        app.journal.after_commit(acknowledge)
        if req.final:
            app.job_progress((job,))

    def _pin_user(self, req: Submit) -> None:
        """A token with a user may only queue work as that user."""
        user = self.user
        assert user is not None
        for task in req.tasks:
            if task.user == user:
                continue
            if task.user != DEFAULT_USER:
                raise AuthFailed(f"this token may only submit as user {user!r}, not {task.user!r}")
            task.user = user

    def on_results(self, req: Results) -> None:
        job = self.app.table.job(req.job)
        stream = ResultStream(self, req.rid, job, min(req.since, job.durable), req.follow)
        self.streams.append(stream)
        self.app.watch(stream)
        self.schedule_flush()

    def on_status(self, req: Status) -> None:
        self.send(reply("status", req.rid, **self.app.table.status(req.id)))

    def on_cancel(self, req: Cancel) -> None:
        cancelled, cancelling = self.app.cancel(req.id)
        self.send(reply("cancel", req.rid, cancelled=cancelled, cancelling=cancelling))

    def on_stats(self, req: Stats) -> None:
        self.send(reply("stats", req.rid, **self.app.stats()))

    def on_ping(self, req: Ping) -> None:
        self.send(reply("ping", req.rid, time=time.time()))

    # --- result streaming -----------------------------------------------------------

    def schedule_flush(self) -> None:
        if self._flush_scheduled or self._closed:
            return
        self._flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed or self.writer.is_closing():
            return
        transport = self.writer.transport
        for stream in list(self.streams):
            if transport.get_write_buffer_size() > HIGH_WATER:
                self._wait_for_drain()
                return
            self._flush_stream(stream)

    def _flush_stream(self, stream: ResultStream) -> None:
        job = stream.job
        results = job.results
        transport = self.writer.transport
        while True:
            visible = job.durable  # never show a result the journal does not hold yet
            end = min(visible, stream.offset + RESULTS_PER_FRAME)
            batch = results[stream.offset : end]
            finished = end == visible and (job.durably_done or not stream.follow)
            if not batch and not finished:
                return
            self._send_results(
                stream.rid, batch, done=finished, total=job.total if job.sealed else None
            )
            stream.offset = end
            if finished:
                if job.durably_done:
                    self.app.table.collected(job, time.time())
                self.streams.remove(stream)
                self.app.unwatch(stream)
                return
            if end == visible:
                return
            if transport.get_write_buffer_size() > HIGH_WATER:
                self._wait_for_drain()
                return

    def _send_results(
        self, rid: int, batch: list[dict[str, Any]], *, done: bool, total: int | None
    ) -> None:
        try:
            self.send(results_frame(rid, batch, done=done, total=total))
        except FrameTooLarge:
            if len(batch) > 1:
                half = len(batch) // 2
                self._send_results(rid, batch[:half], done=False, total=total)
                self._send_results(rid, batch[half:], done=done, total=total)
                return
            oversized = dict(batch[0])
            oversized["value"] = None
            oversized["stdout"] = oversized["stderr"] = ""
            oversized["error"] = (
                oversized.get("error") or ""
            ) + " (result too large to send; value dropped)"
            self.send(results_frame(rid, [oversized], done=done, total=total))

    def _wait_for_drain(self) -> None:
        if self._drain_task is not None and not self._drain_task.done():
            return

        async def drain_then_flush() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.drain()
                self.schedule_flush()

        self._drain_task = asyncio.get_running_loop().create_task(drain_then_flush())
