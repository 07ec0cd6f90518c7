"""Hostile and broken input over a real socket: each gets a coded error, the server lives on."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from protocol.framing import FrameReader, encode_frame
from tests.conftest import SchedulerFactory


class RawConn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.frames = FrameReader(reader)
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawConn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, msg: Any) -> Any:
        await self.send_bytes(encode_frame(msg))
        return await asyncio.wait_for(self.frames.read(), 10)

    async def read(self) -> Any:
        return await asyncio.wait_for(self.frames.read(), 10)

    async def closed_by_peer(self) -> bool:
        return await asyncio.wait_for(self.frames.read(), 10) is None

    def close(self) -> None:
        self.writer.close()


async def assert_still_serving(port: int) -> None:
    conn = await RawConn.open(port)
    reply = await conn.request({"op": "ping", "rid": 99})
    assert reply["op"] == "ping" and reply["rid"] == 99
    conn.close()


async def test_message_level_errors_keep_the_connection(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=1)
    conn = await RawConn.open(sched.port)
    cases = [
        ([1, 2, 3], "bad_message", None),
        ({"op": "nope", "rid": 1}, "unknown_op", 1),
        ({"op": "submit", "rid": 2, "tasks": [{"cmd": 42}]}, "invalid_field", 2),
        ({"op": "submit", "rid": 3}, "missing_field", 3),
        ({"op": "submit", "rid": 4, "tasks": [{"fn": "no_such_handler"}]}, "unknown_handler", 4),
        ({"op": "status", "rid": 5, "id": "missing"}, "not_found", 5),
        ({"op": "results", "rid": 6, "job": "missing"}, "not_found", 6),
        ({"op": "hello", "rid": 7, "version": 99}, "version", 7),
    ]
    for msg, code, rid in cases:
        reply = await conn.request(msg)
        assert reply["op"] == "error", msg
        assert reply["code"] == code, reply
        assert reply["rid"] == rid
        assert reply["message"]
    # The same connection still works after every error.
    reply = await conn.request({"op": "ping", "rid": 8})
    assert reply == {"op": "ping", "rid": 8, "time": reply["time"]}
    assert "no_such_handler" in (await conn.request(cases[4][0]))["message"]
    conn.close()


async def test_oversized_frame_is_refused_before_the_body(
    start_scheduler: SchedulerFactory,
) -> None:
    sched = await start_scheduler(local_workers=0, max_frame_bytes=4096)
    conn = await RawConn.open(sched.port)
    await conn.send_bytes(struct.pack(">I", 1 << 30))  # claims 1 GiB, sends nothing more
    reply = await conn.read()
    assert reply["code"] == "frame_too_large" and "1073741824" in reply["message"]
    assert await conn.closed_by_peer()
    conn.close()
    await assert_still_serving(sched.port)


async def test_garbage_bytes_get_bad_frame(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=0)
    conn = await RawConn.open(sched.port)
    await conn.send_bytes(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    reply = await conn.read()
    assert reply["code"] == "bad_frame"
    assert await conn.closed_by_peer()
    conn.close()
    await assert_still_serving(sched.port)


async def test_truncated_frame_then_eof(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=0)
    conn = await RawConn.open(sched.port)
    frame = encode_frame({"op": "ping", "rid": 1})
    await conn.send_bytes(frame[:-3])
    conn.writer.write_eof()
    reply = await conn.read()
    assert reply["code"] == "bad_frame" and "middle of a frame" in reply["message"]
    conn.close()
    await assert_still_serving(sched.port)


async def test_wrong_types_in_results_request(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=0)
    conn = await RawConn.open(sched.port)
    reply = await conn.request({"op": "results", "rid": 1, "job": "x", "since": -4})
    assert reply["code"] == "invalid_field" and "since" in reply["message"]
    conn.close()


async def test_too_many_tasks_in_one_submit(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=0, max_tasks_per_submit=10)
    conn = await RawConn.open(sched.port)
    reply = await conn.request({"op": "submit", "rid": 1, "tasks": [{"cmd": "true"}] * 11})
    assert reply["code"] == "quota" and "at most 10" in reply["message"]
    assert sched.table.submitted_total == 0
    conn.close()
