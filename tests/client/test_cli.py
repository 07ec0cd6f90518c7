"""The ``taskmill`` CLI, called as ``main([...])`` against the fake scheduler."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client.cli import build_parser, main
from tests.client.fake_server import ThreadedFakeScheduler

SUMMARY = re.compile(
    r"(\d+) tasks: (\d+) succeeded, (\d+) failed in (\d+\.\d\d)s \((\d+\.\d) tasks/s\)"
)
RESULT_FIELDS = {
    "id",
    "state",
    "exit_code",
    "stdout",
    "stderr",
    "value",
    "error",
    "worker",
    "attempt",
    "submitted",
    "started",
    "finished",
}


@pytest.fixture
def workload(tmp_path: Path) -> Path:
    path = tmp_path / "default.workload"
    path.write_text("# three tasks\nsleep 0\necho hi\n\nsleep 0.01\n", encoding="utf-8")
    return path


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def test_client_prints_the_summary(
    threaded_fake: ThreadedFakeScheduler, workload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["client", "-s", threaded_fake.address, "-w", str(workload)])
    out, err = capsys.readouterr()
    assert code == 0
    match = SUMMARY.fullmatch(last_line(out))
    assert match is not None, out
    assert match.groups()[:3] == ("3", "3", "0")
    assert err == ""


def test_client_json_and_output_file(
    threaded_fake: ThreadedFakeScheduler,
    workload: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "results.jsonl"
    argv = ["client", "-s", threaded_fake.address, "-w", str(workload)]
    code = main([*argv, "--json", "--output", str(output), "--user", "carol", "--priority", "3"])
    out, _ = capsys.readouterr()
    assert code == 0
    summary = json.loads(last_line(out))
    assert {"tasks", "succeeded", "failed", "elapsed_s", "throughput"} <= summary.keys()
    assert (summary["tasks"], summary["succeeded"], summary["failed"]) == (3, 3, 0)
    assert summary["elapsed_s"] > 0 and summary["throughput"] > 0

    lines = output.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 3
    assert all(row.keys() >= RESULT_FIELDS for row in rows)
    assert {row["stdout"] for row in rows} == {"", "hi\n"}
    server = threaded_fake.server
    tasks = threaded_fake.run_sync(lambda: [r.task for r in server.tasks.values()])
    assert {row["id"] for row in rows} == {t.id for t in tasks}
    assert {(t.user, t.priority) for t in tasks} == {("carol", 3)}


def test_failed_tasks_exit_1_and_are_shown(
    threaded_fake: ThreadedFakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text('{"cmd": "exit 3", "id": "bad"}\n{"cmd": "true"}\n', encoding="utf-8")
    code = main(["client", "-s", threaded_fake.address, "-w", str(path)])
    out, err = capsys.readouterr()
    assert code == 1
    match = SUMMARY.fullmatch(last_line(out))
    assert match is not None and match.groups()[:3] == ("2", "1", "1")
    assert "task bad failed (exit 3): exit 3" in err


def test_broken_workload_exits_2_and_submits_nothing(
    threaded_fake: ThreadedFakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text('{"cmd": "true"}\n{"cmd": "true", "priority": "x"}\n', encoding="utf-8")
    code = main(["client", "-s", threaded_fake.address, "-w", str(path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err == f"taskmill: error: {path}: line 2: priority must be an integer, got str\n"
    assert threaded_fake.run_sync(lambda: list(threaded_fake.server.ops)) == []


def test_missing_workload_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.txt"
    assert main(["client", "-s", "127.0.0.1:1", "-w", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("taskmill: error: ") and str(missing) in err
    assert err.count("\n") == 1


def test_cannot_connect_exits_2(
    closed_port: int, workload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["client", "-s", f"127.0.0.1:{closed_port}", "-w", str(workload)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"taskmill: error: cannot connect to 127.0.0.1:{closed_port}: Connection refused\n"
    )


def test_bad_address_is_a_usage_error(workload: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["client", "-s", "localhost:http", "-w", str(workload)]) == 2
    err = capsys.readouterr().err
    assert "bad scheduler address 'localhost:http'" in err


def test_unwritable_output_exits_2_before_submitting(
    threaded_fake: ThreadedFakeScheduler,
    workload: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "no-dir" / "out.jsonl"
    argv = ["client", "-s", threaded_fake.address, "-w", str(workload), "--output", str(bad)]
    assert main(argv) == 2
    assert "cannot write the output file" in capsys.readouterr().err
    assert threaded_fake.run_sync(lambda: list(threaded_fake.server.ops)) == []


def test_refused_submission_exits_2(
    threaded_fake: ThreadedFakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text('{"fn": "no_such_handler"}\n', encoding="utf-8")
    assert main(["client", "-s", threaded_fake.address, "-w", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("taskmill: error: the scheduler refused the request: unknown_handler")


def test_workload_gen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workload-gen", "3", "10"]) == 0
    assert capsys.readouterr().out == "sleep 0.01\nsleep 0.01\nsleep 0.01\n"
    target = tmp_path / "w.txt"
    assert main(["workload-gen", "1000", "0", "-o", str(target)]) == 0
    lines = target.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1000 and set(lines) == {"sleep 0"}
    assert main(["workload-gen", "1", "fast"]) == 2
    assert "milliseconds" in capsys.readouterr().err
    assert main(["workload-gen", "-1", "0"]) == 2


def test_submit_status_results_cancel(
    threaded_fake: ThreadedFakeScheduler,
    workload: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = ["-s", threaded_fake.address]
    assert main(["submit", *server, "-w", str(workload)]) == 0
    job = capsys.readouterr().out.strip()
    assert job in threaded_fake.run_sync(lambda: list(threaded_fake.server.jobs))

    assert main(["status", *server, job]) == 0
    assert capsys.readouterr().out == f"job {job} (sealed): 3 tasks: 3 succeeded\n"
    assert main(["status", *server, job, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"succeeded": 3}

    assert main(["results", *server, job]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and {r["job"] for r in rows} == {job}
    task_id = rows[0]["id"]
    assert main(["status", *server, task_id]) == 0
    assert capsys.readouterr().out.startswith(f"task {task_id}: succeeded (job {job}, attempt 1")

    output = tmp_path / "r.jsonl"
    assert main(["results", *server, job, "--follow", "--output", str(output), "--json"]) == 0
    assert json.loads(last_line(capsys.readouterr().out))["tasks"] == 3
    assert len(output.read_text(encoding="utf-8").splitlines()) == 3

    hold = tmp_path / "hold.txt"
    hold.write_text("hold\nhold\n", encoding="utf-8")
    assert main(["submit", *server, "-w", str(hold), "--json"]) == 0
    held = json.loads(capsys.readouterr().out)
    assert held["tasks"] == 2
    assert main(["cancel", *server, held["job"]]) == 0
    assert capsys.readouterr().out == f"cancelled 2 tasks of {held['job']}\n"
    assert main(["results", *server, held["job"]]) == 1  # cancelled is not succeeded
    capsys.readouterr()
    assert main(["status", *server, "ghost"]) == 2
    assert "not_found" in capsys.readouterr().err


def test_seed_compatible_aliases_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(["scheduler", "-s", "7071", "-lw", "4", "--handlers", "a,b"])
    assert (args.port, args.local_workers, args.handlers) == (7071, "4", ["a,b"])
    args = parser.parse_args(["scheduler", "--port", "0", "--local-workers", "2"])
    assert (args.port, args.local_workers) == (0, "2")
    args = parser.parse_args(["run", "-w", "f", "-lw", "3", "--handlers", "x", "--handlers", "y"])
    assert (args.local_workers, args.handlers) == ("3", ["x", "y"])
    args = parser.parse_args(["client", "-s", "h:1", "-w", "f"])
    assert args.server == ("h", 1)


def test_scheduler_command_builds_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scheduler.main

    seen: list[Any] = []
    aws_seen: list[Any] = []

    def fake_serve(settings: Any, aws: Any = None, services: Any = ()) -> int:
        seen.append(settings)
        aws_seen.append(aws)
        return 0

    monkeypatch.setattr(scheduler.main, "serve", fake_serve)
    monkeypatch.delenv("TASKMILL_PORT", raising=False)
    monkeypatch.setenv("TASKMILL_LOG_LEVEL", "debug")
    config = tmp_path / "taskmill.toml"
    config.write_text('host = "0.0.0.0"\nport = 9000\nlocal_workers = 7\n', encoding="utf-8")
    argv = ["scheduler", "-s", "7072", "-lw", "3", "--handlers", "m1,m2", "--config", str(config)]
    assert main(argv) == 0
    (settings,) = seen
    assert settings.port == 7072  # the flag beats the file
    assert settings.host == "0.0.0.0"  # the file beats the default
    assert settings.local_workers == 3
    assert settings.handlers == ("m1", "m2")
    assert settings.log_level == "debug"  # the environment fills what no flag gave


def test_scheduler_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import scheduler.main

    seen: list[Any] = []
    aws_seen: list[Any] = []

    def fake_serve(settings: Any, aws: Any = None, services: Any = ()) -> int:
        seen.append(settings)
        aws_seen.append(aws)
        return 0

    monkeypatch.setattr(scheduler.main, "serve", fake_serve)
    for name in ("STATE_DIR", "KILL_GRACE_S", "RETRY_ON", "RESULT_TTL_S"):
        monkeypatch.delenv(f"TASKMILL_{name}", raising=False)
    argv = [
        "scheduler",
        *("-lw", "4,2:10-99"),
        *("--max-queued-per-user", "50"),
        *("--state-dir", "/var/lib/tm"),
        *("--result-ttl", "30"),
        *("--result-max-age", "3600"),
        *("--retry-on", "timed_out"),
        *("--retry-backoff", "0.5"),
        *("--retry-backoff-max", "8"),
        *("--kill-grace", "1.5"),
        "-rw",
        *("--aws-endpoint-url", "http://127.0.0.1:5000"),
        *("--request-queue", "jobs"),
        *("--monitor-port", "9100"),
        *("--token-file", "/etc/taskmill/tokens"),
        *("--tls-cert", "c.pem", "--tls-key", "k.pem"),
        *("--max-connections", "10", "--read-timeout", "5"),
    ]
    assert main(argv) == 0
    (s,) = seen
    (aws,) = aws_seen
    assert s.remote is True and s.monitor_port == 9100 and s.token_file == "/etc/taskmill/tokens"
    assert (s.tls_cert, s.tls_key, s.max_connections, s.read_timeout_s) == (
        "c.pem",
        "k.pem",
        10,
        5.0,
    )
    assert (aws.aws_endpoint_url, aws.request_queue) == ("http://127.0.0.1:5000", "jobs")
    assert s.local_workers == "4,2:10-99" and [g.count for g in s.worker_groups] == [4, 2]
    assert (s.worker_groups[1].min_p, s.worker_groups[1].max_p) == (10, 99)
    assert (s.max_queued_per_user, s.state_dir) == (50, "/var/lib/tm")
    assert (s.result_ttl_s, s.result_max_age_s) == (30.0, 3600.0)
    assert (s.retry_on, s.retry_backoff_s, s.retry_backoff_max_s) == (("timed_out",), 0.5, 8.0)
    assert s.kill_grace_s == 1.5

    # Flags left out do not mask the environment.
    monkeypatch.setenv("TASKMILL_STATE_DIR", "none")
    monkeypatch.setenv("TASKMILL_KILL_GRACE_S", "7")
    assert main(["scheduler", "--retry-on", "none"]) == 0
    s = seen[-1]
    assert (s.state_dir, s.journal_path, s.kill_grace_s, s.retry_on) == ("none", None, 7.0, ())


@pytest.mark.parametrize(
    "argv",
    [
        ["scheduler", "--retry-on", "failed,sometimes"],
        ["scheduler", "--max-queued-per-user", "0"],
        ["scheduler", "--kill-grace", "-1"],
        ["scheduler", "--result-ttl", "soon"],
        ["client", "-w", "f", "--max-attempts", "0"],
        ["client", "-w", "f", "--max-attempts", "101"],
        ["submit", "-w", "f", "--timeout", "0"],
        ["results", "job", "--reconnect-timeout", "-5"],
        ["run", "-w", "f", "--result-ttl", "5"],  # a one-shot run keeps no results
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_client_flags_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(["client", "-w", "f"])
    assert (args.reconnect, args.reconnect_timeout) == (True, 60.0)
    assert (args.max_attempts, args.timeout) == (None, None)
    argv = ["client", "-w", "f", "--no-reconnect", "--reconnect-timeout", "5"]
    args = parser.parse_args([*argv, "--max-attempts", "3", "--timeout", "2.5"])
    assert (args.reconnect, args.reconnect_timeout) == (False, 5.0)
    assert (args.max_attempts, args.timeout) == (3, 2.5)
    for command in (["status", "x"], ["cancel", "x"], ["results", "x"], ["submit", "-w", "f"]):
        args = parser.parse_args([*command, "--no-reconnect"])
        assert args.reconnect is False


def test_run_flags_reach_the_embedded_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import structlog

    import scheduler.app
    from scheduler.errors import SchedulerError

    seen: list[Any] = []

    class Recording:
        def __init__(self, settings: Any) -> None:
            seen.append(settings)

        async def start(self) -> None:
            raise SchedulerError("not started in this test")

    monkeypatch.setattr(scheduler.app, "Scheduler", Recording)
    monkeypatch.delenv("TASKMILL_STATE_DIR", raising=False)
    workload = tmp_path / "w.txt"
    workload.write_text("true\n", encoding="utf-8")
    saved = structlog.get_config()
    try:
        assert main(["run", "-w", str(workload), "-lw", "1,1:5-9"]) == 2
        argv = ["run", "-w", str(workload), "--state-dir", str(tmp_path), "--retry-on", "failed"]
        assert main([*argv, "--kill-grace", "0.5", "--max-queued-per-user", "7"]) == 2
    finally:
        structlog.configure(**saved)
    assert "not started in this test" in capsys.readouterr().err
    default, given = seen
    assert default.state_dir == "none" and default.local_workers == "1,1:5-9"
    assert given.state_dir == str(tmp_path) and given.retry_on == ("failed",)
    assert (given.kill_grace_s, given.max_queued_per_user) == (0.5, 7)


def test_scheduler_command_rejects_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    for spec in ("many", "2:9-1"):
        assert main(["scheduler", "-lw", spec]) == 2
        err = capsys.readouterr().err
        assert err.startswith("taskmill: error: bad scheduler settings: ") and f"'{spec}'" in err
    assert main(["scheduler", "--config", "/nonexistent/t.toml"]) == 2
    assert "cannot read settings file" in capsys.readouterr().err


def test_client_commands_do_not_load_the_scheduler(workload: Path) -> None:
    code = (
        "import sys\n"
        "from client.cli import main\n"
        f"rc = main(['client', '-s', '127.0.0.1:1', '-w', {str(workload)!r}])\n"
        "assert rc == 2, rc\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('scheduler', 'worker'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "cannot connect to 127.0.0.1:1" in done.stderr


def test_help_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "workload-gen" in capsys.readouterr().out
    assert main([]) == 2


# --- reconnection and task defaults ---------------------------------------------------------


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def test_results_follow_survives_a_dropped_connection(
    threaded_fake: ThreadedFakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = threaded_fake.server
    path = tmp_path / "w.txt"
    path.write_text("echo x\n" * 100, encoding="utf-8")
    assert main(["submit", "-s", threaded_fake.address, "-w", str(path)]) == 0
    job = capsys.readouterr().out.strip()

    def arm() -> None:
        server.frame_size = 10
        server.drop_stream_after = 30

    threaded_fake.run_sync(arm)
    output = tmp_path / "r.jsonl"
    argv = ["results", "-s", threaded_fake.address, job, "--follow", "--output", str(output)]
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(last_line(out))["tasks"] == 100
    ids = [json.loads(line)["id"] for line in output.read_text(encoding="utf-8").splitlines()]
    assert ids == [f"{job}.{i}" for i in range(100)]
    logged = [json.loads(line) for line in err.splitlines()]
    assert [e["event"] for e in logged] == ["connection lost, reconnecting", "reconnected"]
    assert {e["level"] for e in logged} == {"warning"}
    since = threaded_fake.run_sync(lambda: [r.since for r in server.results_requests])
    assert since[0] == 0 and 10 <= since[1] <= 30


def test_no_reconnect_exits_3_on_a_dropped_connection(
    threaded_fake: ThreadedFakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w.txt"
    path.write_text("echo x\n" * 30, encoding="utf-8")
    threaded_fake.run_sync(lambda: setattr(threaded_fake.server, "frame_size", 10))
    threaded_fake.run_sync(lambda: setattr(threaded_fake.server, "drop_stream_after", 10))
    argv = ["client", "-s", threaded_fake.address, "-w", str(path), "--no-reconnect"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert (
        err == f"taskmill: error: the scheduler at {threaded_fake.address} closed the connection\n"
    )


def test_submit_resends_a_batch_whose_reply_was_lost(
    threaded_fake: ThreadedFakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w.txt"
    path.write_text("true\n" * 50, encoding="utf-8")
    threaded_fake.run_sync(lambda: threaded_fake.server.drop_after_submits.add(1))
    argv = ["submit", "-s", threaded_fake.address, "-w", str(path), "--batch-size", "20"]
    assert main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tasks"] == 50
    ids = threaded_fake.run_sync(lambda: list(threaded_fake.server.jobs[printed["job"]].ids))
    assert ids == [f"{printed['job']}.{i}" for i in range(50)]


def test_client_gives_up_after_the_reconnect_timeout(
    threaded_fake: ThreadedFakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w.txt"
    path.write_text("hold\n", encoding="utf-8")
    server = threaded_fake.server

    def stop_once_waiting() -> None:
        wait_for(lambda: threaded_fake.run_sync(lambda: server.results_requests), "the stream")
        threaded_fake.stop()

    stopper = threading.Thread(target=stop_once_waiting)
    stopper.start()
    try:
        argv = ["client", "-s", threaded_fake.address, "-w", str(path)]
        assert main([*argv, "--reconnect-timeout", "0.3"]) == 3
    finally:
        stopper.join()
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"taskmill: error: lost the connection to {threaded_fake.address} (")
    assert "could not reconnect within 0." in err and "Connection refused" in err


def test_task_defaults_apply_to_tasks_without_their_own(
    threaded_fake: ThreadedFakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w.jsonl"
    rows = [{"cmd": "true", "id": "own", "max_attempts": 5, "timeout_s": 60}, {"cmd": "true"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    argv = ["client", "-s", threaded_fake.address, "-w", str(path)]
    assert main([*argv, "--max-attempts", "3", "--timeout", "2.5"]) == 0
    capsys.readouterr()
    tasks = threaded_fake.run_sync(lambda: [r.task for r in threaded_fake.server.tasks.values()])
    limits = {t.id: (t.max_attempts, t.timeout_s) for t in tasks}
    (other,) = set(limits) - {"own"}
    assert limits == {"own": (5, 60.0), other: (3, 2.5)}


def test_scheduler_autoscale_runs_the_autoscaler_beside_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import scheduler.main
    from provisioner.autoscaler import Autoscaler

    services_seen: list[Any] = []

    def fake_serve(settings: Any, aws: Any = None, services: Any = ()) -> int:
        services_seen.append(list(services))
        return 0

    monkeypatch.setattr(scheduler.main, "serve", fake_serve)
    for name in ("AMI", "INSTANCE_TYPE", "LAUNCH_TEMPLATE"):
        monkeypatch.delenv(f"TASKMILL_{name}", raising=False)
    assert main(["scheduler", "-rw", "--autoscale"]) == 2  # nothing to launch from
    assert "bad autoscaler settings" in capsys.readouterr().err
    monkeypatch.setenv("TASKMILL_AMI", "ami-12345678")
    monkeypatch.setenv("TASKMILL_INSTANCE_TYPE", "t3.micro")
    assert main(["scheduler", "-rw", "--autoscale"]) == 0
    [[autoscaler]] = services_seen
    assert isinstance(autoscaler, Autoscaler) and autoscaler.settings.ami == "ami-12345678"
    assert main(["scheduler"]) == 0 and services_seen[-1] == []
