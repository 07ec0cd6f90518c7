"""The ``taskmill`` CLI, called as ``main([...])`` against the fake scheduler."""

from __future__ import annotations

import json
import re
import subprocess
import sys
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

    def fake_serve(settings: Any) -> int:
        seen.append(settings)
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


def test_scheduler_command_rejects_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scheduler", "-lw", "many"]) == 2
    assert "local_workers" in capsys.readouterr().err
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
