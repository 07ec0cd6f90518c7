"""Claims, leases and the monitoring summary of bundles in the DynamoDB tasks table.

One item per bundle, key ``bundle`` (see :mod:`protocol.bundles`). Every write here is a
single conditional ``UpdateItem``, so two workers can never both believe they own a
bundle:

- **claim**: succeeds when the item has no ``state`` (it does not exist, or holds only a
  ``cancel`` set the scheduler wrote early), or it is ``claimed`` under a lease
  that has run out (its owner died, or released it with ``lease_until = 0``). It sets
  ``owner``, ``lease_until``, ``state = claimed``, ``scheduler``, ``claimed_at`` and adds 1
  to ``attempt``; the new item tells the claimant which tasks an earlier owner already
  reported (``done_ids``, with their summary rows in ``partial``) and which the scheduler
  wants cancelled (``cancel``). When the claim fails, the old item says why: ``done``, or
  held by someone else until ``lease_until``.
- **extend** (the heartbeat) and **release**: ``owner = me AND attempt = mine``; they move
  ``lease_until`` (to 0 on release) and record the tasks reported since the last write.
  A failed condition means the lease was lost.
- **finish**: the same condition; ``state = done``, the bundle's ``summary`` (every task's
  id, state, exit code and times in one binary attribute), ``finished_at``; the claim's
  bookkeeping (``done_ids``, ``partial``) is removed.

Times are wall-clock seconds: workers' clocks must agree to well under a lease (NTP does).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions

from protocol.aws import aws_errors, translate
from protocol.bundles import (
    BUNDLE_KEY,
    STATE_CLAIMED,
    STATE_DONE,
    SUMMARY_FIELDS,
    decode_summary,
    encode_summary,
)

_CONDITION_FAILED = "ConditionalCheckFailedException"

# Every attribute goes through a placeholder: several of these names are reserved words.
_NAMES = {
    "#owner": "owner",
    "#lease": "lease_until",
    "#state": "state",
    "#attempt": "attempt",
    "#sched": "scheduler",
    "#claimed_at": "claimed_at",
    "#done": "done_ids",
    "#partial": "partial",
    "#summary": "summary",
    "#finished_at": "finished_at",
}


def _names(*placeholders: str) -> dict[str, str]:
    return {p: _NAMES[p] for p in placeholders}


class LeaseLost(Exception):
    """The bundle's item no longer names this worker and attempt as its owner."""


@dataclass(frozen=True, slots=True)
class Claimed:
    attempt: int
    lease_until: float
    done_ids: frozenset[str]  # reported by an earlier owner: never run again
    cancel: frozenset[str]
    prior_rows: list[dict[str, Any]] = field(default_factory=list)  # their summary rows


@dataclass(frozen=True, slots=True)
class AlreadyDone:
    pass


@dataclass(frozen=True, slots=True)
class HeldElsewhere:
    owner: str
    lease_until: float


ClaimOutcome = Claimed | AlreadyDone | HeldElsewhere


def summary_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a result the monitoring summary keeps."""
    return {k: result.get(k) for k in SUMMARY_FIELDS}


# --- attribute values of the low-level client ----------------------------------------------


def _str(item: Mapping[str, Any], name: str) -> str:
    value = item.get(name)
    return str(value["S"]) if value and "S" in value else ""


def _num(item: Mapping[str, Any], name: str) -> float:
    value = item.get(name)
    return float(value["N"]) if value and "N" in value else 0.0


def _str_set(item: Mapping[str, Any], name: str) -> frozenset[str]:
    value = item.get(name)
    return frozenset(value.get("SS", ())) if value else frozenset()


def _rows(item: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    value = item.get(name)
    rows: list[dict[str, Any]] = []
    for chunk in (value or {}).get("L", ()):
        if "B" in chunk:
            rows.extend(decode_summary(chunk["B"]))
    return rows


def _value_size(value: Mapping[str, Any]) -> int:
    """DynamoDB's size of one attribute value, closely enough to estimate write units."""
    if "S" in value:
        return len(value["S"].encode())
    if "N" in value:
        return len(value["N"]) // 2 + 2
    if "B" in value:
        return len(value["B"])
    if "SS" in value:
        return sum(len(v.encode()) for v in value["SS"])
    if "L" in value:
        return 3 + sum(1 + _value_size(v) for v in value["L"])
    return 1  # BOOL, NULL


