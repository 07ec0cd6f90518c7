"""A blocking facade over :class:`client.client.Client`.

The asyncio client runs on an event loop in one background thread owned by the
:class:`SyncClient` (started in ``__init__``, stopped and joined by :meth:`close`);
each method hands a coroutine to that loop and waits for its outcome.

    with SyncClient("127.0.0.1", 7070) as client:
        for result in client.results(client.submit(["sleep 0"] * 100).job):
            print(result.id, result.state)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Coroutine, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from client.client import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_RECONNECT_TIMEOUT_S,
    Client,
    ReconnectPolicy,
    ResultBatch,
    Submission,
    TaskLike,
)
from client.errors import ClientError
from client.loop import new_event_loop
from protocol.framing import DEFAULT_MAX_FRAME
from protocol.model import Result

T = TypeVar("T")


async def _next_batch(
    batches: AsyncGenerator[ResultBatch, None],
) -> ResultBatch | None:
    try:
        return await batches.__anext__()
    except StopAsyncIteration:
        return None


class SyncClient:
    """Blocking client; the same operations as :class:`Client`, without ``await``.

    It reconnects after a lost connection exactly as :class:`Client` does (same
    ``reconnect``, ``reconnect_timeout_s`` and ``reconnect_policy`` arguments).
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
        reconnect: bool = True,
        reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
        reconnect_policy: ReconnectPolicy | None = None,
    ) -> None:
        self._closed = False
        self._loop = new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, name=f"taskmill-client {host}:{port}", daemon=True
        )
        self._thread.start()
        try:
            self._client = self._call(
                Client.connect(
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
            )
        except BaseException:
            self._stop_loop()
            raise

    # --- loop thread ----------------------------------------------------------------

    def _run_loop(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def _stop_loop(self) -> None:
        self._closed = True
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's loop and wait for it (Ctrl-C cancels it)."""
        if self._closed:
            coro.close()
            raise ClientError("the client is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise ClientError("a SyncClient cannot be used from its own event loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # no-op when it already finished
            raise

    # --- lifecycle ------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The underlying asyncio client (use only from its loop)."""
        return self._client

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the connection and stop the loop thread. Idempotent."""
        if self._closed:
            return
        try:
            self._call(self._client.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- operations -----------------------------------------------------------------

    def submit(
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
        # Materialise here: iterating a caller's generator must not happen on the loop thread.
        items = tasks if isinstance(tasks, list | tuple) else list(tasks)
        return self._call(
            self._client.submit(
                items,
                job=job,
                user=user,
                priority=priority,
                batch_size=batch_size,
                final=final,
                max_attempts=max_attempts,
                timeout_s=timeout_s,
            )
        )

    def result_batches(
        self, job: str, *, follow: bool = True, since: int = 0
    ) -> Generator[ResultBatch, None, None]:
        """Iterate a job's result stream frame by frame (one thread hop per frame)."""
        batches = self._client.result_batches(job, follow=follow, since=since)
        try:
            while True:
                batch = self._call(_next_batch(batches))
                if batch is None:
                    return
                yield batch
        finally:
            if not self._closed:
                self._call(batches.aclose())

    def results(
        self, job: str, *, follow: bool = True, since: int = 0
    ) -> Generator[Result, None, None]:
        """Iterate a job's results as they finish."""
        for batch in self.result_batches(job, follow=follow, since=since):
            yield from batch.results

    def run(
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
        items = tasks if isinstance(tasks, list | tuple) else list(tasks)
        return self._call(
            self._client.run(
                items,
                job=job,
                user=user,
                priority=priority,
                batch_size=batch_size,
                max_attempts=max_attempts,
                timeout_s=timeout_s,
            )
        )

    def status(self, id: str) -> dict[str, Any]:
        return self._call(self._client.status(id))

    def cancel(self, id: str) -> int:
        return self._call(self._client.cancel(id))

    def stats(self) -> dict[str, Any]:
        return self._call(self._client.stats())

    def ping(self) -> float:
        return self._call(self._client.ping())

    def send_task(
        self,
        name: str,
        kwargs: Mapping[str, Any] | None = None,
        *,
        user: str | None = None,
        priority: int = 0,
    ) -> str:
        return self._call(self._client.send_task(name, kwargs, user=user, priority=priority))

    def get_task(self, id: str) -> dict[str, Any]:
        return self._call(self._client.get_task(id))
