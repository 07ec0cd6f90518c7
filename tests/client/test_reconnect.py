"""Reconnection against the fake scheduler: dropped connections, lost replies, restarts.

The fake keeps its state across :meth:`FakeScheduler.stop`/:meth:`restart` on the same
port, like a scheduler restarted on its journal. Tests wait on observable state with
deadlines (:func:`until`), never on sleeps.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from client.client import Client
from client.errors import ConnectionLost, ReconnectFailed
from client.reconnect import ReconnectPolicy, is_transient
from protocol.errors import RemoteError
from tests.client.fake_server import FakeScheduler

# Short pauses so the tests are quick; the default policy is 0.1 s doubling to 2 s.
FAST = ReconnectPolicy(timeout_s=10.0, initial_delay_s=0.01, max_delay_s=0.05)


async def until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def connect(fake: FakeScheduler, policy: ReconnectPolicy = FAST, **kw: Any) -> Client:
    return await Client.connect("127.0.0.1", fake.port, reconnect_policy=policy, **kw)


def events(logs: Sequence[MutableMapping[str, Any]]) -> list[str]:
    return [str(e["event"]) for e in logs]


# --- result streams ---------------------------------------------------------------------


async def test_a_stream_dropped_midway_resumes_without_gaps_or_duplicates() -> None:
    async with FakeScheduler(frame_size=100) as fake:
        client = await connect(fake)
        try:
            sub = await client.submit([{"fn": "echo", "args": [i]} for i in range(2000)])
            fake.drop_stream_after = 700
            results = [r async for r in client.results(sub.job)]
        finally:
            await client.close()
    # The fake finishes tasks in submission order: any gap or repeat shows here.
    assert [r.id for r in results] == sub.ids
    assert [r.value for r in results] == list(range(2000))
    first, second = fake.results_requests
    assert first.since == 0
    assert 100 <= second.since <= 700  # asked again from where the client had got to
    assert client.reconnects == 1


async def test_a_resumed_stream_never_yields_a_result_twice() -> None:
    async with FakeScheduler(frame_size=100) as fake:
        fake.resume_overlap = 50  # a server that repeats 50 results on a resume
        fake.drop_stream_after = 500
        client = await connect(fake)
        try:
            sub = await client.submit([{"fn": "echo", "args": [i]} for i in range(1000)])
            batches = [b async for b in client.result_batches(sub.job)]
        finally:
            await client.close()
    results = [r for b in batches for r in b.results]
    assert Counter(r.id for r in results).most_common(1)[0][1] == 1
    assert [r.id for r in results] == sub.ids
    assert batches[-1].done
    assert fake.results_requests[1].since >= 100  # so 50 already-seen results came again


async def test_scheduler_restart_mid_stream_resumes_the_stream() -> None:
    async with FakeScheduler() as fake:
        client = await connect(fake)
        try:
            sub = await client.submit(["echo x"] * 10 + ["hold"] * 10)
            stream = client.results(sub.job)
            with capture_logs() as logs:
                got = [await anext(stream) for _ in range(10)]
                await fake.stop()
                waiting = asyncio.create_task(anext(stream))
                await until(lambda: "reconnect attempt failed" in events(logs), "a refused attempt")
                assert not waiting.done()
                assert not client.connected
                await fake.restart()
                await until(lambda: len(fake.results_requests) == 2, "the stream asked again")
                assert fake.release() == 10
                got.append(await waiting)
                got += [r async for r in stream]
        finally:
            await client.close()
    assert sorted(r.id for r in got) == sorted(sub.ids)
    assert len(got) == 20
    assert fake.results_requests[1].since == 10
    assert client.reconnects == 1
    seen = events(logs)
    assert seen.index("connection lost, reconnecting") < seen.index("reconnected")
    lost = logs[seen.index("connection lost, reconnecting")]
    assert lost["log_level"] == "warning" and lost["address"] == f"127.0.0.1:{fake.port}"


async def test_streams_sharing_a_lost_connection_reconnect_once(fake: FakeScheduler) -> None:
    client = await connect(fake)
    try:
        a = await client.submit(["hold"] * 3)
        b = await client.submit(["echo b", "hold"])

        async def collect(job: str) -> list[str]:
            return [r.id async for r in client.results(job)]

        streams = [asyncio.create_task(collect(a.job)), asyncio.create_task(collect(b.job))]
        await until(lambda: len(fake.results_requests) == 2, "both streams open")
        await fake.drop_connections()
        await until(lambda: len(fake.results_requests) == 4, "both streams asked again")
        assert fake.release() == 4
        ids_a, ids_b = await asyncio.gather(*streams)
    finally:
        await client.close()
    assert sorted(ids_a) == sorted(a.ids) and sorted(ids_b) == sorted(b.ids)
    assert client.reconnects == 1 and fake.hellos == 2
    assert [r.since for r in fake.results_requests[2:]] in ([0, 1], [1, 0])


async def test_shutting_down_scheduler_is_waited_for(fake: FakeScheduler) -> None:
    client = await connect(fake)
    try:
        sub = await client.submit(["hold"])
        waiting = asyncio.create_task(anext(client.results(sub.job)))
        await until(lambda: fake.results_requests, "the stream open")
        await fake.broadcast_error("shutting_down", "restarting")
        await until(lambda: len(fake.results_requests) == 2, "the stream asked again")
        fake.release()
        result = await waiting
    finally:
        await client.close()
    assert result.id == sub.ids[0] and result.ok
    assert client.reconnects == 1


# --- submissions ------------------------------------------------------------------------


async def test_a_submit_whose_reply_was_lost_is_sent_again(fake: FakeScheduler) -> None:
    fake.drop_after_submits = {2}  # batch 2 is stored, then the connection drops
    tasks = [{"fn": "echo", "args": [i]} for i in range(1000)]
    client = await connect(fake)
    try:
        sub = await client.submit(tasks, batch_size=200)
        results = [r async for r in client.results(sub.job)]
    finally:
        await client.close()
    assert sub.ids == [f"{sub.job}.{i}" for i in range(1000)]
    job = fake.jobs[sub.job]
    assert len(job.ids) == 1000 and len(fake.tasks) == 1000 and job.sealed
    assert sum(fake.submit_sizes) > 1000  # batch 2 at least arrived twice
    assert sorted(r.value for r in results) == list(range(1000))
    assert client.reconnects == 1
    assert all("id" not in t for t in tasks)  # the caller's maps are left alone


async def test_a_lost_final_reply_is_resent_into_the_sealed_job(fake: FakeScheduler) -> None:
    fake.drop_after_submits = {3}  # the final batch seals the job; its reply is lost
    named = [{"cmd": "true", "id": f"mine-{i}"} for i in range(50)]
    client = await connect(fake)
    try:
        sub = await client.submit([*named, *(["true"] * 250)], batch_size=100)
        status = await client.status(sub.job)
    finally:
        await client.close()
    assert sub.ids == [f"mine-{i}" for i in range(50)] + [f"{sub.job}.{i}" for i in range(50, 300)]
    assert status["total"] == 300 and status["sealed"]
    assert len(fake.submit_sizes) >= 4 and fake.submit_sizes[-1] == 100
    assert len(fake.tasks) == 300


async def test_a_server_that_keeps_dropping_runs_out_the_timeout(fake: FakeScheduler) -> None:
    fake.drop_after_submits = set(range(1, 100_000))  # every submit stored, never answered
    policy = ReconnectPolicy(timeout_s=0.5, initial_delay_s=0.01, max_delay_s=0.05)
    client = await connect(fake, policy)
    try:
        with pytest.raises(ReconnectFailed):
            await client.submit(["true"] * 10, batch_size=5)
    finally:
        await client.close()
    assert fake.hellos >= 3  # it did reconnect, more than once, before giving up
    (job,) = fake.jobs.values()
    assert len(job.ids) == 10 and job.sealed  # every resend was recognised


# --- one-shot requests and giving up ------------------------------------------------------


async def test_a_request_after_an_idle_drop_reconnects(fake: FakeScheduler) -> None:
    client = await connect(fake)
    try:
        sub = await client.submit(["echo"])
        await fake.drop_connections()
        assert (await client.status(sub.job))["total"] == 1
        assert await client.cancel(sub.job) == 0
        assert await client.ping() > 0
    finally:
        await client.close()
    assert client.reconnects == 1 and fake.hellos == 2


async def test_a_scheduler_gone_for_good_fails_after_the_timeout(fake: FakeScheduler) -> None:
    loop = asyncio.get_running_loop()
    client = await Client.connect("127.0.0.1", fake.port, reconnect_timeout_s=0.5)
    try:
        sub = await client.submit(["hold"])
        stream = client.results(sub.job)
        waiting = asyncio.create_task(anext(stream))
        await until(lambda: fake.results_requests, "the stream open")
        start = loop.time()
        await fake.stop()
        with pytest.raises(ReconnectFailed) as info:
            await waiting
        elapsed = loop.time() - start
        # Every later call fails the same way, at once.
        with pytest.raises(ReconnectFailed):
            await client.status(sub.job)
        await stream.aclose()
    finally:
        await client.close()
    assert 0.5 <= elapsed < 3
    message = str(info.value)
    assert message.startswith(f"lost the connection to 127.0.0.1:{fake.port} (")
    assert "could not reconnect within 0." in message and "Connection refused" in message
    assert info.value.attempts >= 2 and info.value.elapsed_s >= 0.5
    assert isinstance(info.value, ConnectionLost)


async def test_closing_the_client_stops_reconnecting_at_once(fake: FakeScheduler) -> None:
    loop = asyncio.get_running_loop()
    client = await connect(
        fake, ReconnectPolicy(timeout_s=60.0, initial_delay_s=5.0, max_delay_s=5.0)
    )
    sub = await client.submit(["hold"])
    stream = client.results(sub.job)
    with capture_logs() as logs:
        waiting = asyncio.create_task(anext(stream))
        await until(lambda: fake.results_requests, "the stream open")
        await fake.stop()
        await until(lambda: "reconnect attempt failed" in events(logs), "a refused attempt")
        start = loop.time()
        await client.close()
        with pytest.raises(ConnectionLost, match="closed") as info:
            await waiting
    assert loop.time() - start < 2  # not the 5 s pause, nor the 60 s timeout
    assert not isinstance(info.value, ReconnectFailed)
    await stream.aclose()


async def test_without_reconnect_a_drop_is_final(fake: FakeScheduler) -> None:
    client = await Client.connect("127.0.0.1", fake.port, reconnect=False)
    try:
        sub = await client.submit(["hold"])
        await fake.drop_connections()
        with pytest.raises(ConnectionLost) as info:
            await client.status(sub.job)
        assert not isinstance(info.value, ReconnectFailed)
        assert fake.hellos == 1
        assert not client.reconnect_policy.enabled
    finally:
        await client.close()


# --- the policy ------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = ReconnectPolicy(jitter=0).delays()
    assert [round(next(delays), 3) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    jittered = ReconnectPolicy(jitter=0.2).delays()
    for expected in (0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0):
        assert expected * 0.8 <= next(jittered) <= expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout_s": -1},
        {"initial_delay_s": 0},
        {"initial_delay_s": 3, "max_delay_s": 2},
        {"multiplier": 0.5},
        {"jitter": 1},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(**kwargs)


def test_what_counts_as_a_lost_connection() -> None:
    assert is_transient(ConnectionLost("gone"))
    assert is_transient(RemoteError("shutting_down", "bye"))
    assert not is_transient(RemoteError("not_found", "no job"))
    assert not is_transient(ValueError("x"))
    failed = ReconnectFailed("h", 1, cause="gone", elapsed_s=1.0, attempts=3, last="refused")
    assert not is_transient(failed)