def item_size(item: Mapping[str, Any]) -> int:
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def write_units(before: int, after: int) -> int:
    """What DynamoDB bills an UpdateItem: 1 KB units of the larger of the two images."""
    return max(1, -(-max(before, after) // 1024))


def _condition_failed(exc: botocore.exceptions.ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) == _CONDITION_FAILED


class ClaimStore:
    """The tasks-table writes of one worker (``ddb``: an open aioboto3 DynamoDB client)."""

    def __init__(self, ddb: Any, table: str, worker_id: str, *, lease_s: float) -> None:
        self.ddb = ddb
        self.table = table
        self.worker_id = worker_id
        self.lease_s = lease_s
        # Write units estimated from item sizes: DynamoDB reports them, moto does not.
        self.estimated_write_units = 0
        self._sizes: dict[str, int] = {}  # bundle id -> its item's size after our last write

    def units_per_write(self, bundle_id: str) -> int:
        """What the next write to this bundle's item will cost, as far as we know."""
        return write_units(0, self._sizes.get(bundle_id, 0))

    def _account(self, bundle_id: str, after: Mapping[str, Any], *, keep: bool = True) -> None:
        size = item_size(after)
        self.estimated_write_units += write_units(self._sizes.get(bundle_id, size), size)
        if keep:
            self._sizes[bundle_id] = size
        else:
            self._sizes.pop(bundle_id, None)

    def _key(self, bundle_id: str) -> dict[str, Any]:
        return {BUNDLE_KEY: {"S": bundle_id}}

    async def claim(self, bundle_id: str, scheduler: str) -> ClaimOutcome:
        now = time.time()
        lease_until = now + self.lease_s
        try:
            reply = await self.ddb.update_item(
                TableName=self.table,
                Key=self._key(bundle_id),
                UpdateExpression=(
                    "SET #owner = :me, #lease = :lease, #state = :claimed, #sched = :sched, "
                    "#claimed_at = :now ADD #attempt :one"
                ),
                # No state yet: nobody claimed it (a scheduler's cancel write may have
                # created the item with only its ``cancel`` set).
                ConditionExpression=(
                    "attribute_not_exists(#state) OR (#state = :claimed AND #lease < :now)"
                ),
                ExpressionAttributeNames=_names(
                    "#owner", "#lease", "#state", "#sched", "#claimed_at", "#attempt"
                ),
                ExpressionAttributeValues={
                    ":me": {"S": self.worker_id},
                    ":lease": {"N": repr(lease_until)},
                    ":claimed": {"S": STATE_CLAIMED},
                    ":sched": {"S": scheduler},
                    ":now": {"N": repr(now)},
                    ":one": {"N": "1"},
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                ReturnConsumedCapacity="TOTAL",
            )
        except botocore.exceptions.ClientError as exc:
            if not _condition_failed(exc):
                raise translate(exc, f"claiming bundle {bundle_id}") from exc
            old = exc.response.get("Item") or await self._read(bundle_id)
            if _str(old, "state") == STATE_DONE:
                return AlreadyDone()
            return HeldElsewhere(owner=_str(old, "owner"), lease_until=_num(old, "lease_until"))
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise translate(exc, f"claiming bundle {bundle_id}") from exc
        item = reply["Attributes"]
        self._account(bundle_id, item)
        return Claimed(
            attempt=int(_num(item, "attempt")),
            lease_until=lease_until,
            done_ids=_str_set(item, "done_ids"),
            cancel=_str_set(item, "cancel"),
            prior_rows=_rows(item, "partial"),
        )

    async def _read(self, bundle_id: str) -> dict[str, Any]:
        """The item as it is (only when a failed claim did not return it)."""
        with aws_errors(f"reading bundle {bundle_id}"):
            reply = await self.ddb.get_item(
                TableName=self.table, Key=self._key(bundle_id), ConsistentRead=True
            )
        item: dict[str, Any] = reply.get("Item") or {}
        return item

    async def extend(
        self, bundle_id: str, attempt: int, *, reported: Iterable[Mapping[str, Any]] = ()
    ) -> frozenset[str]:
        """Heartbeat: move the lease on and record ``reported`` results (summary rows).

        Returns the ids the scheduler asked to cancel. Raises :class:`LeaseLost`.
        """
        item = await self._update_owned(
            bundle_id, attempt, lease_until=time.time() + self.lease_s, reported=reported
        )
        self._account(bundle_id, item)
        return _str_set(item, "cancel")

    async def release(
        self, bundle_id: str, attempt: int, *, reported: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        """Hand the bundle back: the lease ends now, reported tasks stay recorded."""
        item = await self._update_owned(bundle_id, attempt, lease_until=0.0, reported=reported)
        self._account(bundle_id, item, keep=False)

    async def _update_owned(
        self,
        bundle_id: str,
        attempt: int,
        *,
        lease_until: float,
        reported: Iterable[Mapping[str, Any]],
    ) -> dict[str, Any]:
        rows = [summary_row(r) for r in reported]
        sets = ["#lease = :lease"]
        names = _names("#lease")
        values: dict[str, Any] = {":lease": {"N": repr(lease_until)}}
        expression = ""
        if rows:
            sets.append("#partial = list_append(if_not_exists(#partial, :empty), :chunk)")
            names |= _names("#partial", "#done")
            values[":empty"] = {"L": []}
            values[":chunk"] = {"L": [{"B": encode_summary(rows)}]}
            values[":ids"] = {"SS": sorted({str(r["id"]) for r in rows})}
            expression = " ADD #done :ids"
        what = f"extending the lease of bundle {bundle_id}"
        update = "SET " + ", ".join(sets) + expression
        return await self._owned_write(bundle_id, attempt, what, update, names, values)

    async def _owned_write(
        self,
        bundle_id: str,
        attempt: int,
        what: str,
        update: str,
        names: dict[str, str],
        values: dict[str, Any],
    ) -> dict[str, Any]:
        """UpdateItem on a bundle this worker holds under ``attempt``; the new item.

        Raises :class:`LeaseLost` when the claim is no longer ours, :class:`AwsError`
        for anything else.
        """
        try:
            reply = await self.ddb.update_item(
                TableName=self.table,
                Key=self._key(bundle_id),
                UpdateExpression=update,
                ConditionExpression="#owner = :me AND #attempt = :attempt AND #state = :claimed",
                ExpressionAttributeNames=names | _names("#owner", "#attempt", "#state"),
                ExpressionAttributeValues=values
                | {
                    ":me": {"S": self.worker_id},
                    ":attempt": {"N": str(attempt)},
                    ":claimed": {"S": STATE_CLAIMED},
                },
                ReturnValues="ALL_NEW",
                ReturnConsumedCapacity="TOTAL",
            )
        except botocore.exceptions.ClientError as exc:
            if _condition_failed(exc):
                self._sizes.pop(bundle_id, None)
                raise LeaseLost(bundle_id) from exc
            raise translate(exc, what) from exc
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise translate(exc, what) from exc
        item: dict[str, Any] = reply["Attributes"]
        return item

    async def finish(self, bundle_id: str, attempt: int, rows: list[dict[str, Any]]) -> None:
        """Mark the bundle done with its summary. Raises :class:`LeaseLost`."""
        item = await self._owned_write(
            bundle_id,
            attempt,
            f"finishing bundle {bundle_id}",
            "SET #state = :done, #summary = :summary, #finished_at = :now, #lease = :zero "
            "REMOVE #done, #partial",
            _names("#summary", "#finished_at", "#lease", "#done", "#partial"),
            {
                ":done": {"S": STATE_DONE},
                ":summary": {"B": encode_summary(rows)},
                ":now": {"N": repr(time.time())},
                ":zero": {"N": "0"},
            },
        )
        self._account(bundle_id, item, keep=False)

    async def check_table(self) -> None:
        """Raise :class:`protocol.aws.ResourceMissing` when the tasks table does not exist."""
        with aws_errors(f"finding table {self.table}"):
            await self.ddb.describe_table(TableName=self.table)
