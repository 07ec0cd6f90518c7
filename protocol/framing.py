"""Length-prefixed msgpack framing: the only place that knows the byte layout.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of
msgpack. :class:`FrameDecoder` is a sans-I/O state machine: feed it bytes in any
split and it yields whole messages, so a reader never sees half a message (the
asyncore truncation bug of the seed systems). The declared length is checked
against the limit as soon as the header is complete, before any body is read.

The asyncio and blocking-socket adapters below are thin: they move bytes between
the transport and the decoder and map EOF mid-frame to :class:`IncompleteFrame`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from typing import Any

from protocol.codec import pack, unpack
from protocol.errors import FrameTimeout, FrameTooLarge, IncompleteFrame

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
READ_CHUNK = 256 * 1024


def encode_frame(obj: Any, *, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """Header + msgpack body for ``obj``; refuses to build a frame the peer would reject."""
    body = pack(obj)
    if len(body) > max_size:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds the limit of {max_size} bytes")
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: ``feed(data)`` then iterate ``frames()``.

    After a :class:`FrameError` the decoder is poisoned (the stream has lost sync)
    and the connection must be closed.
    """

    __slots__ = ("_buf", "_need", "_pos", "max_size")

    def __init__(self, *, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._pos = 0
        self._need = -1  # body length of the frame being read, -1 while reading a header

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a frame (non-zero means mid-frame)."""
        return len(self._buf) - self._pos

    def frames(self) -> Iterator[Any]:
        """Yield every complete message in the buffer, in order."""
        buf = self._buf
        while True:
            if self._need < 0:
                if len(buf) - self._pos < HEADER_SIZE:
                    break
                (length,) = HEADER.unpack_from(buf, self._pos)
                if length > self.max_size:
                    raise FrameTooLarge(
                        f"frame declares {length} bytes, above the limit of {self.max_size} bytes"
                    )
                self._pos += HEADER_SIZE
                self._need = length
            end = self._pos + self._need
            if len(buf) < end:
                break
            body = bytes(buf[self._pos : end])
            self._pos = end
            self._need = -1
            yield unpack(body)
        # Compact once the consumed prefix is large, not after every frame.
        if self._pos and (self._pos >= len(buf) or self._pos > 1 << 20):
            del buf[: self._pos]
            self._pos = 0

    def check_eof(self) -> None:
        """Call at end of stream: raises if the stream stopped inside a frame."""
        if self.pending:
            raise IncompleteFrame(
                f"connection closed in the middle of a frame ({self.pending} bytes unread)"
            )


class FrameReader:
    """Reads whole messages from an :class:`asyncio.StreamReader`.

    ``await read()`` returns the next message, or ``None`` at a clean end of stream.
    Many small frames arriving together are decoded from one ``read()`` call.
    With ``partial_timeout_s``, a frame must be complete that long after its first
    byte arrived (slowloris); an idle connection between frames may wait forever.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        *,
        max_size: int = DEFAULT_MAX_FRAME,
        partial_timeout_s: float | None = None,
    ) -> None:
        self._reader = reader
        self._decoder = FrameDecoder(max_size=max_size)
        self._ready: list[Any] = []
        self._index = 0
        self._partial_timeout_s = partial_timeout_s
        self._partial_since: float | None = None

    async def _read_chunk(self) -> bytes:
        if self._partial_timeout_s is None or not self._decoder.pending:
            self._partial_since = None
            return await self._reader.read(READ_CHUNK)
        loop = asyncio.get_running_loop()
        if self._partial_since is None:
            self._partial_since = loop.time()
        left = self._partial_timeout_s - (loop.time() - self._partial_since)
        try:
            return await asyncio.wait_for(self._reader.read(READ_CHUNK), max(0.0, left))
        except TimeoutError:
            raise FrameTimeout(
                f"a frame was started but not finished within {self._partial_timeout_s:g} s"
            ) from None

    async def read(self) -> Any | None:
        while self._index >= len(self._ready):
            data = await self._read_chunk()
            if not data:
                self._decoder.check_eof()
                return None
            self._decoder.feed(data)
            self._ready = list(self._decoder.frames())
            self._index = 0
            if self._ready:
                self._partial_since = None  # progress: the clock restarts for the next frame
        msg = self._ready[self._index]
        self._index += 1
        return msg

    def buffered(self) -> int:
        """Messages already decoded and waiting to be returned by :meth:`read`."""
        return len(self._ready) - self._index


def write_frame(
    writer: asyncio.StreamWriter, obj: Any, *, max_size: int = DEFAULT_MAX_FRAME
) -> None:
    """Queue one frame on ``writer``; the caller awaits ``writer.drain()`` for backpressure."""
    writer.write(encode_frame(obj, max_size=max_size))


class BlockingFrameSocket:
    """Frames over a blocking socket, for worker processes that run no event loop."""

    def __init__(self, sock: socket.socket, *, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.sock = sock
        self._decoder = FrameDecoder(max_size=max_size)
        self._ready: list[Any] = []
        self._index = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def has_buffered(self) -> bool:
        return self._index < len(self._ready)

    def _fill(self, block: bool) -> bool:
        """Receive once; returns False at end of stream."""
        try:
            data = self.sock.recv(READ_CHUNK, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        if not data:
            self._decoder.check_eof()
            return False
        self._decoder.feed(data)
        self._ready = self._ready[self._index :] + list(self._decoder.frames())
        self._index = 0
        return True

    def recv(self) -> Any | None:
        """Next message, blocking; ``None`` at a clean end of stream."""
        while not self.has_buffered():
            if not self._fill(block=True):
                return None
        msg = self._ready[self._index]
        self._index += 1
        return msg

    def poll(self) -> list[Any] | None:
        """Every message available without blocking; ``None`` once the peer has closed."""
        alive = self._fill(block=False)
        out = self._ready[self._index :]
        self._ready = []
        self._index = 0
        if not alive and not out:
            return None
        return out

    def send(self, obj: Any) -> None:
        self.sock.sendall(encode_frame(obj, max_size=self._decoder.max_size))
