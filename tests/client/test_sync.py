"""The blocking SyncClient against the fake scheduler running on its own thread."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from client.errors import ClientError, ConnectError, ConnectionLost
from client.reconnect import ReconnectPolicy
from client.sync import SyncClient
from protocol.errors import ErrorCode, RemoteError
from protocol.model import TaskState
from tests.client.fake_server import ThreadedFakeScheduler


def client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("taskmill-client")]


def test_submit_and_iterate_results(threaded_fake: ThreadedFakeScheduler) -> None:
    with SyncClient("127.0.0.1", threaded_fake.port) as client:
        submission = client.submit({"fn": "echo", "args": [i]} for i in range(1200))
        assert len(submission.ids) == 1200
        seen = Counter(r.id for r in client.results(submission.job))
        assert set(seen) == set(submission.ids)
        assert max(seen.values()) == 1


def test_run_status_cancel_stats_ping(threaded_fake: ThreadedFakeScheduler) -> None:
    with SyncClient("127.0.0.1", threaded_fake.port) as client:
        results = client.run(["echo a", "exit 1"])
        assert sorted(r.state for r in results) == [TaskState.FAILED, TaskState.SUCCEEDED]
        held = client.submit(["hold", "hold"])
        status = client.status(held.job)
        assert status["counts"] == {"running": 2}
        assert client.cancel(held.job) == 2
        assert client.status(held.ids[0])["task"]["state"] == "cancelled"
        assert client.stats()["tasks"] == 4
        assert client.ping() > 0


def test_send_task_and_get_task(threaded_fake: ThreadedFakeScheduler) -> None:
    with SyncClient("127.0.0.1", threaded_fake.port) as client:
        task_id = client.send_task("echo", {"lastName": "Doe"}, user="alice", priority=100)
        info = client.get_task(task_id)
        assert info["progress"] == 100
        assert info["result"] == {"lastName": "Doe"}


def test_remote_errors_cross_the_thread(threaded_fake: ThreadedFakeScheduler) -> None:
    with SyncClient("127.0.0.1", threaded_fake.port) as client:
        with pytest.raises(RemoteError) as info:
            client.status("ghost")
        assert info.value.code is ErrorCode.NOT_FOUND
        assert client.ping() > 0


def test_abandoning_a_result_iterator_keeps_the_client_usable(
    threaded_fake: ThreadedFakeScheduler,
) -> None:
    with SyncClient("127.0.0.1", threaded_fake.port) as client:
        job = client.submit(["true"] * 10).job
        batches = client.result_batches(job)
        first = next(batches)
        assert len(first.results) == 10 and first.done
        batches.close()
        results = client.results(job, follow=False)
        assert next(results).state is TaskState.SUCCEEDED
        results.close()
        assert threaded_fake.run_sync(lambda: len(threaded_fake.server.ops)) == 4
        assert client.ping() > 0


def test_close_stops_the_loop_thread(threaded_fake: ThreadedFakeScheduler) -> None:
    before = set(threading.enumerate())
    client = SyncClient("127.0.0.1", threaded_fake.port)
    assert len(client_threads()) == 1
    client.run(["true"])
    client.close()
    client.close()  # idempotent
    assert client.closed
    assert client_threads() == []
    assert set(threading.enumerate()) <= before
    with pytest.raises(ClientError, match="closed"):
        client.ping()


def test_connect_failure_leaves_no_thread(closed_port: int) -> None:
    with pytest.raises(ConnectError) as info:
        SyncClient("127.0.0.1", closed_port)
    assert f"127.0.0.1:{closed_port}" in str(info.value)
    assert client_threads() == []


def test_sync_client_resumes_a_dropped_stream(threaded_fake: ThreadedFakeScheduler) -> None:
    policy = ReconnectPolicy(timeout_s=10.0, initial_delay_s=0.01, max_delay_s=0.05)
    with SyncClient("127.0.0.1", threaded_fake.port, reconnect_policy=policy) as client:
        sub = client.submit({"fn": "echo", "args": [i]} for i in range(1200))
        threaded_fake.run_sync(lambda: setattr(threaded_fake.server, "drop_stream_after", 500))
        results = list(client.results(sub.job))
        assert [r.id for r in results] == sub.ids
        assert client.client.reconnects == 1
        assert client.status(sub.job)["total"] == 1200


def test_sync_client_without_reconnect(threaded_fake: ThreadedFakeScheduler) -> None:
    with SyncClient("127.0.0.1", threaded_fake.port, reconnect=False) as client:
        threaded_fake.run_sync(lambda: threaded_fake.server.drop_after_submits.add(1))
        with pytest.raises(ConnectionLost):
            client.submit(["true"])
