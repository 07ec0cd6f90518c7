"""Bundles that SQS moved to the dead-letter queue: take back this scheduler's own.

A bundle lands there after ``max_receive_count`` deliveries that never finished it
(workers kept dying on it, or kept handing it back). Without this sweep its tasks
would stay "running" for ever; with it they are retried or failed with a reason.
Other schedulers' bundles and garbage are left where they are, for their owners and
for the operator.
"""

from __future__ import annotations

from typing import Any

import structlog

from protocol.aws import aws_errors
from protocol.bundles import Bundle, BundleError, decode_bundle

log = structlog.get_logger("taskmill.dead_letters")

MAX_RECEIVES_PER_SWEEP = 10  # x 10 messages: a sweep reads at most 100


async def sweep(sqs: Any, dlq_url: str, scheduler_id: str) -> list[Bundle]:
    """Remove and return the dead-lettered bundles that belong to ``scheduler_id``."""
    ours: list[Bundle] = []
    for _ in range(MAX_RECEIVES_PER_SWEEP):
        with aws_errors("reading the dead-letter queue"):
            reply = await sqs.receive_message(
                QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
        messages = reply.get("Messages", [])
        if not messages:
            break
        mine = []
        for message in messages:
            try:
                bundle = decode_bundle(message["Body"])
            except BundleError:
                continue  # not a bundle: the operator's to look at
            if bundle.scheduler == scheduler_id:
                ours.append(bundle)
                mine.append(message)
        if mine:
            with aws_errors("deleting from the dead-letter queue"):
                await sqs.delete_message_batch(
                    QueueUrl=dlq_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(mine)
                    ],
                )
        if len(messages) < 10:
            break
    if ours:
        log.warning("took back dead-lettered bundles", bundles=[b.id for b in ours])
    return ours
