"""Framing: split reads at every byte boundary, oversize, EOF mid-frame, garbage."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from protocol.errors import DecodeError, FrameTooLarge, IncompleteFrame
from protocol.framing import (
    BlockingFrameSocket,
    FrameDecoder,
    FrameReader,
    encode_frame,
)

MESSAGES = [
    {"op": "ping", "rid": 1},
    {"op": "submit", "rid": 2, "tasks": [{"cmd": "echo é"}] * 3},
    {"op": "x", "rid": 3, "blob": b"\x00\xff" * 50},
]


def test_round_trip_every_split_point() -> None:
    stream = b"".join(encode_frame(m) for m in MESSAGES)
    for cut in range(len(stream) + 1):
        dec = FrameDecoder()
        dec.feed(stream[:cut])
        got = list(dec.frames())
        dec.feed(stream[cut:])
        got += list(dec.frames())
        assert got == MESSAGES, f"split at byte {cut}"
        assert dec.pending == 0


def test_byte_at_a_time() -> None:
    stream = b"".join(encode_frame(m) for m in MESSAGES)
    dec = FrameDecoder()
    got = []
    for i in range(len(stream)):
        dec.feed(stream[i : i + 1])
        got += list(dec.frames())
    assert got == MESSAGES


def test_oversize_rejected_from_header_alone() -> None:
    dec = FrameDecoder(max_size=1024)
    dec.feed(struct.pack(">I", 1025))  # no body yet: rejected before reading it
    with pytest.raises(FrameTooLarge, match="1025 bytes"):
        list(dec.frames())


def test_encode_refuses_oversize() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame({"blob": b"x" * 2048}, max_size=1024)


def test_eof_mid_header_and_mid_body() -> None:
    frame = encode_frame({"op": "ping", "rid": 1})
    for cut in (1, 3, 5, len(frame) - 1):
        dec = FrameDecoder()
        dec.feed(frame[:cut])
        assert list(dec.frames()) == []
        with pytest.raises(IncompleteFrame):
            dec.check_eof()


def test_garbage_body_is_decode_error() -> None:
    dec = FrameDecoder()
    dec.feed(struct.pack(">I", 2) + b"\xc1\xc1")  # 0xc1 is never valid msgpack
    with pytest.raises(DecodeError):
        list(dec.frames())


def test_trailing_bytes_in_body_is_decode_error() -> None:
    body = encode_frame({"a": 1})[4:] + b"\x01"
    dec = FrameDecoder()
    dec.feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(DecodeError):
        list(dec.frames())


async def test_frame_reader_over_real_socket() -> None:
    received: list[object] = []
    done = asyncio.Event()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        reader = FrameReader(r)
        while (msg := await reader.read()) is not None:
            received.append(msg)
        w.close()
        done.set()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    stream = b"".join(encode_frame(m) for m in MESSAGES * 100)
    # Write in awkward pieces so frames straddle TCP segments.
    for i in range(0, len(stream), 7):
        writer.write(stream[i : i + 7])
    await writer.drain()
    writer.close()
    await asyncio.wait_for(done.wait(), 10)
    server.close()
    await server.wait_closed()
    assert received == MESSAGES * 100


async def test_frame_reader_eof_mid_frame_raises() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(encode_frame({"op": "ping", "rid": 1})[:-2])
    reader.feed_eof()
    with pytest.raises(IncompleteFrame):
        await FrameReader(reader).read()


def test_blocking_socket_pair() -> None:
    a, b = socket.socketpair()
    with a, b:
        left, right = BlockingFrameSocket(a), BlockingFrameSocket(b)
        for m in MESSAGES:
            left.send(m)
        assert [right.recv() for _ in MESSAGES] == MESSAGES
        assert right.poll() == []
        left.send({"op": "stop"})
        deadline_msgs: list[object] = []
        while not deadline_msgs:
            deadline_msgs = right.poll() or []
        assert deadline_msgs == [{"op": "stop"}]
        a.shutdown(socket.SHUT_WR)
        assert right.recv() is None
