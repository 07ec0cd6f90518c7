"""Settings of ``taskmill provision`` (static launches and the autoscaler).

One frozen dataclass loaded like every other (:func:`protocol.config.load`: flags,
then ``TASKMILL_*``, then the ``[provision]`` table of a TOML file). The AWS side
(region, endpoint, queue and table names) is :class:`protocol.aws.AwsSettings`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from provisioner.policy import PolicyConfig

_TAG = re.compile(r"^[^=]{1,128}=.{0,256}$")
_SPEC = re.compile(r"^\S+$")


def parse_tags(tags: tuple[str, ...]) -> dict[str, str]:
    """``K=V`` strings to a dict; ``taskmill:`` keys are ours and cannot be set."""
    out: dict[str, str] = {}
    for tag in tags:
        if not _TAG.match(tag):
            raise ValueError(f"a tag must be KEY=VALUE, got {tag!r}")
        key, value = tag.split("=", 1)
        if key.startswith("taskmill:") or key.startswith("aws:"):
            raise ValueError(f"tag {key!r}: the taskmill: and aws: prefixes are reserved")
        out[key] = value
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class ProvisionSettings:
    # --- what a worker instance is -------------------------------------------------------
    fleet: str = "default"  # the taskmill:fleet tag; list, stop and autoscale see only it
    instance_type: str | None = None  # required unless the launch template sets it
    ami: str | None = None  # required unless the launch template sets it
    launch_template: str | None = None  # name, e.g. from deploy/cloudformation
    subnets: tuple[str, ...] = ()  # launches rotate over these (one per AZ)
    security_groups: tuple[str, ...] = ()
    instance_profile: str | None = None  # name or ARN (the worker role)
    key_name: str | None = None
    tags: tuple[str, ...] = ()  # extra K=V tags
    # --- what runs on it -----------------------------------------------------------------
    slots_per_worker: int = 4  # `taskmill worker -t`
    worker_idle_s: float = 300.0  # `taskmill worker -i`: exit (and power off) when idle
    worker_args: str = ""  # more `taskmill worker` flags, e.g. "--handlers mymod"
    # pip requirement(s) installed into the worker's venv: a wheel URL, a git URL, a name.
    install: tuple[str, ...] = ("taskmill",)
    user_data_template: Path | None = None  # default: deploy/cloud-init/worker.yaml
    # --- the autoscaler ------------------------------------------------------------------
    min_workers: int = 0
    max_workers: int = 10
    scale_interval_s: float = 10.0
    cooldown_s: float = 60.0
    target_backlog_per_slot: float = 1.0
    tasks_per_message: float = 1.0
    boot_timeout_s: float = 900.0
    stale_after_s: float = 600.0

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", self.fleet):
            raise ValueError(f"fleet must be 1-64 of [A-Za-z0-9_.-], got {self.fleet!r}")
        parse_tags(self.tags)
        if self.slots_per_worker < 1:
            raise ValueError(f"slots_per_worker must be >= 1, got {self.slots_per_worker}")
        if self.worker_idle_s < 0:
            raise ValueError(f"worker_idle_s must be >= 0, got {self.worker_idle_s}")
        if self.scale_interval_s <= 0:
            raise ValueError(f"scale_interval_s must be > 0, got {self.scale_interval_s}")
        if not self.install:
            raise ValueError("install needs at least one pip requirement")
        for spec in self.install:
            # Written unquoted into a shell word list on the instance: no spaces, no quotes.
            if not _SPEC.match(spec) or any(c in spec for c in "'\"`$\\;&|<>"):
                raise ValueError(f"install: {spec!r} must be one word without shell characters")
        self.policy()  # validates the autoscaler's numbers

    def policy(self) -> PolicyConfig:
        return PolicyConfig(
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            slots_per_worker=self.slots_per_worker,
            target_backlog_per_slot=self.target_backlog_per_slot,
            tasks_per_message=self.tasks_per_message,
            cooldown_s=self.cooldown_s,
            boot_timeout_s=self.boot_timeout_s,
            stale_after_s=self.stale_after_s,
        )

    def check_launchable(self) -> None:
        """Raise ValueError unless RunInstances has an image and a type to use."""
        if self.launch_template is None and (self.ami is None or self.instance_type is None):
            raise ValueError("launching needs --ami and --instance-type (-t), or --launch-template")
