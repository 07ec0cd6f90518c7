"""The asyncio client: pipelined requests over one connection, replaced when lost.

Requests are written as soon as they are made, so a large submission costs one
frame per batch and one round trip in total, not one per task; results come back
in frames of hundreds. :mod:`client.connection` holds the socket and routes replies;
:mod:`client.reconnect` replaces a lost connection (by default, for up to 60 s), after
which a submission resends the batches not yet acknowledged and a result stream asks
again from the position it reached, so no task is stored twice and no result is
lost or yielded twice.

    async with Client("127.0.0.1", 7070) as client:
        results = await client.run([{"cmd": "sleep 0"}] * 1000)
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self

import structlog

from client.connection import Connection, client_tls_context
from client.errors import ClientError, format_address
from client.reconnect import NO_RECONNECT, Link, ReconnectPolicy, is_transient
from client.submitting import Submitter
from client.tasks import (
    ResultBatch,
    Submission,
    TaskLike,
    new_job_id,
    split_batches,
    task_info,
    task_map,
)
from protocol.errors import ErrorCode, RemoteError
from protocol.framing import DEFAULT_MAX_FRAME
from protocol.model import Result

CLIENT_NAME = "taskmill/0.1"
DEFAULT_BATCH_SIZE = 5000
DEFAULT_RECONNECT_TIMEOUT_S = 60.0

__all__ = [
    "CLIENT_NAME",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_RECONNECT_TIMEOUT_S",
    "Client",
    "ReconnectPolicy",
    "ResultBatch",
    "Submission",
    "TaskLike",
    "new_job_id",
    "task_info",
    "task_map",
]

log = structlog.get_logger("taskmill.client")


def _reply_fields(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("op", "rid")}


class Client:
    """An asyncio connection to a taskmill scheduler.

    Use ``await Client.connect(host, port)`` or ``async with Client(host, port)``.
    All methods must be called from the event loop the client was opened on.

    With ``reconnect`` (the default) a lost connection is made again with back-off
    for up to ``reconnect_timeout_s`` seconds, then :class:`ReconnectFailed` is raised;
    ``reconnect_policy`` sets every knob at once. Without it, a lost connection
    raises :class:`ConnectionLost`. The first connection is never retried.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7070,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        connect_timeout: float = 10.0,
        token: str | None = None,
        tls_ca: str | None = None,
        tls: bool = False,
        client_name: str = CLIENT_NAME,
        reconnect: bool = True,
        reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
        reconnect_policy: ReconnectPolicy | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.max_frame = max_frame
        self.connect_timeout = connect_timeout
        self.token = token
        # TLS when a CA file is given (a self-signed scheduler) or tls=True (system CAs).
        self.ssl = client_tls_context(tls_ca) if (tls_ca or tls) else None
        self.client_name = client_name
        if reconnect_policy is None:
            reconnect_policy = (
                ReconnectPolicy(timeout_s=reconnect_timeout_s) if reconnect else NO_RECONNECT
            )
        self._link = Link(self._new_connection, reconnect_policy, host, port)
        self._opened = False

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
        tls_ca: str | None = None,
        tls: bool = False,
        reconnect: bool = True,
        reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
        reconnect_policy: ReconnectPolicy | None = None,
    ) -> Client:
        """Open a connection and complete the ``hello`` handshake."""
        client = cls(
            host,
            port,
            max_frame=max_frame,
            connect_timeout=connect_timeout,
            token=token,
            tls_ca=tls_ca,
            tls=tls,
            reconnect=reconnect,
            reconnect_timeout_s=reconnect_timeout_s,
            reconnect_policy=reconnect_policy,
        )
        await client.open()
        return client

    def _new_connection(self) -> Connection:
        return Connection(
            self.host,
            self.port,
            max_frame=self.max_frame,
            connect_timeout=self.connect_timeout,
            token=self.token,
            ssl=self.ssl,
            client_name=self.client_name,
        )

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def reconnect_policy(self) -> ReconnectPolicy:
        return self._link.policy

    @property
    def connected(self) -> bool:
        conn = self._link.current
        return conn is not None and conn.usable and not self._link.closed

    @property
    def reconnects(self) -> int:
        """How many times a lost connection was replaced."""
        return self._link.reconnects

    @property
    def server(self) -> str | None:
        conn = self._link.current
        return conn.server if conn is not None else None

    @property
    def server_version(self) -> int | None:
        conn = self._link.current
        return conn.server_version if conn is not None else None

    async def open(self) -> None:
        """Connect and say hello. Raises :class:`ConnectError` when unreachable."""
        if self._opened or self._link.closed:
            raise ClientError("a Client can be opened once")
        self._opened = True
        await self._link.open()

    async def close(self) -> None:
        """Close the connection and fail whatever is still waiting. Idempotent."""
        await self._link.close()

    async def __aenter__(self) -> Self:
        if not self._opened:
            await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- requests -------------------------------------------------------------------

    async def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """One request and its reply; sent once more after a reconnect."""
        link = self._link
        conn = await link.connection()
        try:
            reply = await conn.request(dict(msg))
        except Exception as exc:
            if not is_transient(exc):
                raise
            conn = await link.recover(conn, exc)
            reply = await conn.request(dict(msg))
        link.progress()
        return reply

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
        max_attempts: int | None = None,
        timeout_s: float | None = None,
    ) -> Submission:
        """Submit tasks as one job, in pipelined batches; the last batch seals the job.

        ``job`` adds to an existing (unsealed) job or names a new one; by default a new
        id is made here, so every batch can be sent before any reply arrives. With
        ``final=False`` the job stays open for a later ``submit(..., job=...)``.
        A task without an id gets ``JOB.INDEX`` (its position in the job), so a batch
        whose reply was lost can be sent again safely; naming ``job`` costs one
        ``status`` round trip first, to learn where the job's ids go on (two clients
        adding unnamed tasks to one open job at the same time could pick the same
        ids: give ids then). ``max_attempts`` and
        ``timeout_s`` apply to the tasks that do not set their own.
        Raises :class:`RemoteError` when the scheduler rejects a batch.
        """
        job, start = await self._job_start(job, batch_size)
        submitter, parts = self._submitter(
            tasks, job, start, user, priority, batch_size, max_attempts, timeout_s
        )
        return await self._finish_submit(submitter, parts, job, final=final)

    async def _job_start(self, job: str | None, batch_size: int) -> tuple[str, int]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if job is None:
            return new_job_id(), 0
        return job, await self._job_size(job)

    def _submitter(
        self,
        tasks: Iterable[TaskLike],
        job: str,
        start: int,
        user: str | None,
        priority: int | None,
        batch_size: int,
        max_attempts: int | None,
        timeout_s: float | None,
    ) -> tuple[Submitter, Iterator[list[dict[str, Any]]]]:
        base: dict[str, Any] = {"op": "submit", "job": job}
        if user is not None:
            base["user"] = user
        if priority is not None:
            base["priority"] = priority
        defaults = {"max_attempts": max_attempts, "timeout_s": timeout_s}
        parts = split_batches(tasks, batch_size, job=job, start=start, defaults=defaults)
        return Submitter(self._link, base, max_frame=self.max_frame), parts

    @staticmethod
    async def _finish_submit(
        submitter: Submitter, parts: Iterator[list[dict[str, Any]]], job: str, *, final: bool
    ) -> Submission:
        ids = await submitter.run(parts, final=final)
        if submitter.resent:
            log.debug("batches resent after a reconnect", job=job, batches=submitter.resent)
        return Submission(job, ids)

    async def _job_size(self, job: str) -> int:
        """How many tasks ``job`` holds already (0 for a new job): where its ids go on."""
        try:
            status = await self.status(job)
        except RemoteError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return 0
            raise
        total = status.get("total") if status.get("kind") == "job" else 0
        return total if isinstance(total, int) else 0

    async def result_batches(
        self, job: str, *, follow: bool = True, since: int = 0
    ) -> AsyncGenerator[ResultBatch, None]:
        """Stream a job's results frame by frame, as they finish.

        ``follow=False`` returns what is finished now and stops. After a reconnect the
        stream asks again from the position it reached; a result id seen before on
        this stream is dropped, so none is yielded twice.
        """
        link = self._link
        conn = await link.connection()
        position = since
        seen: set[str] = set()
        from_wire = Result.from_wire
        while True:
            rid: int | None = None
            try:
                request = {"op": "results", "job": job, "follow": follow, "since": position}
                rid, queue = conn.open_stream(request)
                await conn.drain()
                while True:
                    item = await queue.get()
                    if isinstance(item, BaseException):
                        raise item
                    wires = item.get("results") or ()
                    position += len(wires)
                    results: list[Result] = []
                    for wire in wires:
                        task_id = wire["id"]
                        if task_id not in seen:
                            seen.add(task_id)
                            results.append(from_wire(wire))
                    link.progress()
                    done = bool(item.get("done"))
                    if results or done or not wires:
                        yield ResultBatch(results, item.get("total"), done)
                    if done:
                        return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if rid is not None:
                    conn.close_stream(rid)
                    rid = None
                conn = await link.recover(conn, exc)
                log.debug("resuming a result stream", job=job, since=position)
            finally:
                if rid is not None:
                    conn.close_stream(rid)

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
        max_attempts: int | None = None,
        timeout_s: float | None = None,
    ) -> list[Result]:
        """Submit a job and wait for all its results (in order of completion).

        A job that fits in one batch costs one round trip, not two: its ``submit`` frame
        and the request for its results go out in the same write (the scheduler handles
        a connection's frames in order, so the job exists when its results are asked for).
        """
        job, start = await self._job_start(job, batch_size)
        submitter, parts = self._submitter(
            tasks, job, start, user, priority, batch_size, max_attempts, timeout_s
        )
        first = next(parts, [])
        second = next(parts, None)
        if second is not None:  # several batches: their round trip is amortised anyway
            await self._finish_submit(
                submitter, itertools.chain([first, second], parts), job, final=True
            )
            return await self._collect(job)
        submitter.prime(await self._link.connection(), first, final=True)
        try:
            out = await self._collect(job)
        except RemoteError as exc:
            # A rejected batch never made the job; its own error says why. A batch lost
            # with the connection is sent again by _finish_submit, then results are read.
            if exc.code is not ErrorCode.NOT_FOUND:
                raise
            await self._finish_submit(submitter, iter(()), job, final=True)
            return await self._collect(job)
        await self._finish_submit(submitter, iter(()), job, final=True)
        return out

    async def _collect(self, job: str) -> list[Result]:
        out: list[Result] = []
        async with contextlib.aclosing(self.result_batches(job)) as batches:
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
