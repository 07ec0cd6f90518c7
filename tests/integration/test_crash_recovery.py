"""SIGKILL the scheduler mid-run, restart it on the same state dir: nothing lost or repeated."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections import Counter
from pathlib import Path

from client.client import Client
from tests.procs import Daemon, start_scheduler


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(port: int, state_dir: Path) -> Daemon:
    env = {**os.environ, "TASKMILL_STATE_DIR": str(state_dir)}
    return start_scheduler("-s", str(port), "-lw", "2", env=env)[0]


async def test_sigkill_mid_run_then_restart(tmp_path: Path) -> None:
    port, state = free_port(), tmp_path / "state"
    procs = [start(port, state)]
    try:
        async with Client("127.0.0.1", port, reconnect=True, reconnect_timeout_s=60) as client:
            tasks = [{"cmd": "sleep 0.001", "max_attempts": 2} for _ in range(2000)]
            submission = await client.submit(tasks, batch_size=500)
            seen: Counter[str] = Counter()
            killed = False
            async for result in client.results(submission.job):
                seen[result.id] += 1
                if not killed and len(seen) >= 400:
                    procs[0].proc.send_signal(signal.SIGKILL)
                    procs[0].proc.wait()
                    killed = True
                    procs.append(await asyncio.to_thread(start, port, state))
        assert killed
        assert set(seen) == set(submission.ids)  # none lost
        assert set(seen.values()) == {1}  # none reported twice
        async with Client("127.0.0.1", port) as check:
            status = await check.status(submission.job)
        assert status["total"] == 2000 and status["finished"] == 2000
        assert status["counts"]["succeeded"] == 2000
    finally:
        for proc in procs:
            proc.stop()
