"""One TCP connection to a scheduler: the ``hello`` handshake and reply routing.

A single background reader task owns the receiving side. It routes each reply by its
``rid``: a one-shot request gets its reply through a future, a result stream gets
whole frames through its own queue (one queue item per frame of up to hundreds of
results, never one asyncio object per result). Requests are written as soon as
they are made, so a large submission costs one frame per batch and one round trip
in total, not one per task.

A :class:`Connection` is used once: when it ends, every waiting request fails with
:class:`ConnectionLost` (or the scheduler's connection-level ``error``) and it stays
unusable. :class:`client.reconnect.Link` replaces it with a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl as ssl_module
from typing import Any

from client.errors import ClientError, ConnectError, ConnectionLost, format_address, os_reason
from protocol.auth import key_id, prove
from protocol.errors import FrameError, FrameTooLarge, RemoteError
from protocol.framing import FrameReader, encode_frame
from protocol.messages import PROTOCOL_VERSION

StreamItem = dict[str, Any] | BaseException
Pending = tuple[int, asyncio.Future[dict[str, Any]]]


def remote_error(msg: dict[str, Any]) -> RemoteError:
    return RemoteError(str(msg.get("code") or "internal"), str(msg.get("message") or ""))


class Connection:
    """A connected, greeted socket with pipelined requests routed by ``rid``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_frame: int,
        connect_timeout: float,
        token: str | None,
        client_name: str,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.max_frame = max_frame
        self.connect_timeout = connect_timeout
        self.token = token
        self.client_name = client_name
        self.ssl = ssl
        self.user: str | None = None  # the user the scheduler pinned our token to
        self.server: str | None = None
        self.server_version: int | None = None
        self.lost: str | None = None  # why the connection is unusable, once it is
        self._rids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._streams: dict[int, asyncio.Queue[StreamItem]] = {}
        self._writer: asyncio.StreamWriter | None = None
        # Frames written in this loop iteration, sent together by _flush_out: a request
        # and the stream that follows it (Client.run) cost one system call, not two.
        self._out: list[bytes] = []
        self._reader_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def usable(self) -> bool:
        return self._writer is not None and self.lost is None

    @property
    def idle(self) -> bool:
        """No request or stream is waiting on this connection."""
        return not self._pending and not self._streams

    # --- lifecycle ------------------------------------------------------------------

    async def open(self, timeout: float | None = None) -> None:
        """Connect and say hello within ``timeout`` (default: ``connect_timeout``).

        Raises :class:`ConnectError` when unreachable or silent, :class:`RemoteError`
        when the scheduler refuses the handshake.
        """
        timeout = self.connect_timeout if timeout is None else timeout
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    limit=1 << 20,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                ),
                timeout,
            )
        except TimeoutError as exc:
            raise ConnectError(self.host, self.port, f"timed out after {timeout:g}s") from exc
        except ssl_module.SSLError as exc:
            detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
            raise ConnectError(
                self.host, self.port, f"TLS handshake failed: {exc.reason}: {detail}"
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
        key = key_id(self.token) if self.token is not None else None
        if key is not None:
            hello["key"] = key  # names the secret; the secret itself never leaves here
        try:
            reply = await asyncio.wait_for(self.request(hello), timeout)
            challenge = reply.get("challenge")
            if challenge is not None:
                if self.token is None or key is None:
                    raise ConnectError(
                        self.host, self.port, "the scheduler requires a token (TASKMILL_TOKEN)"
                    )
                mac = prove(self.token, str(challenge), key)
                answer = await asyncio.wait_for(self.request({"op": "auth", "mac": mac}), timeout)
                self.user = answer.get("user")
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

    async def close(self, why: str = "the client was closed") -> None:
        """Stop the reader, close the socket, fail whatever is still waiting. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_all(why)
        writer = self._writer
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

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
                        queue.put_nowait(remote_error(msg))
                    else:
                        queue.put_nowait(msg)
                    continue
                fut = pending.pop(rid, None)
                if fut is not None:
                    if not fut.done():
                        if msg.get("op") == "error":
                            fut.set_exception(remote_error(msg))
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
        self.lost = f"the scheduler reported: {msg.get('code')}: {msg.get('message')}"
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(remote_error(msg))
        self._pending.clear()
        for queue in self._streams.values():
            queue.put_nowait(remote_error(msg))

    def _fail_all(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(why))
        self._pending.clear()
        for queue in self._streams.values():
            queue.put_nowait(ConnectionLost(why))

    # --- sending --------------------------------------------------------------------

    def _check_usable(self) -> asyncio.StreamWriter:
        if self.lost is not None:
            raise ConnectionLost(self.lost)
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

    def _write(self, frame: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush_out)
        self._out.append(frame)

    def _flush_out(self) -> None:
        if not self._out:
            return
        out, self._out = self._out, []
        if self.lost is None and self._writer is not None:
            self._writer.write(out[0] if len(out) == 1 else b"".join(out))

    async def drain(self) -> None:
        writer = self._check_usable()
        self._flush_out()
        try:
            await writer.drain()
        except OSError as exc:
            raise ConnectionLost(f"connection to {self.address} lost: {os_reason(exc)}") from exc

    def start(self, msg: dict[str, Any]) -> Pending:
        """Write one request and return its rid and the future of its reply (no await).

        Raises :class:`FrameTooLarge` (nothing written) when ``msg`` does not fit.
        """
        self._check_usable()
        rid = next(self._rids)
        msg["rid"] = rid
        frame = self._encode(msg)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._write(frame)
        self._pending[rid] = fut
        return rid, fut

    def discard(self, rid: int, fut: asyncio.Future[dict[str, Any]]) -> None:
        """Forget a request whose reply will not be awaited (any failure is dropped)."""
        self._pending.pop(rid, None)
        if fut.done():
            if not fut.cancelled():
                fut.exception()  # mark retrieved
        else:
            fut.cancel()

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        rid, fut = self.start(msg)
        try:
            await self.drain()
            return await fut
        finally:
            self.discard(rid, fut)

    def open_stream(self, msg: dict[str, Any]) -> tuple[int, asyncio.Queue[StreamItem]]:
        """Write a streaming request; its frames (or its failure) arrive on the queue."""
        self._check_usable()
        rid = next(self._rids)
        msg["rid"] = rid
        frame = self._encode(msg)
        queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        self._streams[rid] = queue
        self._write(frame)
        return rid, queue

    def close_stream(self, rid: int) -> None:
        self._streams.pop(rid, None)


def client_tls_context(ca_file: str | None) -> ssl_module.SSLContext:
    """Verify the scheduler's certificate against ``ca_file`` (or the system's CAs)."""
    try:
        return ssl_module.create_default_context(cafile=ca_file)
    except (OSError, ssl_module.SSLError) as exc:
        raise ClientError(f"cannot load the TLS CA file {ca_file}: {exc}") from exc
