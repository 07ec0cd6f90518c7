"""Helpers of the worker daemon tests: bundles in, replies out, daemons as subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from protocol.aws import AwsSettings
from protocol.bundles import Bundle, Reply, decode_reply, decode_summary, encode_bundle
from tests.conftest import REPO_ROOT, aws_env

TASKMILL = [sys.executable, "-m", "client.cli"]
TEST_HANDLERS = "tests.integration.handlers"
FAST = {
    "TASKMILL_RECEIVE_WAIT_S": "1",
    "TASKMILL_FLEET_HEARTBEAT_S": "0.5",
    "TASKMILL_LOG_FORMAT": "json",
}


def shell(task_id: str, cmd: str) -> dict[str, Any]:
    return {"id": task_id, "kind": "shell", "cmd": cmd, "timeout_s": None, "attempt": 1}


def call(task_id: str, fn: str, *args: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "kind": "call",
        "fn": fn,
        "args": list(args),
        "kwargs": {},
        "timeout_s": None,
        "attempt": 1,
    }


def marking(task_id: str, marks: Path, then: str = "true") -> dict[str, Any]:
    """A shell task that appends a line to ``marks/task_id`` each time it runs."""
    return shell(task_id, f"echo ran >> {marks / task_id}; {then}")


def runs(marks: Path, task_id: str) -> int:
    path = marks / task_id
    return len(path.read_text().splitlines()) if path.exists() else 0


async def eventually(
    predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition"
) -> Any:
    """Await ``predicate()`` (sync or async) until truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def send_bundles(sqs: Any, request_url: str, bundles: Iterable[Bundle]) -> None:
    entries = [{"Id": str(i), "MessageBody": encode_bundle(b)} for i, b in enumerate(bundles)]
    for start in range(0, len(entries), 10):
        reply = await sqs.send_message_batch(QueueUrl=request_url, Entries=entries[start:][:10])
        assert not reply.get("Failed"), reply


class ReplyReader:
    """Reads (and deletes) every reply from one reply queue."""

    def __init__(self, sqs: Any, url: str) -> None:
        self.sqs = sqs
        self.url = url
        self.replies: list[Reply] = []

    @property
    def results(self) -> list[dict[str, Any]]:
        return [r for reply in self.replies for r in reply.results]

    def by_id(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for result in self.results:
            out.setdefault(result["id"], []).append(result)
        return out

    def finals(self) -> set[str]:
        return {r.bundle for r in self.replies if r.final}

    async def poll(self) -> None:
        got = await self.sqs.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        messages = got.get("Messages") or []
        for m in messages:
            self.replies.append(decode_reply(m["Body"]))
        if messages:
            await self.sqs.delete_message_batch(
                QueueUrl=self.url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )

    async def until(
        self, predicate: Callable[[ReplyReader], bool], timeout_s: float = 30.0, what: str = ""
    ) -> None:
        async def check() -> bool:
            await self.poll()
            return predicate(self)

        await eventually(check, timeout_s, what or "replies")


async def queue_depth(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    attrs = (
        await sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
    )


async def bundle_item(ddb: Any, table: str, bundle_id: str) -> dict[str, Any]:
    got = await ddb.get_item(TableName=table, Key={"bundle": {"S": bundle_id}}, ConsistentRead=True)
    item: dict[str, Any] = got.get("Item") or {}
    return item


def summary_of(item: dict[str, Any]) -> list[dict[str, Any]]:
    return decode_summary(item["summary"]["B"]) if "summary" in item else []


async def worker_item(ddb: Any, table: str, worker_id: str) -> dict[str, Any]:
    got = await ddb.get_item(TableName=table, Key={"worker": {"S": worker_id}}, ConsistentRead=True)
    item: dict[str, Any] = got.get("Item") or {}
    return item


class WorkerProcess:
    """``taskmill worker`` as a subprocess; its JSON log lines are collected by a thread."""

    def __init__(
        self,
        settings: AwsSettings,
        *args: str,
        env: dict[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.worker_id = f"w-{os.urandom(3).hex()}"
        self.proc = subprocess.Popen(
            [*TASKMILL, "worker", "--worker-id", self.worker_id, *args],
            cwd=REPO_ROOT,
            env={**aws_env(settings), **FAST, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,  # its own process group, as under a service manager
        )
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                self.events.append(event)

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("event") == name), None)

    async def wait_event(self, name: str, timeout_s: float = 30.0) -> dict[str, Any]:
        try:
            event: dict[str, Any] = await eventually(
                lambda: self.event(name), timeout_s, f"log event {name!r}"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnosis()}") from None
        return event

    async def wait_exit(self, timeout_s: float = 30.0) -> int:
        try:
            await eventually(lambda: self.proc.poll() is not None, timeout_s, "the worker to exit")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnosis()}") from None
        self._reader.join(5)
        return self.proc.returncode

    def diagnosis(self) -> str:
        tail = "".join(self.lines[-30:])
        return f"worker {self.worker_id}: exit code {self.proc.poll()}; last log lines:\n{tail}"

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def log_text(self) -> str:
        return "".join(self.lines)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
