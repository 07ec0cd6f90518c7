"""`taskmill provision static|list|stop` against moto's EC2 on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
import yaml

from client.cli import main
from protocol.aws import AwsClients, AwsSettings
from provisioner.ec2 import FLEET_TAG, ROLE_TAG


def aws_flags(aws: AwsSettings, fleet: str) -> list[str]:
    return [
        "--aws-endpoint-url",
        str(aws.aws_endpoint_url),
        "--request-queue",
        aws.request_queue,
        "--workers-table",
        aws.workers_table,
        "--fleet",
        fleet,
    ]


def describe(aws: AwsSettings, ids: list[str]) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        async with AwsClients(aws).client("ec2") as ec2:
            reply = await ec2.describe_instances(InstanceIds=ids)
            found = [i for r in reply["Reservations"] for i in r["Instances"]]
            for inst in found:
                attr = await ec2.describe_instance_attribute(
                    InstanceId=inst["InstanceId"], Attribute="userData"
                )
                inst["UserDataText"] = base64.b64decode(attr["UserData"]["Value"]).decode()
            return found

    return asyncio.run(run())


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["provision", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_static_launches_n_tagged_instances_with_the_user_data(
    aws_settings: AwsSettings,
    worker_ami: str,
    fleet_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = aws_flags(aws_settings, fleet_name)
    code, out, err = cli(
        capsys,
        "static",
        "-n",
        "3",
        "-t",
        "t3.micro",
        "--ami",
        worker_ami,
        "--tag",
        "team=ml",
        "--slots-per-worker",
        "6",
        "--worker-args",
        "--handlers mymodule",
        "--json",
        *flags,
    )
    assert code == 0, err
    launched = [json.loads(line) for line in out.splitlines()]
    ids = sorted(d["id"] for d in launched)
    assert len(ids) == 3

    instances = describe(aws_settings, ids)
    assert len(instances) == 3
    for inst in instances:
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags[ROLE_TAG] == "worker"
        assert tags[FLEET_TAG] == fleet_name
        assert tags["team"] == "ml"
        assert inst["InstanceType"] == "t3.micro" and inst["ImageId"] == worker_ami
        user_data = inst["UserDataText"]
        assert user_data.startswith("#cloud-config\n")
        config = yaml.safe_load(user_data)  # the rendered template is valid YAML
        files = {f["path"]: f["content"] for f in config["write_files"]}
        env = files["/etc/taskmill/worker.env"]
        assert f'TASKMILL_REQUEST_QUEUE="{aws_settings.request_queue}"' in env
        assert f'TASKMILL_WORKERS_TABLE="{aws_settings.workers_table}"' in env
        assert (
            f'TASKMILL_WORKER_ARGS="-s {aws_settings.request_queue} -t 6 -i 300 '
            '--poweroff --handlers mymodule"' in env
        )
        assert (
            "ExecStart=/opt/taskmill/venv/bin/taskmill worker"
            in (files["/etc/systemd/system/taskmill-worker.service"])
        )
        assert ["systemctl", "enable", "--now", "taskmill-worker.service"] in config["runcmd"]

    # list: exactly this fleet's instances
    code, out, _ = cli(capsys, "list", "--json", *flags)
    assert code == 0
    assert sorted(json.loads(line)["id"] for line in out.splitlines()) == ids


def test_stop_terminates_only_instances_of_the_fleet(
    aws_settings: AwsSettings,
    worker_ami: str,
    fleet_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ours = aws_flags(aws_settings, fleet_name)
    other = aws_flags(aws_settings, fleet_name + "-other")
    launch = ("static", "-t", "t3.micro", "--ami", worker_ami)
    code, out, _ = cli(capsys, *launch, "-n", "3", *ours)
    assert code == 0
    mine = out.split()
    code, out, _ = cli(capsys, *launch, "-n", "1", *other)
    assert code == 0
    foreign = out.split()

    # An id outside the fleet is refused, and nothing at all is terminated.
    code, _, err = cli(capsys, "stop", mine[0], foreign[0], *ours)
    assert code == 3 and foreign[0] in err and "not workers of fleet" in err
    states = {i["InstanceId"]: i["State"]["Name"] for i in describe(aws_settings, mine)}
    assert set(states.values()) == {"running"}

    code, out, _ = cli(capsys, "stop", mine[0], *ours)
    assert code == 0 and out.split() == [mine[0]]
    code, out, _ = cli(capsys, "stop", "--all", "--json", *ours)
    assert code == 0 and sorted(json.loads(out)["terminated"]) == sorted(mine[1:])

    by_id = {i["InstanceId"]: i["State"]["Name"] for i in describe(aws_settings, mine + foreign)}
    assert all(by_id[i] in ("shutting-down", "terminated") for i in mine)
    assert by_id[foreign[0]] == "running"
    code, out, _ = cli(capsys, "stop", "--all", *other)  # clean up the other fleet
    assert code == 0 and out.split() == foreign


def test_static_without_an_image_is_a_usage_error(
    aws_settings: AwsSettings, fleet_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(
        capsys, "static", "-n", "1", "-t", "t3.micro", *aws_flags(aws_settings, fleet_name)
    )
    assert code == 2 and "--ami" in err


def test_dry_run_prints_the_request_and_launches_nothing(
    aws_settings: AwsSettings,
    fleet_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = aws_flags(aws_settings, fleet_name)
    code, out, _ = cli(
        capsys, "static", "-n", "2", "--launch-template", "taskmill-worker", "--dry-run", *flags
    )
    assert code == 0
    request = json.loads(out[: out.index("\n}\n") + 2])
    assert request["LaunchTemplate"] == {"LaunchTemplateName": "taskmill-worker"}
    assert request["MaxCount"] == 2 and request["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert "#cloud-config" in out
    code, out, _ = cli(capsys, "list", "--json", *flags)
    assert code == 0 and out == ""
