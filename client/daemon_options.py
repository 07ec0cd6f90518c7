"""``taskmill scheduler`` flags beyond the core ones: remote execution through SQS,
the web monitor, security and limits. Each maps to a SchedulerSettings or AwsSettings
field; a flag left out is ``None`` so the environment or the TOML file can supply it.
"""

from __future__ import annotations

import argparse
from typing import Any

# (flag, settings field, type, metavar, help); store_true flags have type None.
SCHEDULER_FLAGS: tuple[tuple[str, str, Any, str | None, str], ...] = (
    (
        "--remote",
        "remote",
        None,
        None,
        "also send tasks to remote workers through the SQS request queue (alias -rw)",
    ),
    (
        "--max-bundle-tasks",
        "max_bundle_tasks",
        int,
        "N",
        "tasks per SQS message at most (1000; 1 turns bundling off)",
    ),
    (
        "--scheduler-id",
        "scheduler_id",
        str,
        "ID",
        "names this scheduler's reply queue (default: kept in the state dir)",
    ),
    ("--monitor-host", "monitor_host", str, "HOST", "web monitor address (default: 127.0.0.1)"),
    (
        "--monitor-port",
        "monitor_port",
        int,
        "PORT",
        "web monitor port (default: 7071; negative: no monitor)",
    ),
    (
        "--stuck-after",
        "stuck_after_s",
        float,
        "S",
        "unhealthy when work is queued and nothing finished for this long (default: 60)",
    ),
    (
        "--token-file",
        "token_file",
        str,
        "FILE",
        "accepted tokens, one 'TOKEN [USER]' per line (or TASKMILL_TOKEN)",
    ),
    (
        "--insecure",
        "insecure",
        None,
        None,
        "allow listening beyond loopback without a token (a trusted network only)",
    ),
    ("--tls-cert", "tls_cert", str, "PEM", "serve TLS with this certificate (chain)"),
    ("--tls-key", "tls_key", str, "PEM", "the certificate's private key"),
    ("--max-connections", "max_connections", int, "N", "client connections at once (1000)"),
    (
        "--read-timeout",
        "read_timeout_s",
        float,
        "S",
        "a started frame must be complete within this (30)",
    ),
    ("--max-frame-bytes", "max_frame_bytes", int, "BYTES", "largest frame accepted (16 MiB)"),
    ("--max-tasks-per-submit", "max_tasks_per_submit", int, "N", "tasks in one submit (100000)"),
)
AWS_FLAGS: tuple[tuple[str, str, Any, str | None, str], ...] = (
    (
        "--aws-endpoint-url",
        "aws_endpoint_url",
        str,
        "URL",
        "AWS endpoint (a moto or LocalStack server); default: AWS itself",
    ),
    ("--region", "aws_region", str, "REGION", "AWS region (default: us-east-1)"),
    ("--request-queue", "request_queue", str, "NAME", "SQS request queue (taskmill-requests)"),
    (
        "--reply-queue-prefix",
        "reply_queue_prefix",
        str,
        "PREFIX",
        "reply queues are PREFIX + scheduler id (taskmill-replies-)",
    ),
    ("--tasks-table", "tasks_table", str, "NAME", "DynamoDB tasks table (taskmill-tasks)"),
    ("--workers-table", "workers_table", str, "NAME", "DynamoDB workers table (taskmill-workers)"),
)


def add_daemon_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("remote workers, monitor, security")
    group.add_argument(
        "--autoscale",
        action="store_true",
        help="run the EC2 autoscaler in this process (settings: TASKMILL_* and the TOML "
        "[provision] table, as for `taskmill provision auto`)",
    )
    for flag, field, kind, metavar, help_text in SCHEDULER_FLAGS + AWS_FLAGS:
        names = [flag, "-rw"] if field == "remote" else [flag]
        if kind is None:
            group.add_argument(*names, dest=field, action="store_const", const=True, help=help_text)
        else:
            group.add_argument(*names, dest=field, type=kind, metavar=metavar, help=help_text)


def daemon_overrides(a: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(SchedulerSettings overrides, AwsSettings overrides) from the parsed flags."""
    scheduler = {field: getattr(a, field) for _, field, *_ in SCHEDULER_FLAGS}
    aws = {field: getattr(a, field) for _, field, *_ in AWS_FLAGS}
    return scheduler, aws
