"""`init-aws` against moto on loopback: creates everything, twice without harm."""

from __future__ import annotations

import json

from protocol.aws import AwsClients, AwsSettings
from provisioner.resources import init_aws


async def test_init_aws_is_idempotent(aws_settings: AwsSettings) -> None:
    first = await init_aws(aws_settings)
    second = await init_aws(aws_settings)
    assert first == second
    clients = AwsClients(aws_settings)
    async with clients.client("sqs") as sqs:
        attrs = (
            await sqs.get_queue_attributes(QueueUrl=first["request_queue"], AttributeNames=["All"])
        )["Attributes"]
        redrive = json.loads(attrs["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"].endswith(aws_settings.dead_letter_queue)
        assert int(redrive["maxReceiveCount"]) == aws_settings.max_receive_count
        assert attrs["VisibilityTimeout"] == str(aws_settings.visibility_timeout_s)
    async with clients.client("dynamodb") as ddb:
        tables = (await ddb.list_tables())["TableNames"]
        assert aws_settings.tasks_table in tables and aws_settings.workers_table in tables
    # Every request went through the counting hook, one per HTTP request.
    assert clients.counter.requests == {"sqs.GetQueueAttributes": 1, "dynamodb.ListTables": 1}
