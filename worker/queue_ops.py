"""Batched SQS housekeeping of the worker daemon: visibility changes, deletes, dead letters.

Each call sends at most 10 entries per request (SQS's batch limit). Entries SQS refuses
one by one (typically a receipt handle that is no longer current because the message
was received again elsewhere) are logged and dropped: the DynamoDB claim, not the
receipt, decides who owns a bundle.
"""

from __future__ import annotations

from typing import Any

import structlog

from protocol.aws import AwsError, aws_errors

log = structlog.get_logger("taskmill.queue")

MAX_BATCH_ENTRIES = 10


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + MAX_BATCH_ENTRIES] for i in range(0, len(items), MAX_BATCH_ENTRIES)]


def _log_failures(reply: dict[str, Any], what: str) -> None:
    for failure in reply.get("Failed", ()):
        log.warning(what, code=failure.get("Code"), error=failure.get("Message"))


async def change_visibility(sqs: Any, queue_url: str, entries: list[tuple[str, int]]) -> None:
    """Set each (receipt handle, seconds) visibility timeout. Raises AwsError."""
    for chunk in _chunks(entries):
        batch = [
            {"Id": str(i), "ReceiptHandle": receipt, "VisibilityTimeout": seconds}
            for i, (receipt, seconds) in enumerate(chunk)
        ]
        with aws_errors("changing message visibility"):
            reply = await sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=batch)
        _log_failures(reply, "a visibility change was refused")


async def delete_messages(sqs: Any, queue_url: str, receipts: list[str]) -> list[str]:
    """Delete messages; returns the receipts of requests that failed (to try again)."""
    retry: list[str] = []
    for chunk in _chunks(receipts):
        batch = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)]
        try:
            with aws_errors("deleting messages"):
                reply = await sqs.delete_message_batch(QueueUrl=queue_url, Entries=batch)
        except AwsError as exc:
            log.warning("deleting messages failed; will retry", error=str(exc))
            retry.extend(chunk)
            continue
        _log_failures(reply, "a message delete was refused")
    return retry


async def dead_letter(
    sqs: Any, *, queue_url: str, dlq_url: str, message: dict[str, Any], reason: str
) -> None:
    """Move a message that is not a bundle to the dead-letter queue. Raises AwsError."""
    attributes = {
        "taskmill-error": {"DataType": "String", "StringValue": reason[:1000] or "unknown"},
        "taskmill-message-id": {
            "DataType": "String",
            "StringValue": str(message.get("MessageId") or "unknown"),
        },
    }
    with aws_errors("sending a message to the dead-letter queue"):
        await sqs.send_message(
            QueueUrl=dlq_url,
            MessageBody=message.get("Body") or "(empty)",
            MessageAttributes=attributes,
        )
    with aws_errors("deleting a dead-lettered message"):
        await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
