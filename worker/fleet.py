"""The worker's own item in the DynamoDB workers table: registration and heartbeat.

One item per worker daemon, key ``worker`` (see :mod:`protocol.bundles`): ``host``,
``slots``, ``instance_id``, ``started``, ``state`` (``running`` | ``draining`` |
``stopped``), and with every heartbeat ``running`` (tasks running now), ``bundles`` (held),
``requests`` (AWS requests sent so far) and ``last_seen``. The monitor and the autoscaler
read it; the autoscaler retires a worker by setting ``drain`` to true, which the worker
sees at its next heartbeat and obeys as it would SIGTERM.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from protocol.aws import aws_errors
from protocol.bundles import WORKER_KEY, WORKER_RUNNING


def _drain_requested(item: dict[str, Any]) -> bool:
    value = item.get("drain")
    if not value:
        return False
    if "BOOL" in value:
        return bool(value["BOOL"])
    if "N" in value:
        return float(value["N"]) != 0
    if "S" in value:
        return value["S"].strip().lower() not in ("", "0", "false", "no")
    return False


class FleetRegistry:
    """Writes this worker's item (``ddb``: an open aioboto3 DynamoDB client)."""

    def __init__(
        self,
        ddb: Any,
        table: str,
        worker_id: str,
        *,
        slots: int,
        instance_id: str | None,
        host: str | None = None,
    ) -> None:
        self.ddb = ddb
        self.table = table
        self.worker_id = worker_id
        self.slots = slots
        self.instance_id = instance_id
        self.host = host or socket.gethostname()

    async def register(self) -> None:
        now = time.time()
        item: dict[str, Any] = {
            WORKER_KEY: {"S": self.worker_id},
            "host": {"S": self.host},
            "slots": {"N": str(self.slots)},
            "state": {"S": WORKER_RUNNING},
            "started": {"N": repr(now)},
            "last_seen": {"N": repr(now)},
            "running": {"N": "0"},
            "bundles": {"N": "0"},
            "requests": {"N": "0"},
            "instance_id": {"S": self.instance_id} if self.instance_id else {"NULL": True},
        }
        with aws_errors(f"registering in table {self.table}"):
            await self.ddb.put_item(TableName=self.table, Item=item)

    async def heartbeat(self, *, state: str, running: int, bundles: int, requests: int) -> bool:
        """Update the item; returns True when the autoscaler asked this worker to drain."""
        with aws_errors(f"heartbeat in table {self.table}"):
            reply = await self.ddb.update_item(
                TableName=self.table,
                Key={WORKER_KEY: {"S": self.worker_id}},
                UpdateExpression=(
                    "SET #state = :state, running = :running, bundles = :bundles, "
                    "requests = :requests, last_seen = :now"
                ),
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    ":state": {"S": state},
                    ":running": {"N": str(running)},
                    ":bundles": {"N": str(bundles)},
                    ":requests": {"N": str(requests)},
                    ":now": {"N": repr(time.time())},
                },
                ReturnValues="ALL_NEW",
            )
        return _drain_requested(reply.get("Attributes") or {})
