"""taskmill's client side: the asyncio :class:`Client`, the blocking :class:`SyncClient`,
workload files and the ``taskmill`` command line (:mod:`client.cli`).

    from client import SyncClient

    with SyncClient("127.0.0.1", 7070) as tm:
        results = tm.run([{"cmd": "sleep 0"}, {"fn": "add", "args": [1, 2]}])
"""

from client.client import Client, ResultBatch, Submission
from client.errors import (
    ClientError,
    ConnectError,
    ConnectionLost,
    ReconnectFailed,
    WorkloadError,
)
from client.reconnect import ReconnectPolicy
from client.sync import SyncClient
from client.workload import generate_workload, load_workload

__all__ = [
    "Client",
    "ClientError",
    "ConnectError",
    "ConnectionLost",
    "ReconnectFailed",
    "ReconnectPolicy",
    "ResultBatch",
    "Submission",
    "SyncClient",
    "WorkloadError",
    "generate_workload",
    "load_workload",
]
