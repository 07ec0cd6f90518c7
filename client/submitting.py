"""A job's submission as pipelined ``submit`` frames that survive a lost connection.

Every batch is written as soon as it is built; replies are collected afterwards, so
a submission costs one round trip whatever its size. A batch stays in the
:class:`Submitter`'s list until its reply (the ids) arrives. When the connection is
lost, the batches still unacknowledged are sent again on the new connection, in
order and with the same ``final`` flag: every task carries an id, so the scheduler
answers a batch it already stored with the same ids instead of storing it twice
(even for a job the lost final batch already sealed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from client.connection import Connection, Pending
from client.errors import ClientError
from client.reconnect import Link, is_transient
from protocol.errors import FrameTooLarge


@dataclass(slots=True)
class _Batch:
    tasks: list[dict[str, Any]]
    final: bool
    ids: list[str] | None = None  # set once acknowledged
    conn: Connection | None = None  # where it was last sent
    pending: Pending | None = None


class Submitter:
    """Sends one job's batches over a :class:`Link` and returns every task id, in order."""

    def __init__(self, link: Link, base: dict[str, Any], *, max_frame: int) -> None:
        self.link = link
        self.base = base
        self.max_frame = max_frame
        self.batches: list[_Batch] = []
        self.resent = 0  # batches sent again after a reconnect

    def prime(self, conn: Connection, tasks: list[dict[str, Any]], *, final: bool) -> None:
        """Write the first batch now, before :meth:`run`: a caller can then put another
        request (a result stream) behind it in the same write. ``run`` collects its reply
        and sends it again if the connection is lost first."""
        if self.batches:
            raise RuntimeError("prime() must come before any other batch")
        self.batches.append(_Batch(tasks, final))
        self._send(conn, 0)

    async def run(self, parts: Iterator[list[dict[str, Any]]], *, final: bool) -> list[str]:
        link = self.link
        batches = self.batches
        conn = await link.connection()
        # No task at all: one empty batch (it creates or seals the job). Primed: the rest.
        following: list[dict[str, Any]] | None = next(parts, None if batches else [])
        try:
            while True:
                try:
                    self._send(conn, 0)  # after a reconnect: what is not acknowledged
                    await conn.drain()
                    while following is not None:
                        batch, following = following, next(parts, None)
                        batches.append(_Batch(batch, final and following is None))
                        self._send(conn, len(batches) - 1)
                        await conn.drain()
                    for b in batches:
                        if b.ids is None:
                            assert b.pending is not None
                            self._acknowledge(b, await b.pending[1])
                            link.progress()
                    break
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    self._harvest()
                    conn = await link.recover(conn, exc)
                    self.resent += sum(1 for b in batches if b.ids is None)
        finally:
            for b in batches:
                if b.pending is not None and b.conn is not None:
                    b.conn.discard(*b.pending)
        ids: list[str] = []
        for b in batches:
            assert b.ids is not None
            ids += b.ids
        return ids

    def _send(self, conn: Connection, start: int) -> None:
        """Write every unacknowledged batch from ``start`` not yet sent on ``conn``.

        A batch too big for one frame is halved in place until each part fits.
        """
        batches = self.batches
        i = start
        while i < len(batches):
            b = batches[i]
            if b.ids is not None or b.conn is conn:
                i += 1
                continue
            if b.pending is not None and b.conn is not None:
                b.conn.discard(*b.pending)
                b.pending = None
            try:
                b.pending = conn.start({**self.base, "tasks": b.tasks, "final": b.final})
            except FrameTooLarge:
                if len(b.tasks) <= 1:
                    task = b.tasks[0] if b.tasks else {}
                    name = str(task.get("id") or task.get("fn") or "cmd")[:60]
                    raise ClientError(
                        f"a task ({name}) does not fit in the {self.max_frame}-byte frame limit"
                    ) from None
                half = len(b.tasks) // 2
                batches[i : i + 1] = [
                    _Batch(b.tasks[:half], False),
                    _Batch(b.tasks[half:], b.final),
                ]
                continue
            b.conn = conn
            i += 1

    def _harvest(self) -> None:
        """Keep the replies that arrived before the connection failed."""
        for b in self.batches:
            if b.ids is not None or b.pending is None:
                continue
            fut = b.pending[1]
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._acknowledge(b, fut.result())

    @staticmethod
    def _acknowledge(b: _Batch, reply: dict[str, Any]) -> None:
        got = reply.get("ids")
        if not isinstance(got, list) or len(got) != len(b.tasks):
            raise ClientError(
                f"the scheduler answered a batch of {len(b.tasks)} tasks with "
                f"{len(got) if isinstance(got, list) else 'no'} ids"
            )
        b.ids = got
        b.tasks = []  # no longer needed for a resend
