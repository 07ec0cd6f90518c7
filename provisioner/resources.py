"""``taskmill init-aws``: create the queues (with a dead-letter queue) and tables, idempotently."""

from __future__ import annotations

import json
from typing import Any

import structlog

from protocol.aws import AwsClients, AwsSettings, aws_errors
from protocol.bundles import BUNDLE_KEY, WORKER_KEY

log = structlog.get_logger("taskmill.init_aws")

DLQ_RETENTION_S = 14 * 24 * 3600


async def init_aws(settings: AwsSettings, clients: AwsClients | None = None) -> dict[str, Any]:
    """Create what taskmill needs; existing resources are left as they are.

    Returns the queue URLs and table names, for the operator and for tests.
    """
    clients = clients or AwsClients(settings)
    async with clients.client("sqs") as sqs:
        with aws_errors(f"creating queue {settings.dead_letter_queue}"):
            dlq_url = (
                await sqs.create_queue(
                    QueueName=settings.dead_letter_queue,
                    Attributes={"MessageRetentionPeriod": str(DLQ_RETENTION_S)},
                )
            )["QueueUrl"]
            dlq_arn = (
                await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
            )["Attributes"]["QueueArn"]
        redrive = {
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": str(settings.max_receive_count),
        }
        with aws_errors(f"creating queue {settings.request_queue}"):
            request_url = (
                await sqs.create_queue(
                    QueueName=settings.request_queue,
                    Attributes={
                        "VisibilityTimeout": str(settings.visibility_timeout_s),
                        "ReceiveMessageWaitTimeSeconds": "20",
                        "RedrivePolicy": json.dumps(redrive),
                    },
                )
            )["QueueUrl"]
    async with clients.client("dynamodb") as ddb:
        existing: set[str] = set()
        with aws_errors("listing DynamoDB tables"):
            paginator = ddb.get_paginator("list_tables")
            async for page in paginator.paginate():
                existing.update(page.get("TableNames", []))
        for table, key in (
            (settings.tasks_table, BUNDLE_KEY),
            (settings.workers_table, WORKER_KEY),
        ):
            if table in existing:
                continue
            with aws_errors(f"creating table {table}"):
                await ddb.create_table(
                    TableName=table,
                    KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                    AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                    BillingMode="PAY_PER_REQUEST",
                )
                waiter = ddb.get_waiter("table_exists")
                await waiter.wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
            log.info("created table", table=table)
    return {
        "request_queue": request_url,
        "dead_letter_queue": dlq_url,
        "tasks_table": settings.tasks_table,
        "workers_table": settings.workers_table,
    }
