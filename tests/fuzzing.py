"""Hypothesis strategies and a fuzz driver for the wire protocol, shared by the suite
(a few hundred examples) and ``python -m tests.faults.fuzz`` (as many as you like)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from hypothesis import strategies as st

from protocol.codec import pack
from protocol.framing import FrameReader, encode_frame
from protocol.messages import REQUEST_OPS

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
task_maps = st.dictionaries(
    st.sampled_from(
        ["id", "cmd", "fn", "args", "kwargs", "user", "priority", "timeout_s", "max_attempts", "x"]
    ),
    values,
    max_size=6,
)
# Mostly plausible requests (a known op, an int rid, fields of every type), some junk.
messages = st.one_of(
    st.fixed_dictionaries(
        {
            "op": st.sampled_from(sorted(REQUEST_OPS - {"auth", "results"})),
            "rid": st.integers(0, 2**31),
        },
        optional={
            "tasks": st.lists(task_maps, max_size=3),
            "job": values,
            "id": values,
            "final": values,
            "version": values,
            "since": values,
            "follow": values,
        },
    ),
    st.dictionaries(st.text(max_size=6), values, max_size=5),
    values,
)


def as_frame(message: Any) -> bytes:
    return encode_frame(message)


raw_frames = st.one_of(
    messages.map(as_frame),
    st.binary(max_size=64).map(lambda body: struct.pack(">I", len(body)) + body),  # garbage body
    st.binary(max_size=64),  # no framing at all
)


async def exchange(port: int, message: Any) -> Any:
    """Send one framed message on a fresh connection; return the first reply (or None)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode_frame(message) if not isinstance(message, bytes) else message)
        await writer.drain()
        return await asyncio.wait_for(FrameReader(reader).read(), 10)
    finally:
        writer.close()


def packable(message: Any) -> bool:
    try:
        pack(message)
    except (TypeError, ValueError, OverflowError):
        return False
    return True
