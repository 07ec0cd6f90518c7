"""Reconnection: the policy, and the :class:`Link` that replaces a lost connection.

A :class:`Link` holds the client's current :class:`Connection`. An operation that
loses its connection calls :meth:`Link.recover` with the failed connection and the
exception; the link closes it, connects again with exponential back-off (with jitter)
until the policy's total timeout, and returns the new connection. The operation then
repeats whatever was not acknowledged: :mod:`client.submitting` resends unacknowledged
batches (task ids make that idempotent) and a result stream asks again from the
position it reached. Several operations may lose the same connection at once; the
first to call :meth:`Link.recover` reconnects, the others get the new connection.

The timeout runs from the loss until an operation makes progress on a new connection
(:meth:`Link.progress`), so a scheduler that accepts and drops connections in a loop
still ends in :class:`ReconnectFailed`. The very first connection is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog

from client.connection import Connection
from client.errors import (
    ClientError,
    ConnectError,
    ConnectionLost,
    ReconnectFailed,
    format_address,
)
from protocol.errors import ErrorCode, RemoteError

log = structlog.get_logger("taskmill.client")

CLOSED = "the client was closed"


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """When and how long to reconnect after a lost connection.

    Delays start at ``initial_delay_s`` and grow by ``multiplier`` up to
    ``max_delay_s``; each is shortened by a random fraction up to ``jitter`` so that
    many clients of a restarted scheduler do not come back in step. ``timeout_s`` is
    the total time allowed from the loss to a working connection.
    """

    enabled: bool = True
    timeout_s: float = 60.0
    initial_delay_s: float = 0.1
    max_delay_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.timeout_s < 0:
            raise ValueError(f"the reconnect timeout must be >= 0, got {self.timeout_s}")
        if not 0 < self.initial_delay_s <= self.max_delay_s:
            raise ValueError("reconnect delays need 0 < initial_delay_s <= max_delay_s")
        if self.multiplier < 1:
            raise ValueError(f"the back-off multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    def delays(self) -> Iterator[float]:
        """The pauses between attempts: 0.1, 0.2, 0.4, ... 2, 2, ... (less jitter)."""
        delay = self.initial_delay_s
        while True:
            yield delay * (1.0 - self.jitter * random.random())
            delay = min(delay * self.multiplier, self.max_delay_s)


NO_RECONNECT = ReconnectPolicy(enabled=False)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "this connection is gone", so reconnecting may help.

    A lost connection is, and so is the scheduler saying it is shutting down (it is
    about to close the connection; a restarted one will take the work).
    """
    if isinstance(exc, ConnectionLost):
        return not isinstance(exc, ReconnectFailed)
    return isinstance(exc, RemoteError) and exc.code is ErrorCode.SHUTTING_DOWN


@dataclass(slots=True)
class _Outage:
    started: float
    delays: Iterator[float]
    cause: str
    attempts: int = 0
    last: str = field(default="")


class Link:
    """The current connection of one client, and its replacement when it is lost."""

    def __init__(
        self, factory: Callable[[], Connection], policy: ReconnectPolicy, host: str, port: int
    ) -> None:
        self.policy = policy
        self.current: Connection | None = None
        self.reconnects = 0  # successful reconnections so far
        self._factory = factory
        self._host = host
        self._port = port
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._closed = False
        self._outage: _Outage | None = None
        self._failure: ReconnectFailed | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def open(self) -> Connection:
        """The first connection: one attempt, :class:`ConnectError` when it fails."""
        conn = self._factory()
        await conn.open()
        if self._closed:
            await conn.close()
            raise ConnectionLost(CLOSED)
        self.current = conn
        return conn

    async def close(self) -> None:
        self._closed = True
        self._closing.set()
        if self.current is not None:
            await self.current.close(CLOSED)

    def progress(self) -> None:
        """An operation got a reply: the connection works, a later loss is a new outage."""
        self._outage = None

    async def connection(self) -> Connection:
        """The current connection, reconnected first when it was lost meanwhile."""
        conn = self.current
        if conn is None:
            raise ClientError("the client is not connected: call open() or use Client.connect()")
        if conn.usable:
            return conn
        if self._closed:
            raise ConnectionLost(CLOSED)
        return await self.recover(conn, ConnectionLost(conn.lost or "the connection was lost"))

    async def recover(self, failed: Connection, cause: BaseException) -> Connection:
        """A working connection in place of ``failed``, or ``cause`` raised again.

        ``cause`` is re-raised when reconnecting is off or cannot help; a client closed
        meanwhile raises :class:`ConnectionLost`; running out of time raises
        :class:`ReconnectFailed` (and every later call raises it too).
        """
        if self._closed:
            raise ConnectionLost(CLOSED) from cause
        if not self.policy.enabled or not is_transient(cause):
            raise cause
        async with self._lock:
            if self._closed:
                raise ConnectionLost(CLOSED) from cause
            if self._failure is not None:
                raise self._failure
            conn = self.current
            if conn is not None and conn is not failed:
                if conn.usable:
                    return conn  # another operation reconnected already
                await conn.close(str(cause))  # a later connection, lost as well
            await failed.close(str(cause))
            return await self._reconnect(str(cause))

    async def _reconnect(self, cause: str) -> Connection:
        policy = self.policy
        address = format_address(self._host, self._port)
        outage = self._outage
        if outage is None:
            outage = self._outage = _Outage(time.monotonic(), policy.delays(), cause)
            log.warning(
                "connection lost, reconnecting",
                address=address,
                reason=cause,
                timeout_s=policy.timeout_s,
            )
        deadline = outage.started + policy.timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and outage.attempts:
                self._give_up(outage)
            outage.attempts += 1
            conn = self._factory()
            try:
                await conn.open(timeout=max(min(conn.connect_timeout, remaining), 0.05))
            except ConnectError as exc:
                outage.last = exc.reason
            except RemoteError as exc:
                if not is_transient(exc):
                    raise
                outage.last = str(exc)
            else:
                if self._closed:
                    await conn.close(CLOSED)
                    raise ConnectionLost(CLOSED)
                self.current = conn
                self.reconnects += 1
                log.warning(
                    "reconnected",
                    address=address,
                    attempts=outage.attempts,
                    elapsed_s=round(time.monotonic() - outage.started, 3),
                )
                return conn
            if self._closed:
                raise ConnectionLost(CLOSED)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._give_up(outage)
            pause = min(next(outage.delays), remaining)
            log.debug(
                "reconnect attempt failed",
                address=address,
                attempt=outage.attempts,
                reason=outage.last,
                retry_in_s=round(pause, 3),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), pause)
            if self._closed:
                raise ConnectionLost(CLOSED)

    def _give_up(self, outage: _Outage) -> None:
        failure = ReconnectFailed(
            self._host,
            self._port,
            cause=outage.cause,
            elapsed_s=time.monotonic() - outage.started,
            attempts=outage.attempts,
            last=outage.last or "no attempt finished",
        )
        log.warning("giving up reconnecting", error=str(failure))
        self._failure = failure
        raise failure
