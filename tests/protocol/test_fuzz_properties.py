"""Property tests: any bytes, any split, any message: the decoder and validator either
yield well-typed results or raise a coded protocol error; nothing else escapes."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import FrameError, ValidationError
from protocol.framing import FrameDecoder, encode_frame
from protocol.messages import _parse_plain_task, parse_request
from protocol.messages import parse_task as _parse_task_any
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


_task_fields = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.none(), st.text(max_size=3), st.text(min_size=250, max_size=260)),
        "fn": st.one_of(st.none(), st.just("noop"), st.just(""), st.integers(), st.text()),
        "cmd": st.one_of(st.none(), st.just("sleep 0"), st.just(""), st.integers()),
        "args": st.one_of(st.none(), st.lists(st.integers(), max_size=2), st.text(max_size=2)),
        "kwargs": st.one_of(
            st.none(),
            st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
            st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
            st.lists(st.integers(), max_size=1),
        ),
        "priority": st.one_of(st.none(), st.integers(-3, 3)),
    },
)


def _full_parse_task(raw: dict[str, Any], *, user: str, priority: int) -> Any:
    # A map the fast path cannot take (an extra key) goes through the full rules only.
    return _parse_task_any({**raw, "max_attempts": 1}, user=user, priority=priority)


@settings(max_examples=1000, deadline=None)
@given(_task_fields)
def test_the_plain_task_fast_path_agrees_with_full_validation(raw: dict[str, Any]) -> None:
    # parse_task takes a fast path for {id, fn, args, kwargs} and {id, cmd}; whatever it
    # accepts must equal what the full rules make of the same map, and it must never
    # accept what they reject.
    fast = _parse_plain_task(dict(raw), "u", 2)
    try:
        full = _full_parse_task(dict(raw), user="u", priority=2)
    except ValidationError:
        assert fast is None
        return
    assert fast is None or fast == full
