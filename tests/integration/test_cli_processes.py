"""The daemon and the client as separate real processes, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, TEST_HANDLERS

TASKMILL = [sys.executable, "-m", "client.cli"]


def wait_for_listen_line(proc: subprocess.Popen[str], deadline_s: float = 60) -> int:
    """Read the daemon's JSON log until it says where it listens."""
    assert proc.stderr is not None
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"scheduler exited early with {proc.wait()}")
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "scheduler listening":
            return int(event["port"])
    raise AssertionError("scheduler did not report its port in time")


@pytest.fixture
def scheduler_proc(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(
        [
            *TASKMILL,
            "scheduler",
            "-s",
            "0",
            "-lw",
            "2",
            "--handlers",
            TEST_HANDLERS,
            "--log-format",
            "json",
        ],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "TASKMILL_STATE_DIR": str(tmp_path / "state"),
        },
    )
    try:
        yield proc, wait_for_listen_line(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_client_process_against_scheduler_process(
    scheduler_proc: tuple[subprocess.Popen[str], int], tmp_path: Path
) -> None:
    proc, port = scheduler_proc
    workload = tmp_path / "jobs.txt"
    workload.write_text("# a comment\n\n" + "sleep 0\n" * 300 + "sh -c 'exit 4'\n")
    out = tmp_path / "results.jsonl"
    done = subprocess.run(
        [
            *TASKMILL,
            "client",
            "-s",
            f"127.0.0.1:{port}",
            "-w",
            str(workload),
            "--json",
            "--output",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr  # one task failed
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["tasks"] == 301 and summary["succeeded"] == 300 and summary["failed"] == 1
    assert summary["throughput"] > 0 and summary["elapsed_s"] > 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 301 and len({r["id"] for r in rows}) == 301
    [failed] = [r for r in rows if r["state"] != "succeeded"]
    assert failed["exit_code"] == 4 and failed["worker"].startswith("local-")

    # SIGTERM: the daemon shuts down in order and exits 0.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_client_reports_bad_workload_and_unreachable_scheduler(
    scheduler_proc: tuple[subprocess.Popen[str], int], tmp_path: Path
) -> None:
    _, port = scheduler_proc
    broken = tmp_path / "bad.jsonl"
    broken.write_text('{"cmd": "true"}\n{"cmd": "true", "priority": "high"}\n')
    done = subprocess.run(
        [*TASKMILL, "client", "-s", f"127.0.0.1:{port}", "-w", str(broken)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "line 2" in done.stderr and "priority" in done.stderr

    missing = subprocess.run(
        [*TASKMILL, "client", "-s", f"127.0.0.1:{port}", "-w", str(tmp_path / "nope.txt")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "nope.txt" in missing.stderr

    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"fn": "not_registered"}\n')
    rejected = subprocess.run(
        [*TASKMILL, "client", "-s", f"127.0.0.1:{port}", "-w", str(unknown)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rejected.returncode == 2
    assert "unknown_handler" in rejected.stderr and "not_registered" in rejected.stderr
