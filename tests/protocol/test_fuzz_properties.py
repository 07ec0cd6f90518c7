"""Property tests: any bytes, any split, any message: the decoder and validator either
yield well-typed results or raise a coded protocol error; nothing else escapes."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import FrameError, ValidationError
from protocol.framing import FrameDecoder, encode_frame
from protocol.messages import parse_request
from tests.fuzzing import messages, packable, raw_frames, values


@settings(max_examples=300, deadline=None)
@given(st.lists(values, max_size=5), st.data())
def test_frames_survive_any_split(objs: list[Any], data: st.DataObject) -> None:
    objs = [o for o in objs if packable(o)]
    stream = b"".join(encode_frame(o) for o in objs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = FrameDecoder()
    got: list[Any] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(stream[last:cut])
        got += list(decoder.frames())
        last = cut
    decoder.check_eof()
    # msgpack maps floats/NaN faithfully except NaN != NaN: compare encodings instead.
    assert [encode_frame(g) for g in got] == [encode_frame(o) for o in objs]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_never_crashes_on_garbage(data: bytes) -> None:
    decoder = FrameDecoder(max_size=1024)
    decoder.feed(data)
    try:
        list(decoder.frames())
        decoder.check_eof()
    except FrameError as exc:
        assert exc.code.value in ("bad_frame", "frame_too_large")


@settings(max_examples=1000, deadline=None)
@given(messages)
def test_validation_only_raises_coded_errors(message: Any) -> None:
    try:
        request = parse_request(message)
    except ValidationError as exc:
        assert exc.code.value and exc.message
        return
    assert request.rid == message["rid"]


@settings(max_examples=200, deadline=None)
@given(raw_frames)
def test_raw_frames_decode_or_fail_cleanly(frame: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(frame)
    try:
        for msg in decoder.frames():
            with contextlib.suppress(ValidationError):
                parse_request(msg)
    except FrameError:
        pass
