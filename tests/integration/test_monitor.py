"""The web monitor's JSON endpoints, /metrics and /healthz over real HTTP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from client.client import Client
from protocol.aws import AwsSettings
from provisioner.resources import init_aws
from tests.conftest import SchedulerFactory


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def poll_until(url: str, predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await get(url)
        if predicate(status, body):
            return status, body
        assert time.monotonic() < deadline, f"{url} never matched; last: {status} {body}"
        await asyncio.sleep(0.1)  # polling with a deadline


async def test_json_endpoints_and_metrics(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=2)
    assert sched.monitor is not None
    base = f"http://127.0.0.1:{sched.monitor.port}"
    async with Client("127.0.0.1", sched.port) as client:
        results = await client.run(
            [{"cmd": "true"}] * 30 + [{"cmd": "false"}] * 2 + [{"fn": "add", "args": [1, 2]}],
            user="ann",
        )
    job = results[0].job

    status, stats = await get(f"{base}/api/stats")
    assert status == 200
    assert stats["finished"] == 33 and stats["by_state"]["failed"] == 2
    assert stats["queued"] == 0 and stats["health"] == []
    assert len(stats["recent"]) == 33 and {r["state"] for r in stats["recent"]} == {
        "succeeded",
        "failed",
    }

    status, workers = await get(f"{base}/api/workers")
    assert status == 200 and sorted(w["id"] for w in workers["workers"]) == ["local-1", "local-2"]
    assert all(w["kind"] == "local" and w["slots"] == 1 for w in workers["workers"])

    status, detail = await get(f"{base}/api/jobs/{job}")
    assert status == 200 and detail["total"] == 33 and len(detail["tasks"]) == 33
    assert sum(1 for t in detail["tasks"] if t["exit_code"] == 1) == 2
    assert (await get(f"{base}/api/jobs/nope"))[0] == 404

    status, metrics = await get(f"{base}/metrics")
    assert status == 200
    assert 'taskmill_tasks_finished_total{state="succeeded"} 31.0' in metrics
    assert 'taskmill_tasks_finished_total{state="failed"} 2.0' in metrics
    assert "taskmill_task_duration_seconds_count 33.0" in metrics
    assert 'taskmill_workers{kind="local"} 2.0' in metrics
    assert "taskmill_queue_depth 0.0" in metrics

    status, page = await get(f"{base}/")
    assert status == 200 and 'id="workers"' in page
    assert (await get(f"{base}/healthz")) == (200, {"ok": True, "problems": []})


async def test_cancel_from_the_job_page_api(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=0)
    assert sched.monitor is not None
    async with Client("127.0.0.1", sched.port) as client:
        sub = await client.submit([{"cmd": "true"}] * 5)
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{sched.monitor.port}/api/jobs/{sub.job}/cancel"
            async with http.post(url) as response:
                assert response.status == 200
                assert await response.json() == {"cancelled": 5, "cancelling": 0}
        states = {r.state.value for r in [r async for r in client.results(sub.job)]}
    assert states == {"cancelled"}


async def test_healthz_no_workers(start_scheduler: SchedulerFactory) -> None:
    sched = await start_scheduler(local_workers=0)
    assert sched.monitor is not None
    status, body = await get(f"http://127.0.0.1:{sched.monitor.port}/healthz")
    assert status == 503 and body["ok"] is False
    assert any("no workers" in p for p in body["problems"])


async def test_healthz_stuck_queue(start_scheduler: SchedulerFactory, tmp_path: Path) -> None:
    sched = await start_scheduler(local_workers=1, stuck_after_s=0.5)
    assert sched.monitor is not None
    flag = tmp_path / "go"
    async with Client("127.0.0.1", sched.port) as client:
        sub = await client.submit(
            [{"cmd": f"sh -c 'while [ ! -e {flag} ]; do sleep 0.01; done'"}, {"cmd": "true"}]
        )
        url = f"http://127.0.0.1:{sched.monitor.port}/healthz"
        _, body = await poll_until(url, lambda s, b: s == 503)
        assert any("stuck" in p and "1 tasks queued" in p for p in body["problems"])
        flag.touch()
        async for _ in client.results(sub.job):
            pass
        await poll_until(url, lambda s, b: s == 200)


async def test_healthz_aws_unreachable(start_scheduler: SchedulerFactory) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    aws = AwsSettings(aws_endpoint_url=f"http://{host}:{port}", max_aws_attempts=1)
    try:
        await init_aws(aws)
        sched = await start_scheduler(local_workers=1, remote=True, aws=aws, reply_wait_s=1)
    finally:
        server.stop()  # AWS goes away while the scheduler runs
    assert sched.monitor is not None and sched.remote is not None
    url = f"http://127.0.0.1:{sched.monitor.port}/healthz"
    _, body = await poll_until(url, lambda s, b: s == 503, timeout=60)
    assert any("AWS is unreachable" in p for p in body["problems"])


@pytest.mark.parametrize("port", [-1])
async def test_monitor_can_be_turned_off(start_scheduler: SchedulerFactory, port: int) -> None:
    sched = await start_scheduler(local_workers=0, monitor_port=port)
    assert sched.monitor is None
    async with Client("127.0.0.1", sched.port) as client:
        assert (await client.stats())["monitor"] is None
