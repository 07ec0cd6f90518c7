"""The SQS and DynamoDB formats of remote execution: pure code.

A **bundle** is one SQS message carrying several tasks (their execution wires) for
one scheduler, with the name of that scheduler's reply queue. A **reply** is one SQS
message carrying results of one bundle. Both bodies are base64 of a msgpack map,
since SQS bodies must be text.

DynamoDB items:

- tasks table, one item per bundle (key ``bundle``): the claim (``owner``,
  ``lease_until``, ``attempt``, ``state`` = ``claimed`` | ``done``), who sent it
  (``scheduler``), cancellation requests (``cancel``, a string set of task ids) and,
  once done, ``summary``: per task ``[id, state, exit_code, started, finished]``
  in one binary attribute, so monitoring costs a fraction of a write unit per task.
- workers table, one item per worker daemon (key ``worker``): ``host``, ``slots``,
  ``running``, ``last_seen``, ``state`` (``running`` | ``draining`` | ``stopped``),
  ``instance_id``, ``started``, and ``drain`` (set by the autoscaler to retire it).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from protocol.codec import pack, unpack
from protocol.errors import DecodeError, ProtocolError

BUNDLE_VERSION = 1
SQS_MAX_BODY = 256 * 1024
# base64 grows data by 4/3; keep a margin for the map around the tasks.
MAX_PACKED = (SQS_MAX_BODY * 3) // 4 - 1024

# tasks table
BUNDLE_KEY = "bundle"
STATE_CLAIMED = "claimed"
STATE_DONE = "done"
# workers table
WORKER_KEY = "worker"
WORKER_RUNNING = "running"
WORKER_DRAINING = "draining"
WORKER_STOPPED = "stopped"


class BundleError(ProtocolError):
    """An SQS message that is not a taskmill bundle or reply."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    id: str
    scheduler: str
    reply_queue: str  # queue URL
    tasks: list[dict[str, Any]]
    sent: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    bundle: str
    worker: str
    results: list[dict[str, Any]]
    final: bool  # the last reply of its bundle: the scheduler may forget the bundle


def _b64(obj: Any) -> str:
    return base64.b64encode(pack(obj)).decode("ascii")


def _unb64(body: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.b64decode(body.encode("ascii"), validate=True)
        msg = unpack(raw)
    except (binascii.Error, UnicodeEncodeError, ValueError, DecodeError) as exc:
        raise BundleError(f"not a taskmill {what}: {exc}") from exc
    if not isinstance(msg, dict) or msg.get("v") != BUNDLE_VERSION:
        raise BundleError(f"not a taskmill {what} of version {BUNDLE_VERSION}")
    return msg


def encode_bundle(bundle: Bundle) -> str:
    return _b64(
        {
            "v": BUNDLE_VERSION,
            "id": bundle.id,
            "s": bundle.scheduler,
            "r": bundle.reply_queue,
            "t": bundle.tasks,
            "at": bundle.sent,
        }
    )


def decode_bundle(body: str) -> Bundle:
    msg = _unb64(body, "bundle")
    try:
        tasks = msg["t"]
        if not isinstance(tasks, list) or not all(isinstance(t, dict) and "id" in t for t in tasks):
            raise BundleError("a bundle's tasks must be maps with an id")
        return Bundle(
            id=str(msg["id"]),
            scheduler=str(msg["s"]),
            reply_queue=str(msg["r"]),
            tasks=tasks,
            sent=float(msg.get("at") or 0.0),
        )
    except KeyError as exc:
        raise BundleError(f"a bundle is missing {exc}") from exc


def encode_reply(reply: Reply) -> str:
    return _b64(
        {
            "v": BUNDLE_VERSION,
            "b": reply.bundle,
            "w": reply.worker,
            "r": reply.results,
            "f": reply.final,
        }
    )


def decode_reply(body: str) -> Reply:
    msg = _unb64(body, "reply")
    try:
        results = msg["r"]
        if not isinstance(results, list) or not all(
            isinstance(r, dict) and "id" in r for r in results
        ):
            raise BundleError("a reply's results must be maps with an id")
        return Reply(
            bundle=str(msg["b"]), worker=str(msg["w"]), results=results, final=bool(msg["f"])
        )
    except KeyError as exc:
        raise BundleError(f"a reply is missing {exc}") from exc


def split_to_fit(
    items: list[dict[str, Any]], limit: int = MAX_PACKED
) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Split ``items`` into runs whose packed size fits one SQS body.

    Returns (runs, oversized): an item that alone exceeds the limit cannot be sent
    and is returned separately so the caller can fail it with a clear reason.
    """
    runs: list[list[dict[str, Any]]] = []
    oversized: list[dict[str, Any]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for item in items:
        n = len(pack(item))
        if n > limit:
            oversized.append(item)
            continue
        if current and size + n > limit:
            runs.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        runs.append(current)
    return runs, oversized


# --- monitoring summary in the tasks table ------------------------------------------------

SUMMARY_FIELDS = ("id", "state", "exit_code", "started", "finished")


def encode_summary(results: list[dict[str, Any]]) -> bytes:
    """Per-task outcome of a bundle, compact: one binary attribute for the whole bundle."""
    return pack([[r.get(k) for k in SUMMARY_FIELDS] for r in results])


def decode_summary(data: bytes) -> list[dict[str, Any]]:
    return [dict(zip(SUMMARY_FIELDS, row, strict=False)) for row in unpack(data)]
