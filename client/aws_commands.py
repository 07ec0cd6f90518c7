"""The AWS commands of the CLI: ``taskmill worker`` (the remote worker daemon) and
``taskmill init-aws``.

    taskmill worker -s QUEUE -t N [-i IDLE_SECONDS] [--handlers MOD] [--poweroff]
    taskmill init-aws [--aws-endpoint-url URL] [--region R]

Settings come from the flags, then ``TASKMILL_*`` variables, then ``--config FILE.toml``
(a ``[worker]`` and an ``[aws]`` table). The worker and provisioning code is imported
only when these commands run. Failures print one line, ``taskmill COMMAND: error: ...``,
and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from client.argtypes import positive_int as _positive
from client.argtypes import seconds as _seconds
from protocol.config import ConfigError, load

EXIT_USAGE = 2


def _add_aws_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aws-endpoint-url", metavar="URL", help="AWS endpoint (e.g. a moto server)")
    p.add_argument("--region", metavar="REGION", help="AWS region (default: us-east-1)")
    p.add_argument("--config", metavar="FILE.toml", help="settings file ([worker], [aws])")


def add_parsers(sub: Any) -> None:
    """Add ``worker`` and ``init-aws`` to the CLI's subcommands."""
    p = sub.add_parser(
        "worker",
        help="run a remote worker daemon that runs bundles from the SQS request queue",
        epilog="exit status: 0 after a drain (SIGTERM/SIGINT, idle timeout, drain request), "
        "2 when it cannot start (missing queue or table, credentials, endpoint, handlers).",
    )
    p.add_argument("-s", "--queue", metavar="QUEUE", help="request queue name")
    p.add_argument(
        "-t", "--slots", type=_positive, metavar="N", help="tasks run at once (default: CPUs)"
    )
    p.add_argument(
        "-i",
        "--idle",
        type=_seconds,
        metavar="IDLE_SECONDS",
        help="exit after this long with no work (default: never)",
    )
    p.add_argument(
        "--handlers",
        action="append",
        metavar="MODULE[,MODULE]",
        help="Python module(s) registering @handler functions for call tasks",
    )
    p.add_argument(
        "--poweroff",
        action="store_const",
        const=True,
        help="power the machine off after an idle exit or a drain asked by the autoscaler",
    )
    p.add_argument(
        "--drain-grace",
        type=_seconds,
        metavar="S",
        help="on SIGTERM, how long running tasks may take to finish (default: 30)",
    )
    p.add_argument("--worker-id", metavar="ID", help="default: host-pid-random")
    _add_aws_options(p)
    p.add_argument("--log-format", choices=("auto", "json", "console"))
    p.add_argument("--log-level", type=str.lower, choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=_worker)

    p = sub.add_parser("init-aws", help="create the SQS queues and DynamoDB tables (idempotent)")
    _add_aws_options(p)
    p.set_defaults(func=_init_aws)


def _error(command: str, message: str) -> int:
    sys.stderr.write(f"taskmill {command}: error: {message}\n")
    sys.stderr.flush()
    return EXIT_USAGE


def _aws_overrides(a: argparse.Namespace) -> dict[str, Any]:
    return {"aws_endpoint_url": a.aws_endpoint_url, "aws_region": a.region}


def _worker(a: argparse.Namespace) -> int:
    settings = {
        "slots": a.slots,
        "idle_timeout_s": a.idle,
        "handlers": ",".join(a.handlers) if a.handlers else None,
        "poweroff": a.poweroff,
        "drain_grace_s": a.drain_grace,
        "worker_id": a.worker_id,
        "log_format": a.log_format,
        "log_level": a.log_level,
    }
    aws = {**_aws_overrides(a), "request_queue": a.queue}
    return cmd_worker(settings=settings, aws=aws, config=a.config)


def cmd_worker(
    *,
    settings: Mapping[str, Any] | None = None,
    aws: Mapping[str, Any] | None = None,
    config: str | None = None,
) -> int:
    """``taskmill worker``: the daemon, until drained. ``None`` values: not given."""
    from protocol.aws import AwsSettings
    from worker.daemon import serve
    from worker.daemon_settings import WorkerDaemonSettings
    from worker.errors import DaemonStartError

    try:
        daemon_settings = load(
            WorkerDaemonSettings, overrides=settings, toml_path=config, section="worker"
        )
        aws_settings = load(AwsSettings, overrides=aws, toml_path=config, section="aws")
    except (ConfigError, ValueError) as exc:
        return _error("worker", f"bad settings: {exc}")
    try:
        return serve(daemon_settings, aws_settings)
    except DaemonStartError as exc:
        return _error("worker", str(exc))


def _init_aws(a: argparse.Namespace) -> int:
    return cmd_init_aws(aws=_aws_overrides(a), config=a.config)


def cmd_init_aws(*, aws: Mapping[str, Any] | None = None, config: str | None = None) -> int:
    """``taskmill init-aws``: print the queue URLs and table names as JSON."""
    import asyncio

    from protocol.aws import AwsError, AwsSettings
    from protocol.logs import configure_logging
    from provisioner.resources import init_aws

    configure_logging("info", "auto")  # to stderr: stdout is the JSON answer
    try:
        aws_settings = load(AwsSettings, overrides=aws, toml_path=config, section="aws")
    except (ConfigError, ValueError) as exc:
        return _error("init-aws", f"bad settings: {exc}")
    try:
        created = asyncio.run(init_aws(aws_settings))
    except AwsError as exc:
        return _error("init-aws", str(exc))
    sys.stdout.write(json.dumps(created, indent=2) + "\n")
    return 0
