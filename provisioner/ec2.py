"""EC2 worker instances of one fleet: launch, list, terminate -- only ours, by tag.

Every instance we launch carries ``taskmill:role=worker`` and ``taskmill:fleet=NAME``;
listing filters on both, and terminating first checks that every id asked for
carries them, so a typo in an instance id can never terminate someone else's machine.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from protocol.aws import AwsError, AwsRequestFailed, AwsSettings, aws_errors
from provisioner.settings import ProvisionSettings, parse_tags
from provisioner.userdata import worker_user_data

log = structlog.get_logger("taskmill.provision")

ROLE_TAG = "taskmill:role"
FLEET_TAG = "taskmill:fleet"
QUEUE_TAG = "taskmill:queue"
ROLE_WORKER = "worker"
ALIVE_STATES = ("pending", "running")
LISTED_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
# RunInstances errors after which fewer instances may still be had.
CAPACITY_ERRORS = frozenset(
    {"InsufficientInstanceCapacity", "InstanceLimitExceeded", "VcpuLimitExceeded"}
)


class NotOurInstance(AwsError):
    """An instance id given to ``stop`` that is not a worker of this fleet."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    id: str
    state: str
    launched: float  # epoch seconds
    instance_type: str = ""
    private_ip: str = ""
    private_dns: str = ""
    subnet: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_ec2(cls, data: dict[str, Any]) -> Instance:
        launch_time = data.get("LaunchTime")
        launched = launch_time.timestamp() if isinstance(launch_time, datetime) else 0.0
        return cls(
            id=data["InstanceId"],
            state=data.get("State", {}).get("Name", ""),
            launched=launched,
            instance_type=data.get("InstanceType", ""),
            private_ip=data.get("PrivateIpAddress", ""),
            private_dns=data.get("PrivateDnsName", ""),
            subnet=data.get("SubnetId", ""),
            tags={t["Key"]: t["Value"] for t in data.get("Tags", [])},
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "type": self.instance_type,
            "launched": self.launched,
            "private_ip": self.private_ip,
            "subnet": self.subnet,
            "fleet": self.tags.get(FLEET_TAG, ""),
        }


def fleet_tags(aws: AwsSettings, settings: ProvisionSettings) -> dict[str, str]:
    return {
        "Name": f"taskmill-worker-{settings.fleet}",
        **parse_tags(settings.tags),
        ROLE_TAG: ROLE_WORKER,
        FLEET_TAG: settings.fleet,
        QUEUE_TAG: aws.request_queue,
    }


def fleet_filters(fleet: str | None, states: Iterable[str]) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = [
        {"Name": f"tag:{ROLE_TAG}", "Values": [ROLE_WORKER]},
        {"Name": "instance-state-name", "Values": list(states)},
    ]
    if fleet is not None:
        filters.append({"Name": f"tag:{FLEET_TAG}", "Values": [fleet]})
    return filters


def run_instances_params(
    aws: AwsSettings, settings: ProvisionSettings, count: int, user_data: str, subnet: str | None
) -> dict[str, Any]:
    """The RunInstances request for ``count`` workers (pure, for tests and --dry-run)."""
    tags = [{"Key": k, "Value": v} for k, v in fleet_tags(aws, settings).items()]
    params: dict[str, Any] = {
        "MinCount": count,
        "MaxCount": count,
        "UserData": user_data,
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
        # Powering off (idle timeout, drain) then ends the instance and its bill.
        "InstanceInitiatedShutdownBehavior": "terminate",
        # Same token on botocore's retry of a timed-out request: no second launch.
        "ClientToken": uuid.uuid4().hex,
    }
    if settings.launch_template:
        params["LaunchTemplate"] = {"LaunchTemplateName": settings.launch_template}
    if settings.ami:
        params["ImageId"] = settings.ami
    if settings.instance_type:
        params["InstanceType"] = settings.instance_type
    if subnet:
        params["SubnetId"] = subnet
    if settings.security_groups:
        params["SecurityGroupIds"] = list(settings.security_groups)
    if settings.instance_profile:
        key = "Arn" if settings.instance_profile.startswith("arn:") else "Name"
        params["IamInstanceProfile"] = {key: settings.instance_profile}
    if settings.key_name:
        params["KeyName"] = settings.key_name
    return params


