"""SQS bundle and reply formats, size splitting, and the bundle-size policy."""

from __future__ import annotations

import base64

import pytest

from protocol.bundles import (
    MAX_PACKED,
    Bundle,
    BundleError,
    Reply,
    decode_bundle,
    decode_reply,
    decode_summary,
    encode_bundle,
    encode_reply,
    encode_summary,
    split_to_fit,
)
from protocol.codec import pack
from scheduler.remote import MAX_BUNDLE_TASKS, bundle_size


def test_bundle_round_trip_is_text() -> None:
    tasks = [{"id": f"t{i}", "kind": "shell", "cmd": "sleep 0", "attempt": 1} for i in range(3)]
    bundle = Bundle(id="b1", scheduler="s1", reply_queue="http://q/r", tasks=tasks, sent=5.0)
    body = encode_bundle(bundle)
    assert body.isascii()
    assert decode_bundle(body) == bundle


def test_reply_round_trip() -> None:
    reply = Reply(
        bundle="b1", worker="w1", results=[{"id": "t1", "state": "succeeded"}], final=True
    )
    assert decode_reply(encode_reply(reply)) == reply


@pytest.mark.parametrize(
    "body",
    [
        "not base64!",
        base64.b64encode(b"\xc1").decode(),
        base64.b64encode(pack({"v": 99})).decode(),
        base64.b64encode(pack({"v": 1, "id": "b", "s": "s", "r": "r", "t": [1]})).decode(),
        base64.b64encode(pack({"v": 1, "id": "b"})).decode(),
    ],
)
def test_garbage_bodies_are_bundle_errors(body: str) -> None:
    with pytest.raises(BundleError):
        decode_bundle(body)


def test_split_to_fit_respects_the_limit() -> None:
    items = [{"id": str(i), "blob": b"x" * 1000} for i in range(500)]
    runs, oversized = split_to_fit(items, limit=50_000)
    assert not oversized
    assert [item for run in runs for item in run] == items
    assert all(len(pack(run)) <= 50_000 + 16 for run in runs)
    big = {"id": "huge", "blob": b"x" * (MAX_PACKED + 1)}
    runs, oversized = split_to_fit([items[0], big], MAX_PACKED)
    assert oversized == [big] and runs == [[items[0]]]


def test_summary_is_compact() -> None:
    results = [
        {"id": f"job.{i}", "state": "succeeded", "exit_code": 0, "started": 1.0, "finished": 2.0}
        for i in range(100)
    ]
    data = encode_summary(results)
    assert len(data) < 40 * 100  # well under half a write unit per task
    assert decode_summary(data)[5] == {k: results[5][k] for k in results[5]}


@pytest.mark.parametrize(
    ("backlog", "slots", "avg", "expected"),
    [
        (10_000, 4, None, MAX_BUNDLE_TASKS),  # tiny tasks: big bundles, few messages
        (300, 4, None, 38),  # spread: at least two bundles per slot
        (10, 8, 30.0, 1),  # long tasks: one per bundle
        (10_000, 4, 0.01, 200),  # about two seconds of work per bundle
        (5, 0, None, 3),  # no known fleet yet
    ],
)
def test_bundle_size(backlog: int, slots: int, avg: float | None, expected: int) -> None:
    assert bundle_size(backlog, slots, avg) == expected
