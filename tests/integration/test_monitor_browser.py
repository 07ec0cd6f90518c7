"""The monitor page in headless Chromium: the rendered DOM shows live counts and workers."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from client.client import Client
from tests.conftest import SchedulerFactory

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed by the suite when missing (the machine starts without it)."""
    path = shutil.which("chromium")
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"cannot install chromium: {' '.join(cmd)} failed: {done.stderr[-500:]}")
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("apt-get installed chromium but it is not on PATH")
    return path


async def run_chromium(chromium: str, profile: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}"
    return out.decode()


async def test_monitor_page_renders_live_counts(
    start_scheduler: SchedulerFactory, chromium: str, tmp_path: Path
) -> None:
    sched = await start_scheduler(local_workers=2)
    assert sched.monitor is not None
    flag = tmp_path / "go"
    url = f"http://127.0.0.1:{sched.monitor.port}/"
    async with Client("127.0.0.1", sched.port) as client:
        await client.run([{"cmd": "true"} for _ in range(25)])
        # Two workers busy, three tasks waiting: the page must show them live.
        gate = f"sh -c 'while [ ! -e {flag} ]; do sleep 0.01; done'"
        sub = await client.submit([{"cmd": gate}] * 5)
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while sched.table.running_total < 2:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)  # polling with a deadline
            dom = await run_chromium(
                chromium, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", url
            )
            shot = tmp_path / "monitor.png"
            await run_chromium(
                chromium,
                tmp_path / "profile2",
                "--virtual-time-budget=5000",
                "--window-size=1280,900",
                f"--screenshot={shot}",
                url,
            )
        finally:
            flag.touch()
        async for _ in client.results(sub.job):
            pass

    def text_of(element_id: str) -> str:
        match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
        assert match, f"#{element_id} not in the rendered page"
        return match.group(1)

    assert text_of("finished") == "25"
    assert text_of("running") == "2"
    assert text_of("queued") == "3"
    assert dom.count('<tr class="worker-row"><td>local-') == 2
    assert "healthy" in text_of("health")
    assert shot.exists() and shot.stat().st_size > 10_000
