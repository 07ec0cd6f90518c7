"""Render the worker's cloud-init user-data from ``deploy/cloud-init/worker.yaml``.

The template is plain YAML with whole-line placeholders (``%%NAME%%``); each is
replaced by a block of text indented like the placeholder, so the YAML structure is
never built by string pasting inside a line. Values that end up in an environment
file are checked to be one line without quotes or backslashes: the same file is
read by systemd (``EnvironmentFile=``) and by ``sh`` (``.``), which quote differently.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from protocol.aws import AwsSettings
from provisioner.settings import ProvisionSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = REPO_ROOT / "deploy"
DEFAULT_TEMPLATE = DEPLOY_DIR / "cloud-init" / "worker.yaml"
WORKER_UNIT = DEPLOY_DIR / "systemd" / "taskmill-worker.service"
USER_DATA_LIMIT = 16 * 1024  # EC2's limit on user-data, before base64

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)%%(?P<name>[A-Z_]+)%%[ \t]*$")
_UNSAFE = re.compile(r"[\"'\\`\n\r]")


class UserDataError(ValueError):
    """The template is missing or cannot be filled in."""


def env_line(key: str, value: str) -> str:
    if _UNSAFE.search(value):
        raise UserDataError(f"{key}: quotes, backslashes and newlines are not allowed: {value!r}")
    return f'{key}="{value}"'


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill whole-line ``%%NAME%%`` placeholders; every placeholder must have a value
    (a custom template may leave some values out, e.g. the unit on a prepared AMI)."""
    out: list[str] = []
    for line in template.splitlines():
        match = _PLACEHOLDER.match(line)
        if match is None:
            if "%%" in line:
                raise UserDataError(f"a placeholder must be alone on its line: {line.strip()!r}")
            out.append(line)
            continue
        name = match["name"]
        if name not in values:
            raise UserDataError(f"the template needs a value for %%{name}%%")
        indent = match["indent"]
        out.extend(indent + v if v else "" for v in values[name].splitlines())
    return "\n".join(out) + "\n"


def worker_args(aws: AwsSettings, settings: ProvisionSettings) -> str:
    """``taskmill worker`` flags for a provisioned worker."""
    args = ["-s", aws.request_queue, "-t", str(settings.slots_per_worker)]
    if settings.worker_idle_s > 0:
        args += ["-i", f"{settings.worker_idle_s:g}"]
    # Power off after an idle exit or a drain: with shutdown behaviour "terminate" the
    # instance then terminates itself, so an idle worker stops costing money even if no
    # autoscaler is running.
    args.append("--poweroff")
    return " ".join([shlex.join(args), settings.worker_args]).strip()


def worker_env(aws: AwsSettings, settings: ProvisionSettings) -> dict[str, str]:
    """The worker's environment file: AWS resource names and its flags."""
    env = {
        "AWS_DEFAULT_REGION": aws.aws_region,
        "TASKMILL_AWS_REGION": aws.aws_region,
        "TASKMILL_REQUEST_QUEUE": aws.request_queue,
        "TASKMILL_DEAD_LETTER_QUEUE": aws.dead_letter_queue,
        "TASKMILL_REPLY_QUEUE_PREFIX": aws.reply_queue_prefix,
        "TASKMILL_TASKS_TABLE": aws.tasks_table,
        "TASKMILL_WORKERS_TABLE": aws.workers_table,
        "TASKMILL_VISIBILITY_TIMEOUT_S": str(aws.visibility_timeout_s),
        "TASKMILL_LEASE_S": str(aws.lease_s),
        "TASKMILL_LOG_FORMAT": "json",
        "TASKMILL_FLEET": settings.fleet,
        "TASKMILL_WORKER_ARGS": worker_args(aws, settings),
    }
    if aws.aws_endpoint_url:
        env["TASKMILL_AWS_ENDPOINT_URL"] = aws.aws_endpoint_url
    return env


def worker_user_data(
    aws: AwsSettings, settings: ProvisionSettings, *, template: Path | None = None
) -> str:
    """The user-data of one worker instance of this fleet."""
    path = template or settings.user_data_template or DEFAULT_TEMPLATE
    try:
        text = path.read_text(encoding="utf-8")
        unit = WORKER_UNIT.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserDataError(
            f"cannot read {exc.filename}: {exc.strerror} (the deploy/ directory of a taskmill "
            "checkout is needed; or pass --user-data-template)"
        ) from exc
    values = {
        "WORKER_ENV": "\n".join(env_line(k, v) for k, v in worker_env(aws, settings).items()),
        "INSTALL_ENV": env_line("TASKMILL_INSTALL", " ".join(settings.install)),
        "WORKER_UNIT": unit.rstrip("\n"),
    }
    rendered = render(text, values)
    if len(rendered.encode()) > USER_DATA_LIMIT:
        raise UserDataError(
            f"user-data is {len(rendered.encode())} bytes, above EC2's {USER_DATA_LIMIT}"
        )
    return rendered
