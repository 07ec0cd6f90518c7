"""Fault: the state dir's disk fills up (a file-size limit on the scheduler process).

Every batch the scheduler acknowledged still finishes; a batch it could not journal
is refused with an error naming the cause; the scheduler keeps serving and says
what is wrong in its health report.
"""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

from client.client import Client
from protocol.errors import RemoteError
from tests.procs import start_scheduler

LIMIT_BYTES = 256 * 1024


def limit_file_size() -> None:
    # A write past the limit fails with EFBIG (SIGXFSZ ignored): a full disk, as SQLite sees it.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


async def test_full_disk_refuses_new_work_and_loses_nothing_accepted(tmp_path: Path) -> None:
    env = {**os.environ, "TASKMILL_STATE_DIR": str(tmp_path / "state")}
    daemon, port = start_scheduler("-s", "0", "-lw", "2", env=env, preexec_fn=limit_file_size)
    accepted: list[str] = []
    refusal: RemoteError | None = None
    try:
        async with Client("127.0.0.1", port, reconnect=False) as client:
            for batch in range(200):
                tasks = [{"cmd": "true", "id": f"b{batch}.{i}"} for i in range(100)]
                try:
                    sub = await client.submit(tasks, job=f"job{batch}")
                except RemoteError as exc:
                    refusal = exc
                    break
                accepted.append(sub.job)
                async for _ in client.results(sub.job):
                    pass
            assert refusal is not None, "the file-size limit was never reached"
            assert "journal could not store" in str(refusal) and "not accepted" in str(refusal)
            # Everything acknowledged before the disk filled up finished.
            for job in accepted:
                status = await client.status(job)
                assert status["done"] and status["counts"]["succeeded"] == 100, status
            stats = await client.stats()
            assert any("journal cannot be written" in p for p in stats["health"])
            assert await client.ping() > 0  # still serving
        assert daemon.proc.poll() is None
    finally:
        daemon.stop()
    assert accepted, "not a single batch was accepted"
