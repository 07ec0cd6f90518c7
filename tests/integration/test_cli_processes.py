"""The daemon and the client as separate real processes, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, TEST_HANDLERS
from tests.procs import TASKMILL, Daemon, start_scheduler


@pytest.fixture
def scheduler_proc(tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    env = {**os.environ, "TASKMILL_STATE_DIR": str(tmp_path / "state")}
    daemon, port = start_scheduler("-s", "0", "-lw", "2", "--handlers", TEST_HANDLERS, env=env)
    try:
        yield daemon, port
    finally:
        daemon.stop()


def test_client_process_against_scheduler_process(
    scheduler_proc: tuple[Daemon, int], tmp_path: Path
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
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) == 0


def test_client_reports_bad_workload_and_unreachable_scheduler(
    scheduler_proc: tuple[Daemon, int], tmp_path: Path
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
