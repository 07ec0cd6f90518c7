"""worker.process as a real subprocess over a real socketpair, driven like the scheduler does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from protocol.framing import BlockingFrameSocket, encode_frame
from protocol.model import Task, TaskKind
from tests.worker.proc_util import process_gone, wait_until

REPO = Path(__file__).resolve().parents[2]
SAMPLE = "tests.worker.handlers_sample"
RECV_TIMEOUT_S = 30.0


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    conn: BlockingFrameSocket
    stdout_path: Path
    stderr_path: Path

    def send(self, msg: dict[str, Any]) -> None:
        self.conn.send(msg)

    def recv(self) -> Any:
        return self.conn.recv()

    def run(self, *tasks: dict[str, Any]) -> None:
        self.send({"op": "run", "tasks": list(tasks)})

    def collect(self, ids: set[str], timeout_s: float = 30.0) -> tuple[dict[str, Any], int]:
        """Results for exactly ``ids`` (a duplicate fails), and how many frames carried them."""
        results: dict[str, dict[str, Any]] = {}
        frames = 0
        deadline = time.monotonic() + timeout_s
        while set(results) != ids:
            assert time.monotonic() < deadline, f"missing results for {ids - set(results)}"
            msg = self.recv()
            assert msg is not None, "worker closed the socket early"
            assert msg["op"] == "results"
            frames += 1
            for result in msg["results"]:
                assert result["id"] in ids, f"unexpected result {result['id']}"
                assert result["id"] not in results, f"second result for {result['id']}"
                results[result["id"]] = result
        return results, frames

    def wait_exit(self, timeout_s: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout_s)


def shell(task_id: str, cmd: str, timeout_s: float | None = None) -> dict[str, Any]:
    task = Task(id=task_id, job="j", kind=TaskKind.SHELL, cmd=cmd, timeout_s=timeout_s)
    return task.execution_wire(1)


def call(task_id: str, fn: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    task = Task(id=task_id, job="j", kind=TaskKind.CALL, fn=fn, args=list(args), kwargs=kwargs)
    return task.execution_wire(1)


@contextmanager
def start_worker(tmp_path: Path, handlers: str = SAMPLE) -> Iterator[Worker]:
    ours, theirs = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    stdout_path, stderr_path = tmp_path / "worker.stdout", tmp_path / "worker.stderr"
    argv = [sys.executable, "-m", "worker.process", "--fd", str(theirs.fileno())]
    argv += ["--worker-id", "w-test", "--handlers", handlers, "--kill-grace", "1"]
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            argv, pass_fds=(theirs.fileno(),), cwd=REPO, env=env, stdout=out, stderr=err
        )
    theirs.close()
    ours.settimeout(RECV_TIMEOUT_S)  # a hung worker fails the test instead of hanging it
    worker = Worker(proc, BlockingFrameSocket(ours), stdout_path, stderr_path)
    try:
        yield worker
    finally:
        ours.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    with start_worker(tmp_path) as w:
        ready = w.recv()
        assert ready["op"] == "ready"
        yield w


def wait_for_pid_file(path: Path) -> int:
    assert wait_until(lambda: path.exists() and path.read_text().endswith("\n"))
    return int(path.read_text())


def test_ready_message_describes_the_worker(tmp_path: Path) -> None:
    with start_worker(tmp_path) as w:
        ready = w.recv()
        assert ready["op"] == "ready"
        assert ready["worker"] == "w-test"
        assert ready["pid"] == w.proc.pid
        assert {"add", "HELLO", "noop", "echo", "sleep", "fail"} <= set(ready["handlers"])
        w.send({"op": "stop"})
        assert w.wait_exit() == 0


def test_a_mixed_batch_gets_exactly_one_result_per_task(worker: Worker) -> None:
    tasks: list[dict[str, Any]] = []
    expected: dict[str, tuple[str, str, Any]] = {}
    for i in range(200):
        task_id = f"t{i}"
        match i % 5:
            case 0:
                tasks.append(shell(task_id, f"echo line {i}"))
                expected[task_id] = ("succeeded", "stdout", f"line {i}\n")
            case 1:
                tasks.append(shell(task_id, f"expr {i} + 1"))
                expected[task_id] = ("succeeded", "stdout", f"{i + 1}\n")
            case 2:
                tasks.append(call(task_id, "add", i, 1))
                expected[task_id] = ("succeeded", "value", i + 1)
            case 3:
                tasks.append(call(task_id, "HELLO", firstName="n", lastName=str(i)))
                expected[task_id] = ("succeeded", "value", f"Hello n {i}")
            case _:
                tasks.append(call(task_id, "fail", f"bad {i}"))
                expected[task_id] = ("failed", "error", f"RuntimeError: bad {i}")
    worker.run(*tasks[:120])
    worker.run(*tasks[120:])
    results, _ = worker.collect(set(expected))
    for task_id, (state, field, want) in expected.items():
        result = results[task_id]
        assert result["state"] == state, result
        assert result[field] == want, result
        assert result["worker"] == "w-test"
        assert result["attempt"] == 1
    worker.send({"op": "stop"})
    assert worker.recv() is None  # nothing more after the last result: stop, then EOF
    assert worker.wait_exit() == 0


def test_short_tasks_share_result_frames(worker: Worker) -> None:
    ids = {f"n{i}" for i in range(1000)}
    worker.run(*(call(task_id, "noop") for task_id in sorted(ids)))
    results, frames = worker.collect(ids)
    assert all(r["state"] == "succeeded" for r in results.values())
    assert frames < 200  # one frame per task would be 1000


def test_a_long_task_does_not_hold_back_earlier_results(worker: Worker, tmp_path: Path) -> None:
    pid_file = tmp_path / "long.pid"
    worker.run(call("quick", "add", 1, 2), shell("long", f"echo $$ > {pid_file}; exec sleep 30"))
    results, _ = worker.collect({"quick"}, timeout_s=10)
    assert results["quick"]["value"] == 3
    wait_for_pid_file(pid_file)
    worker.send({"op": "cancel", "ids": ["long"]})
    cancelled, _ = worker.collect({"long"}, timeout_s=10)
    assert cancelled["long"]["state"] == "cancelled"


def test_a_long_call_reports_before_the_next_one_ends(worker: Worker) -> None:
    began = time.monotonic()
    worker.run(call("slow-1", "sleep", 0.1), call("slow-2", "sleep", 1.5))
    first, _ = worker.collect({"slow-1"})
    assert time.monotonic() - began < 1.2  # not held back until slow-2 is done
    assert first["slow-1"]["state"] == "succeeded"
    second, _ = worker.collect({"slow-2"})
    assert second["slow-2"]["state"] == "succeeded"


def test_cancel_of_queued_then_running_tasks(worker: Worker, tmp_path: Path) -> None:
    pid_file = tmp_path / "long.pid"
    worker.run(
        shell("long", f"echo $$ > {pid_file}; exec sleep 30"),
        call("q-call", "noop"),
        shell("q-shell", "true"),
        call("after", "add", 2, 2),
    )
    pid = wait_for_pid_file(pid_file)

    began = time.monotonic()
    worker.send({"op": "cancel", "ids": ["q-call", "q-shell", "not-a-task"]})
    queued, _ = worker.collect({"q-call", "q-shell"}, timeout_s=10)
    assert time.monotonic() - began < 5  # reported while "long" still runs
    for result in queued.values():
        assert result["state"] == "cancelled"
        assert result["started"] is None
    assert not process_gone(pid)

    began = time.monotonic()
    worker.send({"op": "cancel", "ids": ["long"]})
    rest, _ = worker.collect({"long", "after"}, timeout_s=10)
    assert time.monotonic() - began < 5
    assert rest["long"]["state"] == "cancelled"
    assert rest["long"]["started"] is not None
    assert rest["long"]["finished"] - rest["long"]["started"] < 10
    assert rest["after"]["value"] == 4  # the queue goes on after a cancel
    assert wait_until(lambda: process_gone(pid))

    worker.send({"op": "stop"})
    assert worker.wait_exit() == 0


def test_stop_finishes_the_tasks_in_hand(worker: Worker) -> None:
    worker.run(shell("a", "sh -c 'sleep 0.3; echo a'"), call("b", "add", 1, 1))
    worker.send({"op": "stop"})
    results, _ = worker.collect({"a", "b"})
    assert results["a"]["stdout"] == "a\n"
    assert results["b"]["value"] == 2
    assert worker.wait_exit() == 0


def test_eof_makes_the_worker_exit_and_kill_its_task(worker: Worker, tmp_path: Path) -> None:
    pid_file = tmp_path / "long.pid"
    worker.run(shell("long", f"echo $$ > {pid_file}; exec sleep 30"))
    pid = wait_for_pid_file(pid_file)
    worker.conn.sock.close()
    assert worker.wait_exit() == 0
    assert wait_until(lambda: process_gone(pid))


def test_sigterm_kills_the_worker_and_its_task(worker: Worker, tmp_path: Path) -> None:
    pid_file = tmp_path / "long.pid"
    worker.run(shell("long", f"echo $$ > {pid_file}; exec sleep 30"))
    pid = wait_for_pid_file(pid_file)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait_exit() == -signal.SIGTERM
    assert wait_until(lambda: process_gone(pid))


def test_sigint_is_ignored(worker: Worker) -> None:
    worker.proc.send_signal(signal.SIGINT)
    worker.run(call("after-int", "add", 5, 5))
    results, _ = worker.collect({"after-int"})
    assert results["after-int"]["value"] == 10
    assert worker.proc.poll() is None


def test_handler_output_goes_to_stderr_not_stdout(worker: Worker) -> None:
    worker.run(call("loud", "shout", "printed by a handler"))
    results, _ = worker.collect({"loud"})
    assert results["loud"]["value"] == len("printed by a handler")
    worker.send({"op": "stop"})
    assert worker.wait_exit() == 0
    assert "printed by a handler" in worker.stderr_path.read_text()
    assert worker.stdout_path.read_bytes() == b""


def test_a_result_too_large_for_a_frame_fails_alone(worker: Worker) -> None:
    worker.run(call("big", "big_bytes", 17 * 1024 * 1024), call("small", "add", 1, 2))
    results, _ = worker.collect({"big", "small"})
    assert results["big"]["state"] == "failed"
    assert results["big"]["error"].startswith("result too large to send")
    assert results["big"]["value"] is None
    assert results["small"]["value"] == 3


def test_unknown_messages_are_ignored(worker: Worker) -> None:
    worker.send({"op": "bogus"})
    worker.send({"op": "run", "tasks": "not a list"})
    worker.run(call("ok", "noop"))
    results, _ = worker.collect({"ok"})
    assert results["ok"]["state"] == "succeeded"
    assert "unknown_message" in worker.stderr_path.read_text()


@pytest.mark.parametrize(
    ("module", "cause"),
    [
        ("tests.worker.handlers_broken", "RuntimeError: broken on purpose at import time"),
        ("tests.worker.no_such_module", "ModuleNotFoundError"),
    ],
)
def test_a_handler_module_that_fails_to_import_is_fatal(
    tmp_path: Path, module: str, cause: str
) -> None:
    with start_worker(tmp_path, handlers=f"{SAMPLE},{module}") as w:
        msg = w.recv()
        assert msg["op"] == "fatal"
        assert repr(module) in msg["error"]
        assert cause in msg["error"]
        assert w.wait_exit() == 3


def test_tasks_run_and_cancelled_in_one_read_are_reported_before_waiting() -> None:
    # In-process: the loop's flush() reads a run and a cancel of the same tasks in one
    # poll; the cancelled results must go out then, not wait for the next message (the
    # worker blocks in recv() next, and the scheduler would wait for them forever).
    from worker.process import WorkerLoop

    ours, theirs = socket.socketpair()
    try:
        scheduler_end = BlockingFrameSocket(theirs)
        loop = WorkerLoop(BlockingFrameSocket(ours), "w-test")
        tasks = [{"id": i, "kind": "call", "fn": "noop", "args": [], "kwargs": {}} for i in "ab"]
        theirs.sendall(
            encode_frame({"op": "run", "tasks": tasks})
            + encode_frame({"op": "cancel", "ids": ["a", "b"]})
        )
        loop.flush()
        assert not loop.pending and not loop.results
        theirs.settimeout(RECV_TIMEOUT_S)
        msg = scheduler_end.recv()
        assert msg["op"] == "results"
        assert {(r["id"], r["state"]) for r in msg["results"]} == {
            ("a", "cancelled"),
            ("b", "cancelled"),
        }
    finally:
        ours.close()
        theirs.close()
