"""The ``taskmill`` command line: argument parsing and dispatch to :mod:`client.commands`.

    taskmill scheduler [--host H] [--port|-s PORT] [-lw SPEC] [--handlers MOD] [--state-dir D]
    taskmill client -s HOST:PORT -w WORKLOAD [--output F] [--json]
    taskmill run -w WORKLOAD [-lw SPEC] [--handlers MOD] [--output F] [--json]
    taskmill workload-gen NB_TASKS SLEEP_MS [-o FILE]
    taskmill submit|status|results|cancel -s HOST:PORT ...
    taskmill worker -s QUEUE -t N [-i IDLE_SECONDS] [--handlers MOD]   (client/aws_commands.py)
    taskmill init-aws

``taskmill scheduler --help`` lists every setting; a flag left out is ``None`` here, so
the environment (``TASKMILL_*``) or the ``--config`` file can supply it.

This module is the composition root: scheduler code is imported only when the
``scheduler`` or ``run`` command runs, worker and AWS code only for ``worker`` and
``init-aws``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from client import aws_commands, commands
from client.address import DEFAULT_PORT, AddressError, parse_address
from client.argtypes import non_negative_int as _non_negative
from client.argtypes import positive_int as _positive
from client.argtypes import positive_seconds as _positive_seconds
from client.argtypes import seconds as _seconds
from client.client import DEFAULT_BATCH_SIZE, DEFAULT_RECONNECT_TIMEOUT_S
from client.daemon_options import add_daemon_options, daemon_overrides
from client.errors import ClientError, ConnectionLost
from client.provision_commands import add_provision_commands
from client.workload import FORMATS
from protocol.errors import ProtocolError, RemoteError
from protocol.messages import MAX_ATTEMPTS_LIMIT

DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
PROG = "taskmill"

EPILOG = """exit status: 0 every task succeeded, 1 some task did not succeed,
2 bad input (usage, workload, address, refused request, no scheduler), 3 connection lost
(and not made again within --reconnect-timeout)."""


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"port must be a number from 0 to 65535, got {text!r}")
    return int(text)


def _max_attempts(text: str) -> int:
    value = _positive(text)
    if value > MAX_ATTEMPTS_LIMIT:
        raise argparse.ArgumentTypeError(f"at most {MAX_ATTEMPTS_LIMIT} attempts, got {value}")
    return value


RETRYABLE = ("failed", "timed_out")


def _retry_on(text: str) -> tuple[str, ...]:
    """``failed,timed_out``, either one, or ``none`` (never retry)."""
    if text.strip().lower() in ("", "none"):
        return ()
    states = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in states if s not in RETRYABLE]
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected failed, timed_out, both (comma-separated) or none, got {', '.join(bad)}"
        )
    return tuple(dict.fromkeys(states))


def _add_server(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-s",
        "--server",
        type=_address,
        default=os.environ.get("TASKMILL_SERVER", DEFAULT_SERVER),
        metavar="HOST:PORT",
        help=f"the scheduler's address (default: $TASKMILL_SERVER or {DEFAULT_SERVER})",
    )
    p.add_argument(
        "--no-reconnect",
        dest="reconnect",
        action="store_false",
        help="fail (exit 3) when the connection is lost instead of reconnecting",
    )
    p.add_argument(
        "--reconnect-timeout",
        type=_seconds,
        default=DEFAULT_RECONNECT_TIMEOUT_S,
        metavar="S",
        help="how long to try to reconnect after a lost connection "
        f"(default: {DEFAULT_RECONNECT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the token from FILE (first word of the first line); default: $TASKMILL_TOKEN",
    )
    p.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, trusting this CA file")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system CAs)")


def _add_workload(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-w",
        "--workload",
        required=True,
        metavar="WORKLOAD",
        help="workload file: one shell command per line, or JSON Lines (.jsonl); - for stdin",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="workload format (default: auto, by the file name's suffix)",
    )
    p.add_argument("--user", help="user the tasks are queued for (fair share)")
    p.add_argument("--priority", type=int, help="default priority of the tasks (higher first)")
    p.add_argument(
        "--max-attempts",
        type=_max_attempts,
        metavar="N",
        help="attempts of a task that sets no max_attempts (default: 1)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="S",
        help="time limit of a task that sets no timeout_s (default: none)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=DEFAULT_BATCH_SIZE,
        help=f"tasks per submit frame (default: {DEFAULT_BATCH_SIZE})",
    )


def _add_report(p: argparse.ArgumentParser, *, output_help: str) -> None:
    p.add_argument("--output", metavar="FILE", help=output_help)
    p.add_argument(
        "--json", action="store_true", help="print the summary as a JSON object (last line)"
    )


def _add_scheduler_options(p: argparse.ArgumentParser, *, daemon: bool) -> None:
    p.add_argument(
        "--local-workers",
        "-lw",
        dest="local_workers",
        metavar="SPEC",
        help="local worker processes: N, or N:MINP-MAXP groups reserved for a priority band, "
        "comma-separated (4,2:10-99); default: one per CPU",
    )
    p.add_argument(
        "--handlers",
        action="append",
        metavar="MODULE[,MODULE]",
        help="Python module(s) registering @handler functions for call tasks",
    )
    p.add_argument(
        "--max-queued-per-user",
        type=_positive,
        metavar="N",
        help="queued tasks one user may have; more are refused with a quota error "
        "(default: 100000)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="directory of the journal that survives a restart; none keeps the state in memory"
        + (" (default: a per-user data directory)" if daemon else " (default: none)"),
    )
    if daemon:
        p.add_argument(
            "--result-ttl",
            type=_seconds,
            metavar="SECONDS",
            help="drop a job's results this long after a client collected them (default: 600)",
        )
        p.add_argument(
            "--result-max-age",
            type=_seconds,
            metavar="SECONDS",
            help="drop a job's results this long after it was created, collected or not",
        )
    p.add_argument(
        "--retry-on",
        type=_retry_on,
        metavar="STATES",
        help="outcomes retried while attempts remain: failed,timed_out (default), "
        "failed, timed_out or none",
    )
    p.add_argument(
        "--retry-backoff",
        type=_seconds,
        metavar="S",
        help="delay before the first retry; it doubles per attempt, with jitter",
    )
    p.add_argument(
        "--retry-backoff-max", type=_seconds, metavar="S", help="longest delay between retries"
    )
    p.add_argument(
        "--kill-grace",
        type=_seconds,
        metavar="S",
        help="from SIGTERM to SIGKILL when a running task is cancelled or times out",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="taskmill: run large workloads of independent tasks on a pool of workers.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("scheduler", help="run the scheduler daemon", epilog=EPILOG)
    p.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", "-s", type=_port, help=f"port to listen on (default: {DEFAULT_PORT})")
    _add_scheduler_options(p, daemon=True)
    add_daemon_options(p)
    p.add_argument("--config", metavar="FILE.toml", help="settings file (TOML)")
    p.add_argument("--log-format", choices=("auto", "json", "console"))
    p.add_argument("--log-level", type=str.lower, choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=_scheduler)

    p = sub.add_parser(
        "client", help="submit a workload to a scheduler and wait for every result", epilog=EPILOG
    )
    _add_server(p)
    _add_workload(p)
    _add_report(p, output_help="write every result as a JSON object per line")
    p.set_defaults(func=_client)

    p = sub.add_parser(
        "run", help="run a workload on an embedded scheduler with local workers", epilog=EPILOG
    )
    _add_workload(p)
    _add_scheduler_options(p, daemon=False)
    _add_report(p, output_help="write every result as a JSON object per line")
    p.add_argument("--log-level", type=str.lower, choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=_run)

    p = sub.add_parser("workload-gen", help="write a workload of sleep tasks")
    p.add_argument("nb_tasks", type=_non_negative, metavar="NB_TASKS")
    p.add_argument("sleep_ms", metavar="SLEEP_MS", help="sleep time of each task, milliseconds")
    p.add_argument("-o", "--output", metavar="FILE", help="output file (default: stdout)")
    p.set_defaults(func=_workload_gen)

    p = sub.add_parser("submit", help="submit a workload, print the job id, do not wait")
    _add_server(p)
    _add_workload(p)
    p.add_argument("--json", action="store_true", help="print {job, tasks} as JSON")
    p.set_defaults(func=_submit)

    p = sub.add_parser("status", help="state counts of a job, or one task's state")
    _add_server(p)
    p.add_argument("id", metavar="ID", help="a job id or a task id")
    p.add_argument("--json", action="store_true", help="print the status reply as JSON")
    p.set_defaults(func=_status)

    p = sub.add_parser("results", help="results of a job (so far, or --follow until done)")
    _add_server(p)
    p.add_argument("job", metavar="JOB")
    p.add_argument("--follow", action="store_true", help="stream until the job is done")
    _add_report(p, output_help="write the results there (default: stdout, JSON Lines)")
    p.set_defaults(func=_results)

    p = sub.add_parser("cancel", help="cancel a job's unfinished tasks, or one task")
    _add_server(p)
    p.add_argument("id", metavar="ID", help="a job id or a task id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cancel)

    p = sub.add_parser(
        "health", help="warn and exit 1 if the scheduler has no workers, is stuck or lost AWS"
    )
    _add_server(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: commands.cmd_health(_server(a), as_json=a.json))

    aws_commands.add_parsers(sub)
    add_provision_commands(sub)
    return parser


def _handlers(values: list[str] | None) -> str | None:
    return ",".join(values) if values else None


def _settings(a: argparse.Namespace) -> dict[str, Any]:
    """Scheduler setting overrides from the flags; ``None`` where a flag was not given."""
    return {
        "local_workers": a.local_workers,
        "handlers": _handlers(a.handlers),
        "max_queued_per_user": a.max_queued_per_user,
        "state_dir": a.state_dir,
        "result_ttl_s": getattr(a, "result_ttl", None),
        "result_max_age_s": getattr(a, "result_max_age", None),
        "retry_on": a.retry_on,
        "retry_backoff_s": a.retry_backoff,
        "retry_backoff_max_s": a.retry_backoff_max,
        "kill_grace_s": a.kill_grace,
    }


def _server(a: argparse.Namespace) -> commands.Server:
    host, port = a.server
    return commands.Server(
        host,
        port,
        reconnect=a.reconnect,
        reconnect_timeout_s=a.reconnect_timeout,
        token=commands.read_token(a.token_file),
        tls_ca=a.tls_ca,
        tls=a.tls,
    )


def _defaults(a: argparse.Namespace) -> commands.TaskDefaults:
    return commands.TaskDefaults(
        user=a.user,
        priority=a.priority,
        max_attempts=a.max_attempts,
        timeout_s=a.timeout,
        batch_size=a.batch_size,
    )


def _scheduler(a: argparse.Namespace) -> int:
    extra, aws = daemon_overrides(a)
    settings = {
        **_settings(a),
        **extra,
        "host": a.host,
        "port": a.port,
        "log_format": a.log_format,
        "log_level": a.log_level,
    }
    return commands.cmd_scheduler(
        settings=settings, aws=aws, config=a.config, autoscale=a.autoscale
    )


def _client(a: argparse.Namespace) -> int:
    return commands.cmd_client(
        _server(a),
        workload=a.workload,
        fmt=a.format,
        output=a.output,
        as_json=a.json,
        defaults=_defaults(a),
    )


def _run(a: argparse.Namespace) -> int:
    return commands.cmd_run(
        workload=a.workload,
        fmt=a.format,
        settings=_settings(a),
        output=a.output,
        as_json=a.json,
        defaults=_defaults(a),
        log_level=a.log_level,
    )


def _workload_gen(a: argparse.Namespace) -> int:
    return commands.cmd_workload_gen(a.nb_tasks, a.sleep_ms, output=a.output)


def _submit(a: argparse.Namespace) -> int:
    return commands.cmd_submit(
        _server(a), workload=a.workload, fmt=a.format, as_json=a.json, defaults=_defaults(a)
    )


def _status(a: argparse.Namespace) -> int:
    return commands.cmd_status(_server(a), id=a.id, as_json=a.json)


def _results(a: argparse.Namespace) -> int:
    return commands.cmd_results(
        _server(a), job=a.job, output=a.output, follow=a.follow, as_json=a.json
    )


def _cancel(a: argparse.Namespace) -> int:
    return commands.cmd_cancel(_server(a), id=a.id, as_json=a.json)


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConnectionLost as exc:
        _error(str(exc))
        return commands.EXIT_CONNECTION_LOST
    except RemoteError as exc:
        _error(f"the scheduler refused the request: {exc}")
        return commands.EXIT_USAGE
    except (ClientError, ProtocolError) as exc:
        _error(str(exc))
        return commands.EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # stdout went away (``| head``): stop quietly, without a second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
