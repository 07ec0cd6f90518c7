"""Shared fixtures: a real scheduler on 127.0.0.1 port 0, in the test's event loop."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.aws import AwsSettings
from provisioner.resources import init_aws
from scheduler.app import Scheduler
from scheduler.settings import SchedulerSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_HANDLERS = "tests.integration.handlers"

# Worker subprocesses import handler modules by name from the repository root.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
)

SchedulerFactory = Callable[..., Coroutine[Any, Any, Scheduler]]

# Moto on loopback stands in for AWS; these are its dummy credentials, never real ones.
for _key, _value in (
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_SESSION_TOKEN", "testing"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
):
    os.environ[_key] = _value
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server in server mode on a free loopback port, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_settings(moto_endpoint: str) -> AwsSettings:
    """Unique resource names per test, so tests never see each other's queues."""
    prefix = "t" + uuid.uuid4().hex[:10]
    return AwsSettings(
        aws_endpoint_url=moto_endpoint,
        request_queue=f"{prefix}-requests",
        dead_letter_queue=f"{prefix}-dlq",
        reply_queue_prefix=f"{prefix}-replies-",
        tasks_table=f"{prefix}-tasks",
        workers_table=f"{prefix}-workers",
        visibility_timeout_s=30,
        lease_s=30,
    )


@pytest.fixture
async def aws_resources(aws_settings: AwsSettings) -> dict[str, Any]:
    """``taskmill init-aws`` run against moto for this test's resource names."""
    return await init_aws(aws_settings)


def aws_env(settings: AwsSettings) -> dict[str, str]:
    """The environment that points a subprocess (scheduler, worker) at these resources."""
    env = {
        "TASKMILL_AWS_ENDPOINT_URL": settings.aws_endpoint_url or "",
        "TASKMILL_AWS_REGION": settings.aws_region,
        "TASKMILL_REQUEST_QUEUE": settings.request_queue,
        "TASKMILL_DEAD_LETTER_QUEUE": settings.dead_letter_queue,
        "TASKMILL_REPLY_QUEUE_PREFIX": settings.reply_queue_prefix,
        "TASKMILL_TASKS_TABLE": settings.tasks_table,
        "TASKMILL_WORKERS_TABLE": settings.workers_table,
        "TASKMILL_VISIBILITY_TIMEOUT_S": str(settings.visibility_timeout_s),
        "TASKMILL_LEASE_S": str(settings.lease_s),
    }
    return {**os.environ, **env}


@pytest.fixture
async def start_scheduler() -> AsyncIterator[SchedulerFactory]:
    """Start schedulers with given settings; every one is closed at teardown."""
    started: list[Scheduler] = []

    async def factory(*, aws: AwsSettings | None = None, **overrides: Any) -> Scheduler:
        settings = SchedulerSettings(
            **{
                "host": "127.0.0.1",
                "port": 0,
                "local_workers": 2,
                "monitor_port": 0,
                "state_dir": "none",
                "handlers": (TEST_HANDLERS,),
                **overrides,
            }
        )
        sched = Scheduler(settings, aws=aws)
        started.append(sched)
        await sched.start()
        return sched

    yield factory
    for sched in reversed(started):
        await sched.close()
