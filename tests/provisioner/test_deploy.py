"""deploy/: the CloudFormation template lints, the systemd units verify and agree with
the daemons' settings, the cloud-init template renders."""

from __future__ import annotations

import configparser
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from protocol.aws import AwsSettings
from provisioner.settings import ProvisionSettings
from provisioner.userdata import UserDataError, render, worker_env, worker_user_data
from scheduler.settings import SchedulerSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TEMPLATE = DEPLOY / "cloudformation" / "taskmill.yaml"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
VENV_TASKMILL = "/opt/taskmill/venv/bin/taskmill"


def lint(path: Path) -> list[str]:
    from cfnlint.api import lint_file

    return [str(m) for m in lint_file(path)]


def test_cloudformation_template_passes_cfn_lint() -> None:
    assert lint(TEMPLATE) == []


def test_cfn_lint_does_catch_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("BillingMode: PAY_PER_REQUEST", "Billing: 1"))
    assert lint(broken)


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def unit_env(path: Path) -> dict[str, str]:
    """Environment= lines (configparser would keep only the last of the repeated key)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("Environment="):
            key, value = line.removeprefix("Environment=").split("=", 1)
            env[key] = value
    return env


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_units_restart_on_failure_and_stop_gracefully(path: Path) -> None:
    service = unit(path)["Service"]
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["EnvironmentFile"].startswith("/etc/taskmill/")
    assert service["ExecStart"].startswith(VENV_TASKMILL + " ")
    assert int(service["TimeoutStopSec"]) > 0
    assert unit(path)["Install"]["WantedBy"] == "multi-user.target"


def test_worker_stop_timeout_covers_the_drain_grace() -> None:
    path = DEPLOY / "systemd" / "taskmill-worker.service"
    env = unit_env(path)
    from worker.daemon_settings import WorkerDaemonSettings

    fields = {f.name for f in dataclasses.fields(WorkerDaemonSettings)}
    assert {"drain_grace_s", "kill_grace_s"} <= fields  # the variables name real settings
    drain = float(env["TASKMILL_DRAIN_GRACE_S"])
    kill = float(env["TASKMILL_KILL_GRACE_S"])
    timeout = float(unit(path)["Service"]["TimeoutStopSec"])
    assert timeout >= drain + kill + 10
    # The environment file written by cloud-init must not override the pair.
    assert not {"TASKMILL_DRAIN_GRACE_S", "TASKMILL_KILL_GRACE_S"} & set(
        worker_env(AwsSettings(), ProvisionSettings())
    )
    # SIGTERM to the daemon only: it stops its own tasks, in order.
    assert unit(path)["Service"]["KillMode"] == "mixed"


def test_unit_environment_names_real_settings() -> None:
    scheduler_fields = {f.name for f in dataclasses.fields(SchedulerSettings)}
    env = unit_env(DEPLOY / "systemd" / "taskmill-scheduler.service")
    for key in env:
        assert key.removeprefix("TASKMILL_").lower() in scheduler_fields, key
    aws_fields = {f.name for f in dataclasses.fields(AwsSettings)}
    own = {"TASKMILL_WORKER_ARGS", "TASKMILL_FLEET", "TASKMILL_LOG_FORMAT"}
    for key in worker_env(AwsSettings(aws_endpoint_url="http://x"), ProvisionSettings()):
        if key.startswith("TASKMILL_") and key not in own:
            assert key.removeprefix("TASKMILL_").lower() in aws_fields, key


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(path: Path, tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this venv's taskmill.
    here = Path(sys.executable).parent / "taskmill"
    program = str(here) if here.exists() else "/bin/true"
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace(VENV_TASKMILL, program))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_user_data_renders_to_cloud_config() -> None:
    aws = AwsSettings(request_queue="jobs-requests", aws_region="eu-west-1")
    settings = ProvisionSettings(install=("taskmill==0.1.0", "mytasks==2.0"), worker_idle_s=0)
    text = worker_user_data(aws, settings)
    config = yaml.safe_load(text)
    files = {f["path"]: f for f in config["write_files"]}
    assert (
        'TASKMILL_INSTALL="taskmill==0.1.0 mytasks==2.0"'
        in (files["/etc/taskmill/install.env"]["content"])
    )
    env = files["/etc/taskmill/worker.env"]["content"]
    assert 'TASKMILL_AWS_REGION="eu-west-1"' in env
    assert 'TASKMILL_WORKER_ARGS="-s jobs-requests -t 4 --poweroff"' in env  # no -i: 0
    assert files["/etc/taskmill/worker.env"]["permissions"] == "0640"
    unit_text = files["/etc/systemd/system/taskmill-worker.service"]["content"]
    assert unit_text == (DEPLOY / "systemd" / "taskmill-worker.service").read_text()
    assert config["runcmd"][0] == ["/usr/local/sbin/taskmill-install"]


def test_user_data_refuses_values_that_would_break_the_files() -> None:
    with pytest.raises(UserDataError, match="quotes"):
        worker_user_data(AwsSettings(), ProvisionSettings(worker_args="--handlers 'x'"))
    with pytest.raises(ValueError, match="install"):
        ProvisionSettings(install=("taskmill; rm -rf /",))
    with pytest.raises(UserDataError, match="needs a value"):
        render("a:\n  %%MISSING%%\n", {})
    with pytest.raises(UserDataError, match="alone on its line"):
        render("a: %%X%%\n", {"X": "1"})
    assert render("a: |\n  %%X%%\n", {"X": "1\n2"}) == "a: |\n  1\n  2\n"
