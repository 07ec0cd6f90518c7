"""Results to the schedulers' reply queues: few messages, few requests.

Each bundle's pending results become reply messages (:class:`protocol.bundles.Reply`)
split to fit SQS's body limit; the messages for one queue go out with SendMessageBatch,
up to 10 per request and 256 KiB per request. The caller learns, per bundle, which
results did not get through (to send again) and whether the bundle's final reply did.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import structlog

from protocol.aws import AwsError, ResourceMissing, aws_errors
from protocol.bundles import MAX_PACKED, SQS_MAX_BODY, Reply, encode_reply, split_to_fit
from protocol.model import TaskState

log = structlog.get_logger("taskmill.replies")

MAX_BATCH_ENTRIES = 10  # SQS's limit per SendMessageBatch


@dataclass(slots=True)
class Outgoing:
    """One bundle's results for its reply queue. ``final``: the bundle is complete."""

    queue_url: str
    bundle_id: str
    results: list[dict[str, Any]]
    final: bool
    failed: list[dict[str, Any]] = field(default_factory=list)  # set by send_replies
    final_delivered: bool = False  # set by send_replies


@dataclass(slots=True)
class _Message:
    outgoing: Outgoing
    results: list[dict[str, Any]]
    body: str
    final: bool


def _shrunk(result: dict[str, Any]) -> dict[str, Any]:
    """A result too large for one SQS message (a huge return value), failed instead."""
    log.warning("result too large for a reply message", id=result.get("id"))
    shrunk = dict(result, state=TaskState.FAILED.value, value=None, stdout="", stderr="")
    shrunk["error"] = f"result too large to send: over {MAX_PACKED} bytes packed"
    return shrunk


def _messages(out: Outgoing, worker_id: str) -> list[_Message]:
    runs, oversized = split_to_fit(out.results)
    if oversized:
        runs.extend([_shrunk(result)] for result in oversized)
        # The caller matches failures to results by identity: keep the shrunk copies.
        out.results = [r for run in runs for r in run]
    if not runs and out.final:
        runs = [[]]  # nothing left to say but "done": an empty final reply
    messages = []
    for i, run in enumerate(runs):
        final = out.final and i == len(runs) - 1
        body = encode_reply(Reply(bundle=out.bundle_id, worker=worker_id, results=run, final=final))
        messages.append(_Message(out, run, body, final))
    return messages


def _batches(messages: list[_Message]) -> list[list[_Message]]:
    batches: list[list[_Message]] = []
    current: list[_Message] = []
    size = 0
    for msg in messages:
        n = len(msg.body)
        if current and (len(current) == MAX_BATCH_ENTRIES or size + n > SQS_MAX_BODY):
            batches.append(current)
            current, size = [], 0
        current.append(msg)
        size += n
    if current:
        batches.append(current)
    return batches


async def _send_batch(sqs: Any, queue_url: str, batch: list[_Message]) -> None:
    """Send one batch; entries that fail put their results in their ``Outgoing.failed``."""
    entries = [{"Id": str(i), "MessageBody": m.body} for i, m in enumerate(batch)]
    try:
        with aws_errors(f"sending results to {queue_url}"):
            reply = await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    except ResourceMissing as exc:
        # The scheduler deleted its reply queue: nobody is left to read these results.
        log.error("reply queue is gone; dropping results", queue=queue_url, error=str(exc))
        for m in batch:
            m.outgoing.final_delivered |= m.final
        return
    except AwsError as exc:
        log.warning("sending results failed; will retry", queue=queue_url, error=str(exc))
        for m in batch:
            m.outgoing.failed.extend(m.results)
        return
    failed_ids = set()
    for failure in reply.get("Failed", ()):
        failed_ids.add(failure.get("Id"))
        log.warning(
            "a reply message was refused; will retry",
            queue=queue_url,
            code=failure.get("Code"),
            error=failure.get("Message"),
        )
    for i, m in enumerate(batch):
        if str(i) in failed_ids:
            m.outgoing.failed.extend(m.results)
        else:
            m.outgoing.final_delivered |= m.final


async def send_replies(sqs: Any, worker_id: str, outgoing: list[Outgoing]) -> None:
    """Send every ``Outgoing``; afterwards each one's ``failed`` and ``final_delivered``
    tell what to send again. Queues are served concurrently."""
    by_queue: dict[str, list[_Message]] = {}
    for out in outgoing:
        out.failed = []
        out.final_delivered = False
        by_queue.setdefault(out.queue_url, []).extend(_messages(out, worker_id))
    await asyncio.gather(
        *(
            _send_batch(sqs, queue_url, batch)
            for queue_url, messages in by_queue.items()
            for batch in _batches(messages)
        )
    )
