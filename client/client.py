"""The asyncio client: one TCP connection, many pipelined requests.

A single background reader task owns the receiving side. It routes each reply by its
``rid``: a one-shot request gets its reply through a future, a result stream gets
whole frames through its own queue (one queue item per frame of up to hundreds of
results, never one asyncio object per result). Requests are written as soon as
they are made, so a large submission costs one frame per batch and one round trip
in total, not one per task.

    async with Client("127.0.0.1", 7070) as client:
        results = await client.run([{"cmd": "sleep 0"}] * 1000)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from client.errors import ClientError, ConnectError, ConnectionLost, format_address, os_reason
from client.tasks import (
    ResultBatch,
    Submission,
    TaskLike,
    new_job_id,
    split_batches,
    task_info,
    task_map,
)
from protocol.errors import FrameError, FrameTooLarge, RemoteError
from protocol.framing import DEFAULT_MAX_FRAME, FrameReader, encode_frame
from protocol.messages import PROTOCOL_VERSION
from protocol.model import Result

CLIENT_NAME = "taskmill/0.1"
DEFAULT_BATCH_SIZE = 5000

__all__ = [
    "CLIENT_NAME",
    "DEFAULT_BATCH_SIZE",
    "Client",
    "ResultBatch",
    "Submission",
    "TaskLike",
    "new_job_id",
    "task_info",
    "task_map",
]

_StreamItem = dict[str, Any] | BaseException


def _reply_fields(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("op", "rid")}


class Client:
    """An asyncio connection to a taskmill scheduler.

    Use ``await Client.connect(host, port)`` or ``async with Client(host, port)``.
    All methods must be called from the event loop the client was opened on.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7070,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        connect_timeout: float = 10.0,
        token: str | None = None,
        client_name: str = CLIENT_NAME,
    ) -> None:
        self.host = host
        self.port = port
        self.max_frame = max_frame
        self.connect_timeout = connect_timeout
        self.token = token
        self.client_name = client_name
        self.server: str | None = None
        self.server_version: int | None = None
        self._rids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._streams: dict[int, asyncio.Queue[_StreamItem]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._lost: str | None = None  # why the connection is unusable, once it is
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str = "127.0.0.1",
        port: int = 7070,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        connect_timeout: float = 10.0,
        token: str | None = None,
    ) -> Client:
        """Open a connection and complete the ``hello`` handshake."""
        client = cls(host, port, max_frame=max_frame, connect_timeout=connect_timeout, token=token)
        await client.open()
        return client

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def connected(self) -> bool:
        return self._writer is not None and self._lost is None

    async def open(self) -> None:
        """Connect and say hello. Raises :class:`ConnectError` when unreachable."""
        if self._writer is not None or self._closed:
            raise ClientError("a Client can be opened once")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=1 << 20),
                self.connect_timeout,
            )
        except TimeoutError as exc:
            raise ConnectError(
                self.host, self.port, f"timed out after {self.connect_timeout:g}s"
            ) from exc
        except OSError as exc:
            raise ConnectError(self.host, self.port, os_reason(exc)) from exc
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read_loop(FrameReader(reader, max_size=self.max_frame)),
            name=f"taskmill-client-reader {self.address}",
        )
        hello: dict[str, Any] = {
            "op": "hello",
            "version": PROTOCOL_VERSION,
            "client": self.client_name,
        }
        if self.token is not None:
            hello["token"] = self.token
        try:
            reply = await asyncio.wait_for(self._request(hello), self.connect_timeout)
        except TimeoutError as exc:
            await self.close()
            raise ConnectError(self.host, self.port, "no reply to hello") from exc
        except ConnectionLost as exc:
            await self.close()
            raise ConnectError(self.host, self.port, str(exc)) from exc
        except BaseException:
            await self.close()
            raise
        self.server = reply.get("server")
        self.server_version = reply.get("version")

    async def close(self) -> None:
        """Stop the reader, close the socket, fail whatever is still waiting. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_all("the client was closed")
        writer = self._writer
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def __aenter__(self) -> Self:
        if self._writer is None:
            await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- receiving ------------------------------------------------------------------

    async def _read_loop(self, reader: FrameReader) -> None:
        why = f"the scheduler at {self.address} closed the connection"
        pending = self._pending
        streams = self._streams
        try:
            while True:
                msg = await reader.read()
                if msg is None:
                    break
                if type(msg) is not dict:
                    why = f"the scheduler sent a non-map message ({type(msg).__name__})"
                    break
                rid: Any = msg.get("rid")
                queue = streams.get(rid)
                if queue is not None:
                    if msg.get("op") == "error":
                        queue.put_nowait(_remote_error(msg))
                    else:
                        queue.put_nowait(msg)
                    continue
                fut = pending.pop(rid, None)
                if fut is not None:
                    if not fut.done():
                        if msg.get("op") == "error":
                            fut.set_exception(_remote_error(msg))
                        else:
                            fut.set_result(msg)
                    continue
                if msg.get("op") == "error" and rid is None:
                    # A connection-level error: every request fails with it.
                    self._fail_all_with(msg)
                    why = f"the scheduler ended the connection: {msg.get('message')}"
                    break
                # A reply nobody waits for (an abandoned stream): drop it.
        except FrameError as exc:
            why = f"bad frame from the scheduler at {self.address}: {exc}"
        except OSError as exc:
            why = f"connection to {self.address} lost: {os_reason(exc)}"
        self._fail_all(why)
        if self._writer is not None:
            self._writer.close()

    def _fail_all_with(self, msg: dict[str, Any]) -> None:
        self._lost = f"the scheduler reported: {msg.get('code')}: {msg.get('message')}"
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(_remote_error(msg))
        self._pending.clear()
        for queue in self._streams.values():
            queue.put_nowait(_remote_error(msg))

    def _fail_all(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(why))
        self._pending.clear()
        for queue in self._streams.values():
            queue.put_nowait(ConnectionLost(why))

    # --- sending --------------------------------------------------------------------

    def _check_usable(self) -> asyncio.StreamWriter:
        if self._lost is not None:
            raise ConnectionLost(self._lost)
        if self._writer is None:
            raise ClientError("the client is not connected: call open() or use Client.connect()")
        return self._writer

    def _encode(self, msg: dict[str, Any]) -> bytes:
        try:
            return encode_frame(msg, max_size=self.max_frame)
        except FrameTooLarge:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise ClientError(f"cannot encode the {msg.get('op')} request: {exc}") from exc

    async def _drain(self) -> None:
        writer = self._check_usable()
        try:
            await writer.drain()
        except OSError as exc:
            raise ConnectionLost(f"connection to {self.address} lost: {os_reason(exc)}") from exc

    def _start(self, msg: dict[str, Any]) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        """Write one request and return its rid and the future of its reply (no await)."""
        writer = self._check_usable()
        rid = next(self._rids)
        msg["rid"] = rid
        frame = self._encode(msg)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        writer.write(frame)
        self._pending[rid] = fut
        return rid, fut

    def _discard(self, rid: int, fut: asyncio.Future[dict[str, Any]]) -> None:
        """Forget a request whose reply will not be awaited (any failure is dropped)."""
        self._pending.pop(rid, None)
        if fut.done():
            if not fut.cancelled():
                fut.exception()  # mark retrieved
        else:
            fut.cancel()

    async def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        rid, fut = self._start(msg)
        try:
            await self._drain()
            return await fut
        finally:
            self._discard(rid, fut)

    # --- operations -----------------------------------------------------------------

    async def submit(
        self,
        tasks: Iterable[TaskLike],
        *,
        job: str | None = None,
        user: str | None = None,
        priority: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        final: bool = True,
    ) -> Submission:
        """Submit tasks as one job, in pipelined batches; the last batch seals the job.

        ``job`` adds to an existing (unsealed) job or names a new one; by default a new
        id is made here, so every batch can be sent before any reply arrives. With
        ``final=False`` the job stays open for a later ``submit(..., job=...)``.
        Raises :class:`RemoteError` when the scheduler rejects a batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        job = job or new_job_id()
        base: dict[str, Any] = {"op": "submit", "job": job}
        if user is not None:
            base["user"] = user
        if priority is not None:
            base["priority"] = priority
        started: list[tuple[int, asyncio.Future[dict[str, Any]], int]] = []
        try:
            parts = split_batches(tasks, batch_size)
            batch = next(parts, [])
            while True:
                following = next(parts, None)
                started += self._start_submit(base, batch, final=final and following is None)
                await self._drain()
                if following is None:
                    break
                batch = following
            replies = await asyncio.gather(*(f for _, f, _ in started), return_exceptions=True)
        finally:
            for rid, fut, _ in started:
                self._discard(rid, fut)
        ids: list[str] = []
        for reply, (_, _, count) in zip(replies, started, strict=True):
            if isinstance(reply, BaseException):
                raise reply
            got = reply.get("ids")
            if not isinstance(got, list) or len(got) != count:
                raise ClientError(
                    f"the scheduler answered a batch of {count} tasks with "
                    f"{len(got) if isinstance(got, list) else 'no'} ids"
                )
            ids.extend(got)
        return Submission(job, ids)

    def _start_submit(
        self, base: dict[str, Any], batch: list[dict[str, Any]], *, final: bool
    ) -> list[tuple[int, asyncio.Future[dict[str, Any]], int]]:
        """Send ``batch`` as one submit request, halved until each part fits in a frame."""
        try:
            rid, fut = self._start({**base, "tasks": batch, "final": final})
        except FrameTooLarge:
            if len(batch) <= 1:
                raise ClientError(
                    f"a task ({str(batch[0].get('id') or batch[0].get('fn') or 'cmd')[:60]}) "
                    f"does not fit in the {self.max_frame}-byte frame limit"
                ) from None
            half = len(batch) // 2
            return self._start_submit(base, batch[:half], final=False) + self._start_submit(
                base, batch[half:], final=final
            )
        return [(rid, fut, len(batch))]

    async def result_batches(
        self, job: str, *, follow: bool = True, since: int = 0
    ) -> AsyncGenerator[ResultBatch, None]:
        """Stream a job's results frame by frame, as they finish.

        ``follow=False`` returns what is finished now and stops.
        """
        rid = next(self._rids)
        queue: asyncio.Queue[_StreamItem] = asyncio.Queue()
        writer = self._check_usable()
        request = {"op": "results", "rid": rid, "job": job, "follow": follow, "since": since}
        frame = self._encode(request)
        self._streams[rid] = queue
        from_wire = Result.from_wire
        try:
            writer.write(frame)
            await self._drain()
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                wires = item.get("results") or ()
                done = bool(item.get("done"))
                yield ResultBatch([from_wire(w) for w in wires], item.get("total"), done)
                if done:
                    return
        finally:
            self._streams.pop(rid, None)

    async def results(
        self, job: str, *, follow: bool = True, since: int = 0
    ) -> AsyncGenerator[Result, None]:
        """Yield a job's results one by one, in order of completion."""
        async with contextlib.aclosing(
            self.result_batches(job, follow=follow, since=since)
        ) as batches:
            async for batch in batches:
                for result in batch.results:
                    yield result

    async def run(
        self,
        tasks: Iterable[TaskLike],
        *,
        job: str | None = None,
        user: str | None = None,
        priority: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[Result]:
        """Submit a job and wait for all its results (in order of completion)."""
        submission = await self.submit(
            tasks, job=job, user=user, priority=priority, batch_size=batch_size
        )
        out: list[Result] = []
        async with contextlib.aclosing(self.result_batches(submission.job)) as batches:
            async for batch in batches:
                out.extend(batch.results)
        return out

    async def status(self, id: str) -> dict[str, Any]:
        """A job's state counts (``kind == "job"``) or one task's record (``"task"``)."""
        return _reply_fields(await self._request({"op": "status", "id": id}))

    async def cancel(self, id: str) -> int:
        """Cancel a job's unfinished tasks, or one task.

        Returns how many tasks end ``cancelled``: queued ones (cancelled at once) plus
        running ones being stopped (the reply's ``cancelled`` + ``cancelling``).
        """
        reply = await self._request({"op": "cancel", "id": id})
        return int(reply.get("cancelled") or 0) + int(reply.get("cancelling") or 0)

    async def stats(self) -> dict[str, Any]:
        """The scheduler's counters."""
        return _reply_fields(await self._request({"op": "stats"}))

    async def ping(self) -> float:
        """Round-trip time of one request, in seconds."""
        start = time.perf_counter()
        await self._request({"op": "ping"})
        return time.perf_counter() - start

    # --- pyLoadBalancer-style conveniences ----------------------------------------

    async def send_task(
        self,
        name: str,
        kwargs: Mapping[str, Any] | None = None,
        *,
        user: str | None = None,
        priority: int = 0,
    ) -> str:
        """Submit one call of handler ``name`` as a one-task job; returns the task id."""
        task: dict[str, Any] = {"fn": name, "kwargs": dict(kwargs or {})}
        if priority:
            task["priority"] = priority
        submission = await self.submit([task], user=user)
        return submission.ids[0]

    async def get_task(self, id: str) -> dict[str, Any]:
        """A task's state in pyLoadBalancer's terms (see :func:`task_info`)."""
        try:
            reply = await self.status(id)
        except RemoteError as exc:
            if exc.raw_code == "not_found":
                return {
                    "id": id,
                    "state": None,
                    "progress": None,
                    "result": None,
                    "error": exc.message,
                }
            raise
        return task_info(id, reply)


def _remote_error(msg: dict[str, Any]) -> RemoteError:
    return RemoteError(str(msg.get("code") or "internal"), str(msg.get("message") or ""))
