"""The worker daemon's parts in-process: claims against moto, reply batching, the process
pool, settings and CLI wiring, and one in-process daemon taking over a released bundle."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from client import aws_commands
from client.cli import main as cli_main
from protocol.aws import AwsSettings
from protocol.bundles import SQS_MAX_BODY, Bundle, decode_reply, decode_summary
from protocol.config import load
from tests.conftest import REPO_ROOT, aws_env
from tests.worker.conftest import Aws
from tests.worker.remote_util import ReplyReader, bundle_item, call, eventually, send_bundles, shell
from worker import daemon as daemon_module
from worker.claims import (
    AlreadyDone,
    Claimed,
    ClaimStore,
    HeldElsewhere,
    LeaseLost,
    item_size,
    write_units,
)
from worker.daemon import StopReason, WorkerDaemon, power_off
from worker.daemon_settings import WorkerDaemonSettings
from worker.pool import PoolTask, ProcessPool, hold_target
from worker.replies import Outgoing, _batches, _messages, send_replies

# --- claims ----------------------------------------------------------------------------------


def store(aws: Aws, worker_id: str, lease_s: float = 30) -> ClaimStore:
    return ClaimStore(aws.ddb, aws.settings.tasks_table, worker_id, lease_s=lease_s)


def row(task_id: str, state: str = "succeeded") -> dict[str, Any]:
    return {"id": task_id, "state": state, "exit_code": 0, "started": 1.0, "finished": 2.0}


async def test_claim_lease_release_reclaim_finish(aws: Aws) -> None:
    one, two = store(aws, "w1"), store(aws, "w2")
    first = await one.claim("b1", "s1")
    assert isinstance(first, Claimed) and first.attempt == 1 and not first.done_ids
    held = await two.claim("b1", "s1")
    assert isinstance(held, HeldElsewhere) and held.owner == "w1"
    assert held.lease_until == pytest.approx(time.time() + 30, abs=5)

    assert await one.extend("b1", 1, reported=[row("t1")]) == frozenset()
    with pytest.raises(LeaseLost):
        await two.extend("b1", 1)  # not the owner
    await one.release("b1", 1, reported=[row("t2", "failed")])

    second = await two.claim("b1", "s1")  # lease_until = 0: free at once
    assert isinstance(second, Claimed) and second.attempt == 2
    assert second.done_ids == {"t1", "t2"}
    assert [(r["id"], r["state"]) for r in second.prior_rows] == [
        ("t1", "succeeded"),
        ("t2", "failed"),
    ]
    with pytest.raises(LeaseLost):
        await one.extend("b1", 1)  # its attempt is over
    await two.finish("b1", 2, [*second.prior_rows, row("t3")])
    assert isinstance(await one.claim("b1", "s1"), AlreadyDone)
    item = await bundle_item(aws.ddb, aws.settings.tasks_table, "b1")
    assert [r["id"] for r in decode_summary(item["summary"]["B"])] == ["t1", "t2", "t3"]
    assert "done_ids" not in item and "partial" not in item
    with pytest.raises(LeaseLost):
        await two.finish("b1", 2, [])  # done is final
    assert one.estimated_write_units >= 3 and two.estimated_write_units >= 2


async def test_expired_lease_is_claimable_and_cancel_written_first_is_seen(aws: Aws) -> None:
    assert isinstance(await store(aws, "w1", lease_s=0.01).claim("b2", "s1"), Claimed)
    await asyncio.sleep(0.05)  # let a 10 ms lease run out (the clock is the subject here)
    taken = await store(aws, "w2").claim("b2", "s1")
    assert isinstance(taken, Claimed) and taken.attempt == 2

    # A scheduler may cancel before any worker claimed: the item holds only ``cancel``.
    await aws.ddb.update_item(
        TableName=aws.settings.tasks_table,
        Key={"bundle": {"S": "b3"}},
        UpdateExpression="ADD #cancel :ids",
        ExpressionAttributeNames={"#cancel": "cancel"},
        ExpressionAttributeValues={":ids": {"SS": ["x"]}},
    )
    claimed = await store(aws, "w1").claim("b3", "s1")
    assert isinstance(claimed, Claimed) and claimed.cancel == {"x"}


def test_write_units_are_estimated_from_item_sizes() -> None:
    item = {"bundle": {"S": "b1"}, "done_ids": {"SS": ["t" * 600, "u" * 600]}}
    assert item_size(item) == len("bundle") + 2 + len("done_ids") + 1200
    assert write_units(0, 10) == 1 and write_units(3000, 1500) == 3


# --- replies ---------------------------------------------------------------------------------


def result(task_id: str, value: Any = None) -> dict[str, Any]:
    return {"id": task_id, "state": "succeeded", "value": value, "stdout": "", "stderr": ""}


def test_reply_messages_split_to_fit_and_only_the_last_is_final() -> None:
    big = "x" * 100_000
    out = Outgoing("q", "b", [result(f"t{i}", big) for i in range(5)], final=True)
    messages = _messages(out, "w")
    assert len(messages) >= 3 and all(len(m.body) <= SQS_MAX_BODY for m in messages)
    assert [m.final for m in messages] == [False] * (len(messages) - 1) + [True]
    batches = _batches(messages)
    assert all(sum(len(m.body) for m in b) <= SQS_MAX_BODY and len(b) <= 10 for b in batches)
    small = _messages(Outgoing("q", "b", [result(f"t{i}") for i in range(500)], final=False), "w")
    assert len(small) == 1 and not small[0].final


def test_an_empty_final_reply_and_an_oversized_result() -> None:
    (empty,) = _messages(Outgoing("q", "b", [], final=True), "w")
    assert empty.final and decode_reply(empty.body).results == []
    huge = Outgoing("q", "b", [result("t1", "y" * 300_000)], final=True)
    (msg,) = _messages(huge, "w")
    (shrunk,) = decode_reply(msg.body).results
    assert shrunk["state"] == "failed" and "too large" in shrunk["error"]
    assert huge.results == [shrunk]  # the caller matches delivery by identity


async def test_send_replies_groups_and_reports_delivery(aws: Aws) -> None:
    outs = [Outgoing(aws.reply_url, f"b{i}", [result(f"b{i}.t")], final=i == 2) for i in range(3)]
    await send_replies(aws.sqs, "w", outs)
    assert [o.failed for o in outs] == [[], [], []]
    assert [o.final_delivered for o in outs] == [False, False, True]
    reader = ReplyReader(aws.sqs, aws.reply_url)
    await reader.until(lambda r: len(r.replies) == 3)
    assert reader.finals() == {"b2"} and {r.worker for r in reader.replies} == {"w"}

    gone = Outgoing(aws.reply_url + "-gone", "b9", [result("b9.t")], final=True)
    await send_replies(aws.sqs, "w", [gone])  # the scheduler deleted its queue: dropped
    assert gone.failed == [] and gone.final_delivered


# --- the process pool ------------------------------------------------------------------------


def test_hold_target() -> None:
    assert hold_target(None, 100, 4) == 1  # unknown runtime: one at a time
    assert hold_target(1.0, 100, 4) == 1
    assert hold_target(0.001, 1000, 4) == 50  # 1 ms tasks: 50 ms of work ahead
    assert hold_target(0.001, 8, 4) == 2  # never more than a fair share


def task(key: int, wire: dict[str, Any]) -> PoolTask:
    return PoolTask(key, dict(wire, id=key))  # the pool's tasks are known by their key


async def test_pool_runs_and_cancels_a_running_call() -> None:
    results: list[dict[str, Any]] = []
    pool = ProcessPool(
        2,
        name="pool-test",
        handlers=(),
        on_results=results.extend,
        kill_grace_s=0.3,
        log_format="json",
    )
    await pool.start()
    try:
        pool.submit([task(1, call("", "sleep", 30)), task(2, shell("", "echo hi"))])
        await eventually(lambda: any(r["id"] == 2 for r in results), what="the shell result")
        assert pool.busy == 1 and pool.outstanding == 1
        pool.cancel([1])  # a running call: its process is terminated after the grace
        await eventually(lambda: any(r["id"] == 1 for r in results), 10, "the cancelled call")
        by_key = {r["id"]: r for r in results}
        assert by_key[1]["state"] == "cancelled" and by_key[2]["stdout"] == "hi\n"

        pool.submit([task(3, call("", "noop"))])  # a fresh process took the slot
        await eventually(lambda: any(r["id"] == 3 for r in results), 30, "a task after it")
        assert {r["id"]: r["state"] for r in results}[3] == "succeeded"
        assert pool.withdraw({99}) == set()
        await asyncio.wait_for(pool.wait_idle(), 5)
    finally:
        await pool.close()
    assert pool.outstanding == 0


async def test_pool_fails_the_task_of_a_dead_process_and_goes_on() -> None:
    results: list[dict[str, Any]] = []
    pool = ProcessPool(
        1, name="pool-die", handlers=("tests.worker.handlers_daemon",), on_results=results.extend
    )
    await pool.start()
    try:
        pool.submit([task(1, call("", "die", 7)), task(2, call("", "noop"))])
        await eventually(lambda: len(results) == 2, 30, "both results")
    finally:
        await pool.close()
    first, second = results
    assert first["id"] == 1 and first["state"] == "failed" and "code 7" in first["error"]
    assert second["id"] == 2 and second["state"] == "succeeded"


# --- settings, CLI, poweroff -----------------------------------------------------------------


def test_worker_flags_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_serve(settings: WorkerDaemonSettings, aws: AwsSettings) -> int:
        seen["settings"], seen["aws"] = settings, aws
        return 0

    monkeypatch.setattr(daemon_module, "serve", fake_serve)
    monkeypatch.setenv("TASKMILL_TASKS_TABLE", "tt")
    monkeypatch.setenv("TASKMILL_DRAIN_GRACE_S", "7")
    argv = ["worker", "-s", "q1", "-t", "3", "-i", "5", "--poweroff", "--handlers", "a"]
    assert cli_main([*argv, "--handlers", "b,c", "--region", "eu-west-1"]) == 0
    settings, aws = seen["settings"], seen["aws"]
    assert (settings.slots, settings.idle_timeout_s, settings.poweroff) == (3, 5.0, True)
    assert settings.handlers == ("a", "b", "c") and settings.drain_grace_s == 7.0
    assert (aws.request_queue, aws.aws_region, aws.tasks_table) == ("q1", "eu-west-1", "tt")


def test_worker_settings_from_a_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('[worker]\nslots = 6\nidle_timeout_s = 0\n[aws]\nrequest_queue = "rq"\n')
    settings = load(WorkerDaemonSettings, toml_path=config, section="worker", env={})
    aws = load(AwsSettings, toml_path=config, section="aws", env={})
    assert settings.slots == 6 and settings.idle_exit is None and aws.request_queue == "rq"
    with pytest.raises(ValueError, match="slots"):
        WorkerDaemonSettings(slots=0)


def test_bad_settings_are_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert aws_commands.cmd_worker(settings={"receive_wait_s": 99}) == 2
    err = capsys.readouterr().err
    assert err.startswith("taskmill worker: error: bad settings") and err.count("\n") == 1


def test_power_off_runs_the_command(tmp_path: Path) -> None:
    power_off(f"touch {tmp_path / 'off'}")  # never the real poweroff in a test
    assert (tmp_path / "off").exists()


def test_init_aws_command_prints_what_it_created(aws_settings: AwsSettings) -> None:
    done = subprocess.run(
        [*aws_commands_cli(), "init-aws"],
        cwd=REPO_ROOT,
        env={**aws_env(aws_settings), "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["request_queue"].endswith("/" + aws_settings.request_queue)
    assert created["tasks_table"] == aws_settings.tasks_table


def aws_commands_cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "client.cli"]


# --- one daemon in-process -------------------------------------------------------------------


async def test_in_process_daemon_takes_over_a_released_bundle(aws: Aws) -> None:
    """An earlier owner reported x.0 and released the bundle: x.0 is not run again, x.1
    is, and the summary holds both."""
    earlier = store(aws, "earlier")
    assert isinstance(await earlier.claim("x", "s1"), Claimed)
    await earlier.release("x", 1, reported=[row("x.0")])
    tasks = [shell("x.0", "false"), shell("x.1", "true")]
    await send_bundles(
        aws.sqs,
        aws.request_url,
        [Bundle(id="x", scheduler="s1", reply_queue=aws.reply_url, tasks=tasks)],
    )
    daemon = WorkerDaemon(
        WorkerDaemonSettings(slots=1, receive_wait_s=1, worker_id="inproc"), aws.settings
    )
    await daemon.start()
    running = asyncio.create_task(daemon.run())
    try:
        reader = ReplyReader(aws.sqs, aws.reply_url)
        await reader.until(lambda r: "x" in r.finals())
        assert [(r["id"], r["state"]) for r in reader.results] == [("x.1", "succeeded")]
        item = await bundle_item(aws.ddb, aws.settings.tasks_table, "x")
        assert item["state"]["S"] == "done" and item["attempt"]["N"] == "2"
        assert [r["id"] for r in decode_summary(item["summary"]["B"])] == ["x.0", "x.1"]
    finally:
        daemon.request_stop(StopReason.SIGNAL)
        assert await asyncio.wait_for(running, 30) is StopReason.SIGNAL
    assert daemon.holdings.tasks_finished == 1
