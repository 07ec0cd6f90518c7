"""Fixtures of the worker daemon tests: open SQS/DynamoDB clients on moto and a reply queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from protocol.aws import AwsClients, AwsSettings


@dataclass
class Aws:
    settings: AwsSettings
    sqs: Any
    ddb: Any
    request_url: str
    dlq_url: str
    reply_url: str


@pytest.fixture
async def aws(aws_settings: AwsSettings, aws_resources: dict[str, Any]) -> AsyncIterator[Aws]:
    clients = AwsClients(aws_settings)
    async with clients.client("sqs") as sqs, clients.client("dynamodb") as ddb:
        reply = await sqs.create_queue(QueueName=aws_settings.reply_queue_prefix + "test")
        yield Aws(
            settings=aws_settings,
            sqs=sqs,
            ddb=ddb,
            request_url=aws_resources["request_queue"],
            dlq_url=aws_resources["dead_letter_queue"],
            reply_url=reply["QueueUrl"],
        )
