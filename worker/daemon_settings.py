"""Settings of the remote worker daemon (``taskmill worker``), loaded by ``protocol.config.load``.

The AWS side (queue and table names, region, endpoint, visibility timeout, lease) is
:class:`protocol.aws.AwsSettings`, loaded the same way; a TOML file holds both, in a
``[worker]`` and an ``[aws]`` table.
"""

from __future__ import annotations

import os
import shlex
import socket
from dataclasses import dataclass

from protocol.logs import LEVELS

MAX_MESSAGES_PER_RECEIVE = 10  # SQS's limit
MAX_RECEIVE_WAIT_S = 20  # SQS's longest long poll


def default_slots() -> int:
    return os.cpu_count() or 1


def default_worker_id() -> str:
    """Host, pid and a random suffix: unique in the fleet, readable in the workers table."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerDaemonSettings:
    slots: int = default_slots()  # tasks run at once, one worker process each
    handlers: tuple[str, ...] = ()  # modules registering @handler functions for call tasks
    # Exit after this long with nothing held and nothing received; None or 0: never.
    idle_timeout_s: float | None = None
    poweroff: bool = False  # power the machine off after an idle exit or a fleet drain
    poweroff_command: str = "sudo -n poweroff"
    drain_grace_s: float = 30.0  # on SIGTERM, running tasks get this long to finish
    kill_grace_s: float = 2.0  # SIGTERM to SIGKILL for a cancelled or timed-out task
    worker_id: str | None = None  # default: host-pid-random
    instance_id: str | None = None  # the EC2 instance id, given by cloud-init (no metadata call)
    receive_wait_s: int = MAX_RECEIVE_WAIT_S  # SQS long-poll wait
    reply_interval_s: float = 0.2  # finished results wait at most this long to be sent
    # A result sent to its reply queue is recorded in the bundle's item (so a later owner
    # does not run the task again) this long afterwards, or longer for a big item (see
    # worker.upkeep). 0: with the next pass after the send.
    record_interval_s: float = 1.0
    fleet_heartbeat_s: float = 5.0  # workers-table heartbeat, and check for a drain request
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, got {self.slots}")
        if self.idle_timeout_s is not None and self.idle_timeout_s < 0:
            raise ValueError(f"idle_timeout_s must not be negative, got {self.idle_timeout_s}")
        if not 1 <= self.receive_wait_s <= MAX_RECEIVE_WAIT_S:
            raise ValueError(
                f"receive_wait_s must be from 1 to {MAX_RECEIVE_WAIT_S}, got {self.receive_wait_s}"
            )
        for name in (
            "drain_grace_s",
            "kill_grace_s",
            "reply_interval_s",
            "record_interval_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.fleet_heartbeat_s <= 0:
            raise ValueError(f"fleet_heartbeat_s must be positive, got {self.fleet_heartbeat_s}")
        if self.poweroff and not shlex.split(self.poweroff_command):
            raise ValueError("poweroff_command is empty")
        if self.log_level.lower() not in LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LEVELS)}, got {self.log_level}")
        if self.log_format not in ("auto", "json", "console"):
            raise ValueError(f"log_format must be auto, json or console, got {self.log_format}")

    @property
    def idle_exit(self) -> float | None:
        """Seconds of idleness before exiting, or None to never exit when idle."""
        return self.idle_timeout_s or None
