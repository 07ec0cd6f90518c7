"""The asyncio Client against the protocol-speaking fake scheduler, over real TCP."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from client.client import Client, Submission, task_map
from client.errors import ClientError, ConnectError, ConnectionLost
from client.tasks import split_batches
from protocol.errors import ErrorCode, RemoteError
from protocol.model import Task, TaskKind, TaskState
from tests.client.fake_server import FakeScheduler


def client_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("taskmill-client")}


async def connect(fake: FakeScheduler, **kwargs: object) -> Client:
    return await Client.connect("127.0.0.1", fake.port, **kwargs)  # type: ignore[arg-type]


async def test_hello_then_ping(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        assert client.server == "fake/0.1"
        assert client.server_version == 1
        rtt = await client.ping()
        assert 0 < rtt < 5
    assert fake.ops == ["hello", "ping"]


async def test_5000_tasks_in_batches_get_exactly_one_result_per_id(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        tasks = [{"fn": "echo", "args": [i]} for i in range(5000)]
        submission = await client.submit(tasks, batch_size=1000)
        assert isinstance(submission, Submission)
        assert len(submission) == 5000
        assert len(set(submission.ids)) == 5000
        # One frame per batch, pipelined; only the last one seals the job. The first
        # batch is small so the scheduler can start while the rest is on its way.
        assert fake.submit_sizes == [256, 1000, 1000, 1000, 1000, 744]
        assert fake.jobs[submission.job].sealed
        seen: Counter[str] = Counter()
        values: dict[str, object] = {}
        async for result in client.results(submission.job):
            seen[result.id] += 1
            values[result.id] = result.value
        assert set(seen) == set(submission.ids)
        assert max(seen.values()) == 1
        # ids come back in submission order: task i echoes i.
        assert [values[task_id] for task_id in submission.ids] == list(range(5000))


async def test_run_returns_every_result(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        results = await client.run(
            ["echo hello", {"cmd": "exit 3"}, {"fn": "add", "args": [2, 3]}], batch_size=2
        )
    by_state = Counter(r.state for r in results)
    assert by_state == {TaskState.SUCCEEDED: 2, TaskState.FAILED: 1}
    stdout = {r.stdout for r in results}
    assert "hello\n" in stdout
    assert {r.exit_code for r in results if not r.ok} == {3}
    assert 5 in {r.value for r in results}


async def test_task_objects_and_wire_maps_are_accepted(fake: FakeScheduler) -> None:
    task = Task(id="", job="", kind=TaskKind.CALL, fn="echo", args=["x"], priority=4)
    wire_style = Task(id="", job="old", kind=TaskKind.SHELL, cmd="echo w").to_wire()
    assert "job" not in task_map(wire_style)
    assert "id" not in task_map(wire_style)
    assert task_map(task) == {"fn": "echo", "args": ["x"], "kwargs": {}, "priority": 4}
    with pytest.raises(TypeError, match="a task must be"):
        task_map(42)  # type: ignore[arg-type]
    async with Client("127.0.0.1", fake.port) as client:
        results = await client.run([task, wire_style, {"cmd": "echo m", "id": "mine"}])
    assert sorted(str(r.value or r.stdout) for r in results) == ["m\n", "w\n", "x"]
    assert "mine" in {r.id for r in results}
    assert fake.tasks["mine"].task.job == results[0].job


async def test_submit_in_parts_then_seal(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        first = await client.submit(["echo a"], final=False)
        assert not fake.jobs[first.job].sealed
        second = await client.submit(["echo b"], job=first.job)
        assert second.job == first.job
        # Ids the client makes go on where the job's tasks stop, as the scheduler's would.
        assert (first.ids, second.ids) == ([f"{first.job}.0"], [f"{first.job}.1"])
        status = await client.status(first.job)
        assert status == {
            "kind": "job",
            "job": first.job,
            "counts": {"succeeded": 2},
            "total": 2,
            "sealed": True,
        }
        results = [r async for r in client.results(first.job)]
        assert {r.stdout for r in results} == {"a\n", "b\n"}


async def test_adding_to_a_job_made_elsewhere_continues_its_ids(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as first:
        opened = await first.submit(["echo a", "echo b"], job="shared", final=False)
    async with Client("127.0.0.1", fake.port) as second:
        added = await second.submit(["echo c"], job="shared")
    assert opened.ids == ["shared.0", "shared.1"]
    assert added.ids == ["shared.2"]  # not shared.0 again, which would be taken as a repeat
    assert fake.jobs["shared"].ids == ["shared.0", "shared.1", "shared.2"]
    assert fake.ops.count("status") == 2  # one look-up per submit to a named job


def test_split_batches_names_tasks_and_fills_defaults() -> None:
    bare: dict[str, object] = {"cmd": "true"}
    named: dict[str, object] = {"cmd": "true", "id": "mine", "timeout_s": 9}
    task = Task(id="", job="", kind=TaskKind.CALL, fn="echo")
    defaults = {"max_attempts": 2, "timeout_s": None}
    batches = list(
        split_batches([bare, named, "echo", task], 3, job="j", start=5, defaults=defaults)
    )
    assert [len(b) for b in batches] == [3, 1]
    flat = [t for b in batches for t in b]
    assert [t["id"] for t in flat] == ["j.5", "mine", "j.7", "j.8"]
    assert [t["max_attempts"] for t in flat] == [2, 2, 2, 2]
    assert "timeout_s" not in flat[0] and flat[1]["timeout_s"] == 9
    assert bare == {"cmd": "true"} and named == {"cmd": "true", "id": "mine", "timeout_s": 9}
    complete = {"cmd": "true", "id": "x", "max_attempts": 1}
    (only,) = split_batches([complete], 10, job="j", defaults={"max_attempts": 5})
    assert only[0] is complete  # nothing to add: passed through, not copied


async def test_results_without_follow_and_then_following(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        sub = await client.submit(["echo 1", "hold", "hold", "echo 2"])
        so_far = [r async for r in client.results(sub.job, follow=False)]
        assert {r.stdout for r in so_far} == {"1\n", "2\n"}

        batches = client.result_batches(sub.job, since=2)
        following = asyncio.create_task(anext(batches))
        await client.ping()  # served after the results request: the stream is open
        assert not following.done()
        assert fake.release() == 2
        first = await following
        rest = first.results + [r async for batch in batches for r in batch.results]
        assert sorted(r.id for r in rest) == sorted(sub.ids[1:3])
        assert first.total == 4


async def test_streams_and_requests_interleave_on_one_connection(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        sub = await client.submit(["hold"] * 3)

        async def collect() -> list[str]:
            return [r.id async for r in client.results(sub.job)]

        collector = asyncio.create_task(collect())
        info = await client.get_task(sub.ids[0])
        assert info["state"] == "running" and info["progress"] == 0
        assert await client.cancel(sub.ids[0]) == 1
        fake.release()
        ids = await collector
        assert sorted(ids) == sorted(sub.ids)
        states = {r.id: r.state async for r in client.results(sub.job, follow=False)}
        assert states[sub.ids[0]] is TaskState.CANCELLED


async def test_cancel_a_job(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        sub = await client.submit(["hold", "hold", "echo done"])
        assert await client.cancel(sub.job) == 2
        assert await client.cancel(sub.job) == 0
        counts = (await client.status(sub.job))["counts"]
        assert counts == {"cancelled": 2, "succeeded": 1}


async def test_an_empty_submission_is_a_sealed_empty_job(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        assert await client.run([]) == []
    (job,) = fake.jobs.values()
    assert job.sealed and job.ids == []


async def test_send_task_and_get_task(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        task_id = await client.send_task("echo", {"firstName": "John"}, user="u", priority=7)
        record = fake.tasks[task_id].task
        assert (record.user, record.priority, record.fn) == ("u", 7, "echo")
        info = await client.get_task(task_id)
        assert info["progress"] == 100
        assert info["state"] == "succeeded"
        assert info["result"] == {"firstName": "John"}

        failing = await client.get_task(await client.send_task("fail", None))
        assert failing["progress"] is None
        assert failing["error"] == "RuntimeError: failed"

        shell = await client.get_task((await client.submit(["exit 0"])).ids[0])
        assert shell["result"] == 0

        missing = await client.get_task("no-such-task")
        assert missing["progress"] is None and missing["state"] is None
        assert "no-such-task" in missing["error"]


async def test_stats(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        await client.run(["true"] * 3)
        stats = await client.stats()
    assert stats["tasks"] == 3 and stats["finished"] == 3
    assert "op" not in stats and "rid" not in stats


@pytest.mark.parametrize(
    ("action", "code", "text"),
    [
        ("unknown_handler", ErrorCode.UNKNOWN_HANDLER, "no handler named 'nope'"),
        ("bad_field", ErrorCode.INVALID_FIELD, "priority must be an integer"),
        ("not_found", ErrorCode.NOT_FOUND, "no job or task 'ghost'"),
        ("sealed", ErrorCode.CONFLICT, "is sealed"),
        ("no_stream", ErrorCode.NOT_FOUND, "no job 'ghost'"),
    ],
)
async def test_error_replies_raise_remote_error(
    fake: FakeScheduler, action: str, code: ErrorCode, text: str
) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        with pytest.raises(RemoteError) as info:
            if action == "unknown_handler":
                await client.submit([{"fn": "echo"}, {"fn": "nope"}])
            elif action == "bad_field":
                await client.submit([{"cmd": "true", "priority": "high"}])
            elif action == "not_found":
                await client.status("ghost")
            elif action == "sealed":
                sub = await client.submit(["true"])
                await client.submit(["true"], job=sub.job)
            else:
                [r async for r in client.results("ghost")]
        assert info.value.code is code
        assert text in info.value.message
        # The connection survives a request error.
        assert await client.ping() > 0


async def test_one_failing_batch_fails_the_submit(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        tasks: list[dict[str, object]] = [{"cmd": "true"} for _ in range(10)]
        tasks.append({"fn": "nope"})
        with pytest.raises(RemoteError, match="no handler"):
            await client.submit(tasks, batch_size=4)
        assert fake.submit_sizes == [4, 4]  # the third batch was rejected whole
        assert await client.ping() > 0


async def test_unknown_op_is_an_error_reply(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        with pytest.raises(RemoteError) as info:
            await client._request({"op": "frobnicate"})
        assert info.value.code is ErrorCode.UNKNOWN_OP


async def test_connection_level_error_fails_everything(fake: FakeScheduler) -> None:
    client = await connect(fake, reconnect=False)
    try:
        sub = await client.submit(["hold"])
        stream = client.results(sub.job)
        waiting = asyncio.create_task(anext(stream))
        await client.ping()  # the stream task has run and registered meanwhile
        await fake.broadcast_error("shutting_down", "the scheduler is going away")
        with pytest.raises(RemoteError) as info:
            await waiting
        assert info.value.code is ErrorCode.SHUTTING_DOWN
        with pytest.raises(ConnectionLost, match="going away"):
            await client.ping()
        assert not client.connected
        await stream.aclose()
    finally:
        await client.close()


async def test_connection_drop_raises_connection_lost(fake: FakeScheduler) -> None:
    client = await connect(fake, reconnect=False)
    try:
        sub = await client.submit(["hold"])
        batches = client.result_batches(sub.job)
        waiting = asyncio.create_task(anext(batches))
        await client.ping()
        await fake.drop_connections()
        with pytest.raises(ConnectionLost, match="closed the connection"):
            await waiting
        await batches.aclose()
        with pytest.raises(ConnectionLost):
            await client.status(sub.job)
    finally:
        await client.close()


async def test_connect_failure_names_the_address(closed_port: int) -> None:
    with pytest.raises(ConnectError) as info:
        await Client.connect("127.0.0.1", closed_port)
    assert f"127.0.0.1:{closed_port}" in str(info.value)
    assert "refused" in str(info.value).lower()
    assert info.value.port == closed_port
    assert not client_tasks()


async def test_server_that_never_says_hello(closed_port: int) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectError, match="no reply to hello"):
            await Client.connect("127.0.0.1", port, connect_timeout=0.2)
        assert not client_tasks()
    finally:
        server.close()
        await server.wait_closed()


async def test_big_batches_are_split_to_fit_the_frame_limit(fake: FakeScheduler) -> None:
    client = await connect(fake, max_frame=4096)
    try:
        tasks = [{"cmd": f"echo {'x' * 40} {i}", "id": f"big-{i}"} for i in range(300)]
        sub = await client.submit(tasks, batch_size=300)
        assert sub.ids == [f"big-{i}" for i in range(300)]
        assert len(fake.submit_sizes) > 1 and sum(fake.submit_sizes) == 300
        assert fake.jobs[sub.job].sealed
        with pytest.raises(ClientError, match="does not fit"):
            await client.submit([{"cmd": "x" * 5000}])
    finally:
        await client.close()


async def test_close_leaves_no_tasks_and_fails_later_calls(fake: FakeScheduler) -> None:
    client = await connect(fake)
    assert len(client_tasks()) == 1  # the reader
    sub = await client.submit(["hold"])
    stream = client.results(sub.job)
    waiting = asyncio.create_task(anext(stream))
    await client.ping()
    await client.close()
    await client.close()  # idempotent
    with pytest.raises(ConnectionLost, match="closed"):
        await waiting
    await stream.aclose()
    assert not client_tasks()
    with pytest.raises(ConnectionLost):
        await client.ping()
    with pytest.raises(ClientError, match="opened once"):
        await client.open()


async def test_cancelling_a_waiting_call_leaves_the_client_usable(fake: FakeScheduler) -> None:
    async with Client("127.0.0.1", fake.port) as client:
        sub = await client.submit(["hold"])
        consumer = asyncio.create_task(client.run(["hold"]))
        await client.ping()
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        assert consumer.cancelled()
        fake.release()
        results = [r async for r in client.results(sub.job)]
        assert [r.id for r in results] == sub.ids
        conn = client._link.current
        assert conn is not None and conn.idle
