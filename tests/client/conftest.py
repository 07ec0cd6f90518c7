"""Fixtures: the protocol-speaking fake scheduler on 127.0.0.1 port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from tests.client.fake_server import FakeScheduler, ThreadedFakeScheduler


@pytest.fixture(autouse=True)
def default_structlog() -> Iterator[None]:
    """Each test starts with structlog's defaults (the CLI configures it for the process)
    and leaves the configuration as it found it."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


@pytest.fixture
async def fake() -> AsyncIterator[FakeScheduler]:
    """A fake scheduler in the test's own event loop (for the asyncio Client)."""
    async with FakeScheduler() as server:
        yield server


@pytest.fixture
def threaded_fake() -> Iterator[ThreadedFakeScheduler]:
    """A fake scheduler on its own loop thread (for SyncClient and the CLI)."""
    with ThreadedFakeScheduler() as server:
        yield server


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
