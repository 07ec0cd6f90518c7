"""Run the scheduler daemon until SIGINT/SIGTERM: the handlers only set an event."""

from __future__ import annotations

import asyncio
import signal

import structlog
import uvloop

from protocol.aws import AwsSettings
from protocol.logs import configure_logging
from scheduler.app import Scheduler
from scheduler.errors import SchedulerError
from scheduler.settings import SchedulerSettings

log = structlog.get_logger("taskmill.scheduler")


async def run_until_signalled(settings: SchedulerSettings, aws: AwsSettings | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    scheduler = Scheduler(settings, aws=aws)
    try:
        await scheduler.start()
    except SchedulerError as exc:
        log.error("scheduler failed to start", error=str(exc))
        return 3
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await scheduler.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def serve(settings: SchedulerSettings, aws: AwsSettings | None = None) -> int:
    """Configure logging, run on uvloop, return the process exit code."""
    configure_logging(settings.log_level, settings.log_format)
    return uvloop.run(run_until_signalled(settings, aws))
