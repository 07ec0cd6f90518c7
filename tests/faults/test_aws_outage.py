"""Fault: AWS goes away mid-run and comes back. Every task still finishes exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections import Counter
from typing import Any
from urllib.parse import urlparse

from client.client import Client
from protocol.aws import AwsSettings
from tests.conftest import SchedulerFactory
from tests.faults.tcp_proxy import OutageProxy
from tests.worker.remote_util import WorkerProcess


async def test_outage_mid_run(
    start_scheduler: SchedulerFactory, aws_settings: AwsSettings, aws_resources: dict[str, Any]
) -> None:
    moto = urlparse(aws_settings.aws_endpoint_url or "")
    proxy = OutageProxy(moto.hostname or "127.0.0.1", moto.port or 80)
    await proxy.start()
    via_proxy = dataclasses.replace(aws_settings, aws_endpoint_url=proxy.url, max_aws_attempts=2)
    worker = WorkerProcess(via_proxy, "-t", "2")
    try:
        await worker.wait_event("worker started")
        sched = await start_scheduler(local_workers=0, remote=True, aws=via_proxy, reply_wait_s=1)
        async with Client("127.0.0.1", sched.port) as client:
            tasks = [{"cmd": f"sh -c 'sleep 0.01; echo {i}'", "id": f"t{i}"} for i in range(200)]
            sub = await client.submit(tasks)
            seen: Counter[str] = Counter()
            outage_done = False
            async for result in client.results(sub.job):
                seen[result.id] += 1
                if not outage_done and len(seen) >= 20:
                    proxy.cut()  # AWS is unreachable for both sides
                    remote = sched.remote
                    assert remote is not None
                    deadline = asyncio.get_running_loop().time() + 30
                    while remote.aws_error is None:  # until the scheduler has felt it
                        assert asyncio.get_running_loop().time() < deadline
                        await asyncio.sleep(0.05)  # polling with a deadline
                    proxy.restore()
                    outage_done = True
        assert outage_done
        assert set(seen) == set(sub.ids) and set(seen.values()) == {1}
    finally:
        worker.signal(signal.SIGTERM)
        await worker.wait_exit(60)
        worker.cleanup()
        await proxy.close()
