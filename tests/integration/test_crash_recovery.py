"""SIGKILL the scheduler mid-run, restart it on the same state dir: nothing lost or repeated."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from client.client import Client
from tests.conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_scheduler(port: int, state_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client.cli",
            "scheduler",
            "-s",
            str(port),
            "-lw",
            "2",
            "--log-format",
            "json",
        ],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "TASKMILL_STATE_DIR": str(state_dir)},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        if time.monotonic() > deadline:
            break
        try:
            if json.loads(line).get("event") == "scheduler listening":
                return proc
        except json.JSONDecodeError:
            continue
    proc.kill()
    raise AssertionError(f"scheduler did not start (exit {proc.wait()})")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


async def test_sigkill_mid_run_then_restart(tmp_path: Path) -> None:
    port, state = free_port(), tmp_path / "state"
    procs = [start_scheduler(port, state)]
    try:
        async with Client("127.0.0.1", port, reconnect=True, reconnect_timeout_s=60) as client:
            tasks = [{"cmd": "sleep 0.001", "max_attempts": 2} for _ in range(2000)]
            submission = await client.submit(tasks, batch_size=500)
            seen: Counter[str] = Counter()
            killed = False
            async for result in client.results(submission.job):
                seen[result.id] += 1
                if not killed and len(seen) >= 400:
                    procs[0].send_signal(signal.SIGKILL)
                    procs[0].wait()
                    killed = True
                    procs.append(await asyncio.to_thread(start_scheduler, port, state))
        assert killed
        assert set(seen) == set(submission.ids)  # none lost
        assert set(seen.values()) == {1}  # none reported twice
        async with Client("127.0.0.1", port) as check:
            status = await check.status(submission.job)
        assert status["total"] == 2000 and status["finished"] == 2000
        assert status["counts"]["succeeded"] == 2000
    finally:
        for proc in procs:
            stop(proc)