class Fleet:
    """The worker instances of one fleet, through an open aioboto3 EC2 client."""

    def __init__(self, aws: AwsSettings, settings: ProvisionSettings, ec2: Any) -> None:
        self.aws = aws
        self.settings = settings
        self.ec2 = ec2
        self._next_subnet = 0
        self._user_data: str | None = None

    def user_data(self) -> str:
        if self._user_data is None:
            self._user_data = worker_user_data(self.aws, self.settings)
        return self._user_data

    def _subnet_split(self, count: int) -> list[tuple[str | None, int]]:
        """Spread ``count`` over the subnets, continuing the rotation across calls."""
        subnets = self.settings.subnets
        if not subnets:
            return [(None, count)]
        per: dict[str, int] = {}
        for _ in range(count):
            subnet = subnets[self._next_subnet % len(subnets)]
            self._next_subnet += 1
            per[subnet] = per.get(subnet, 0) + 1
        return list(per.items())

    async def launch(self, count: int) -> list[Instance]:
        """Launch up to ``count`` workers; fewer if EC2 has less capacity (logged)."""
        self.settings.check_launchable()
        launched: list[Instance] = []
        for subnet, n in self._subnet_split(count):
            params = run_instances_params(self.aws, self.settings, n, self.user_data(), subnet)
            try:
                with aws_errors(f"launching {n} worker instance(s)"):
                    reply = await self.ec2.run_instances(**params)
            except AwsRequestFailed as exc:
                if exc.code not in CAPACITY_ERRORS or n == 1:
                    raise
                # Not enough for all: take what there is (a new request, so a new token).
                log.warning("not enough capacity, launching fewer", asked=n, error=str(exc))
                params = run_instances_params(self.aws, self.settings, n, self.user_data(), subnet)
                params["MinCount"] = 1
                with aws_errors(f"launching up to {n} worker instance(s)"):
                    reply = await self.ec2.run_instances(**params)
            got = [Instance.from_ec2(i) for i in reply.get("Instances", [])]
            if len(got) < n:
                log.warning("fewer instances than asked", asked=n, got=len(got), subnet=subnet)
            launched.extend(got)
        log.info(
            "launched", fleet=self.settings.fleet, instances=[i.id for i in launched], asked=count
        )
        return launched

    async def instances(
        self,
        states: Iterable[str] = ALIVE_STATES,
        *,
        all_fleets: bool = False,
        ids: Iterable[str] = (),
    ) -> list[Instance]:
        """Our instances in these states (of every fleet, or only of these ids)."""
        fleet = None if all_fleets else self.settings.fleet
        filters = fleet_filters(fleet, states)
        ids = list(ids)
        if ids:
            # A filter, not InstanceIds=: an unknown id then matches nothing instead of
            # failing the whole request.
            filters.append({"Name": "instance-id", "Values": ids})
        found: list[Instance] = []
        with aws_errors("listing worker instances"):
            paginator = self.ec2.get_paginator("describe_instances")
            async for page in paginator.paginate(Filters=filters):
                for reservation in page.get("Reservations", []):
                    found.extend(Instance.from_ec2(i) for i in reservation.get("Instances", []))
        return sorted(found, key=lambda i: (i.launched, i.id))

    async def terminate(self, ids: Iterable[str], *, verified: bool = False) -> list[str]:
        """Terminate these instances after checking they are workers of this fleet
        (``verified``: the caller has just listed them with the fleet's filters)."""
        wanted = sorted(set(ids))
        if not wanted:
            return []
        if not verified:
            ours = {i.id for i in await self.instances(LISTED_STATES, ids=wanted)}
            foreign = [i for i in wanted if i not in ours]
            if foreign:
                raise NotOurInstance(
                    f"not workers of fleet {self.settings.fleet!r}: {', '.join(foreign)}"
                )
        with aws_errors(f"terminating {len(wanted)} instance(s)"):
            reply = await self.ec2.terminate_instances(InstanceIds=wanted)
        done = [t["InstanceId"] for t in reply.get("TerminatingInstances", [])]
        log.info("terminated", fleet=self.settings.fleet, instances=done)
        return done
