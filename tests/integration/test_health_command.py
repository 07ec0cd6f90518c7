"""`taskmill health`: each warning, and a healthy answer, over a real connection."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from client.cli import main
from client.client import Client
from protocol.aws import AwsSettings
from provisioner.resources import init_aws
from tests.conftest import SchedulerFactory


async def health(port: int, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, ["health", "-s", f"127.0.0.1:{port}", "--no-reconnect"])
    out, err = capsys.readouterr()
    return code, out, err


async def until_unhealthy(port: int, capsys: pytest.CaptureFixture[str]) -> str:
    deadline = time.monotonic() + 60
    while True:
        code, _, err = await health(port, capsys)
        if code == 1:
            return err
        assert time.monotonic() < deadline, "never reported unhealthy"
        await asyncio.sleep(0.2)  # polling with a deadline


async def test_healthy(
    start_scheduler: SchedulerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    sched = await start_scheduler(local_workers=2)
    code, out, err = await health(sched.port, capsys)
    assert code == 0 and out.splitlines()[-1].startswith("healthy: 2 workers")
    assert "WARNING" not in err


async def test_warns_when_there_are_no_workers(
    start_scheduler: SchedulerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    sched = await start_scheduler(local_workers=0)
    code, _, err = await health(sched.port, capsys)
    assert code == 1 and "WARNING: the scheduler has no workers" in err


async def test_warns_when_the_queue_is_stuck(
    start_scheduler: SchedulerFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sched = await start_scheduler(local_workers=1, stuck_after_s=0.5)
    flag = tmp_path / "go"
    async with Client("127.0.0.1", sched.port) as client:
        sub = await client.submit(
            [{"cmd": f"sh -c 'while [ ! -e {flag} ]; do sleep 0.01; done'"}, {"cmd": "true"}]
        )
        err = await until_unhealthy(sched.port, capsys)
        assert "WARNING: the queue is stuck: 1 tasks queued" in err
        flag.touch()
        async for _ in client.results(sub.job):
            pass


async def test_warns_when_aws_is_unreachable(
    start_scheduler: SchedulerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    aws = AwsSettings(aws_endpoint_url=f"http://{host}:{port}", max_aws_attempts=1)
    try:
        await init_aws(aws)
        sched = await start_scheduler(local_workers=1, remote=True, aws=aws, reply_wait_s=1)
    finally:
        server.stop()
    err = await until_unhealthy(sched.port, capsys)
    assert "WARNING: AWS is unreachable" in err
