"""Fixtures for the provisioner tests: an AMI moto knows, a fleet name per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import structlog

from protocol.aws import AwsClients, AwsSettings


async def _first_image(endpoint: str) -> str:
    clients = AwsClients(AwsSettings(aws_endpoint_url=endpoint))
    async with clients.client("ec2") as ec2:
        images = (await ec2.describe_images(Owners=["amazon"]))["Images"]
    return str(sorted(i["ImageId"] for i in images)[0])


@pytest.fixture(scope="session")
def worker_ami(moto_endpoint: str) -> str:
    """An image id from moto's own catalogue: RunInstances refuses unknown ones."""
    return asyncio.run(_first_image(moto_endpoint))


@pytest.fixture
def fleet_name() -> str:
    """moto's EC2 is shared by the whole session: each test manages its own fleet."""
    return "f" + uuid.uuid4().hex[:10]


@pytest.fixture(autouse=True)
def default_structlog() -> Iterator[None]:
    """The CLI configures structlog for the process: put it back after each test."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
