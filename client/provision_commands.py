"""``taskmill provision``: static worker instances, the autoscaler, its simulation.

    taskmill provision static -n N -t TYPE [--ami ID | --launch-template NAME] ...
    taskmill provision list [--all-fleets] [--json]
    taskmill provision stop (--all | ID ...)
    taskmill provision auto --min 0 --max M [--slots-per-worker S] [--interval 10] ...
    taskmill provision simulate (--trace FILE | --burst N ...) [--plot FILE.png]

:func:`add_provision_commands` registers the group on the main parser. Provisioner
code (and aioboto3, matplotlib) is imported only inside the command functions, so the
other commands never load it. Settings: flags > ``TASKMILL_*`` > ``--config`` TOML
(``[aws]`` and ``[provision]`` tables) > defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.argtypes import non_negative_int as _count
from client.argtypes import non_negative_number as _number
from client.argtypes import positive_int as _positive_int
from client.argtypes import positive_number as _positive

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_AWS = 3
PROG = "taskmill provision"


def _error(message: str) -> None:
    print(f"taskmill: error: {message}", file=sys.stderr)


def _words(values: list[str] | None) -> tuple[str, ...] | None:
    """Repeated and/or comma-separated flag values, or None when not given."""
    if not values:
        return None
    return tuple(w.strip() for v in values for w in v.split(",") if w.strip())


# --- options ------------------------------------------------------------------------------


def _add_aws(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("AWS resources (default: TASKMILL_* environment, --config)")
    g.add_argument("--config", metavar="FILE.toml", help="settings file: [aws], [provision]")
    g.add_argument("--aws-region", "--region", dest="aws_region", metavar="REGION")
    g.add_argument("--aws-endpoint-url", metavar="URL", help="e.g. a moto server")
    g.add_argument("--request-queue", metavar="NAME", help="the queue the workers read")
    g.add_argument("--workers-table", metavar="NAME")
    g.add_argument(
        "--fleet", metavar="NAME", help="the taskmill:fleet tag to manage (default: default)"
    )


def _add_launch(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("worker instances")
    g.add_argument("-t", "--instance-type", metavar="TYPE")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--ami", metavar="ID", help="image to boot (cloud-init, Python 3.11+)")
    src.add_argument("--launch-template", metavar="NAME", help="e.g. the CloudFormation one")
    g.add_argument("--subnet", action="append", metavar="ID", help="repeat to spread over AZs")
    g.add_argument("--security-group", action="append", metavar="ID")
    g.add_argument("--instance-profile", metavar="NAME|ARN", help="the worker role's profile")
    g.add_argument("--key-name", metavar="NAME")
    g.add_argument("--tag", action="append", metavar="K=V", help="extra tag (repeatable)")
    g.add_argument("--slots-per-worker", type=_positive_int, metavar="S", help="taskmill worker -t")
    g.add_argument("--worker-idle", type=_number, metavar="S", help="taskmill worker -i")
    g.add_argument("--worker-args", metavar="ARGS", help='more worker flags, "--handlers m"')
    g.add_argument("--install", action="append", metavar="REQ", help="pip requirement for the venv")
    g.add_argument("--user-data-template", metavar="FILE")


def _add_policy(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scaling policy")
    g.add_argument(
        "--min", dest="min_workers", type=_count, metavar="N", help="while idle (default 0)"
    )
    g.add_argument(
        "--max", dest="max_workers", type=_positive_int, metavar="M", help="(default 10)"
    )
    g.add_argument("--target-backlog-per-slot", type=_positive, metavar="X", help="(default 1)")
    g.add_argument(
        "--tasks-per-message", type=_positive, metavar="X", help="tasks one message stands for"
    )
    g.add_argument("--cooldown", type=_number, metavar="S", help="idle time before retiring")
    g.add_argument("--interval", type=_positive, metavar="S", help="seconds between ticks")


def _add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default=os.environ.get("TASKMILL_LOG_FORMAT", "auto"),
    )
    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=("debug", "info", "warning", "error"),
        default=os.environ.get("TASKMILL_LOG_LEVEL", "info").lower(),
    )


def add_provision_commands(sub: Any) -> None:
    """Register ``provision`` and its subcommands on the main parser's subparsers."""
    group = sub.add_parser(
        "provision", help="EC2 worker instances: static, list, stop, auto(scaler), simulate"
    )
    cmds = group.add_subparsers(dest="provision_command", required=True, metavar="COMMAND")

    p = cmds.add_parser("static", help="launch N tagged worker instances")
    p.add_argument("-n", "--count", type=_positive_int, required=True, metavar="N")
    _add_aws(p)
    _add_launch(p)
    p.add_argument("--dry-run", action="store_true", help="print the request, launch nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_static)

    p = cmds.add_parser("list", help="the fleet's instances")
    _add_aws(p)
    p.add_argument("--all-fleets", action="store_true", help="every taskmill worker instance")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_list)

    p = cmds.add_parser("stop", help="terminate worker instances of the fleet")
    _add_aws(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every instance of the fleet")
    which.add_argument("ids", nargs="*", default=[], metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_stop)

    p = cmds.add_parser("auto", help="the autoscaler daemon (until SIGINT/SIGTERM)")
    _add_aws(p)
    _add_launch(p)
    _add_policy(p)
    p.add_argument(
        "--boot-timeout", type=_number, metavar="S", help="no worker by then: terminate (900)"
    )
    p.add_argument("--stale-after", type=_number, metavar="S", help="0: never")
    p.add_argument("--record", metavar="FILE", help="append each tick's inputs and decision")
    p.add_argument("--dry-run", action="store_true", help="decide and log, change nothing")
    _add_logging(p)
    p.set_defaults(func=_auto)

    p = cmds.add_parser("simulate", help="replay a workload through the scaling policy")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--trace", metavar="FILE", help='JSON Lines {"at","count","duration"}')
    src.add_argument("--burst", type=_positive_int, metavar="N", help="N tasks (default 400)")
    p.add_argument("--task-duration", type=_number, default=20.0, metavar="S")
    p.add_argument("--bursts", type=_positive_int, default=1, metavar="K")
    p.add_argument("--gap", type=_number, default=600.0, metavar="S", help="between bursts")
    _add_policy(p)
    p.add_argument("--slots-per-worker", type=_positive_int, default=4, metavar="S")
    p.add_argument("--boot-time", type=_number, default=30.0, metavar="S")
    p.add_argument("--worker-idle", type=_number, default=0.0, metavar="S", help="0: never")
    p.add_argument("--heartbeat", type=_positive, default=5.0, metavar="S")
    p.add_argument("--step", type=_positive, default=1.0, metavar="S")
    p.add_argument("--plot", metavar="FILE.png", default="autoscale-sim.png")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--title", default="", help="plot title")
    p.add_argument("--record", metavar="FILE", help="write each tick's inputs and decision")
    p.set_defaults(func=_simulate)


# --- settings -----------------------------------------------------------------------------


def _load(a: argparse.Namespace) -> tuple[Any, Any]:
    """(AwsSettings, ProvisionSettings) from flags > environment > TOML; ValueError."""
    from protocol.aws import AwsSettings
    from protocol.config import load
    from provisioner.settings import ProvisionSettings

    aws = load(
        AwsSettings,
        overrides={
            "aws_region": a.aws_region,
            "aws_endpoint_url": a.aws_endpoint_url,
            "request_queue": a.request_queue,
            "workers_table": a.workers_table,
        },
        toml_path=a.config,
        section="aws",
    )
    g = vars(a)
    overrides = {
        "fleet": a.fleet,
        "instance_type": g.get("instance_type"),
        "ami": g.get("ami"),
        "launch_template": g.get("launch_template"),
        "subnets": _words(g.get("subnet")),
        "security_groups": _words(g.get("security_group")),
        "instance_profile": g.get("instance_profile"),
        "key_name": g.get("key_name"),
        "tags": tuple(g["tag"]) if g.get("tag") else None,
        "slots_per_worker": g.get("slots_per_worker"),
        "worker_idle_s": g.get("worker_idle"),
        "worker_args": g.get("worker_args"),
        "install": _words(g.get("install")),
        "user_data_template": g.get("user_data_template"),
        "min_workers": g.get("min_workers"),
        "max_workers": g.get("max_workers"),
        "scale_interval_s": g.get("interval"),
        "cooldown_s": g.get("cooldown"),
        "target_backlog_per_slot": g.get("target_backlog_per_slot"),
        "tasks_per_message": g.get("tasks_per_message"),
        "boot_timeout_s": g.get("boot_timeout"),
        "stale_after_s": g.get("stale_after"),
    }
    settings = load(ProvisionSettings, overrides=overrides, toml_path=a.config, section="provision")
    return aws, settings


def _guarded(body: Callable[[], int]) -> int:
    """Run a command body; bad settings exit 2, AWS failures exit 3, with one line each.
    Logs go to stderr (``$TASKMILL_LOG_LEVEL``, default warning): stdout is for results."""
    from client.commands import configure_client_logging
    from protocol.aws import AwsError
    from provisioner.userdata import UserDataError

    configure_client_logging()
    try:
        return body()
    except AwsError as exc:
        _error(str(exc))
        return EXIT_AWS
    except (ValueError, UserDataError) as exc:  # ConfigError is a ValueError
        _error(str(exc))
        return EXIT_USAGE


# --- commands -----------------------------------------------------------------------------


def _static(a: argparse.Namespace) -> int:
    def body() -> int:
        from client.loop import run
        from protocol.aws import AwsClients
        from provisioner.ec2 import Fleet, run_instances_params
        from provisioner.userdata import worker_user_data

        aws, settings = _load(a)
        settings.check_launchable()
        if a.dry_run:
            user_data = worker_user_data(aws, settings)
            params = run_instances_params(aws, settings, a.count, user_data, None)
            print(json.dumps({**params, "UserData": "<below>"}, indent=2))
            print(user_data, end="")
            return EXIT_OK

        async def launch() -> list[Any]:
            async with AwsClients(aws).client("ec2") as ec2:
                return await Fleet(aws, settings, ec2).launch(a.count)

        launched = run(launch())
        for inst in launched:
            print(json.dumps(inst.as_dict()) if a.json else inst.id)
        if len(launched) < a.count:
            _error(f"EC2 launched {len(launched)} of {a.count} instances (capacity)")
            return EXIT_AWS
        return EXIT_OK

    return _guarded(body)


def _list(a: argparse.Namespace) -> int:
    def body() -> int:
        from client.loop import run
        from protocol.aws import AwsClients
        from provisioner.ec2 import LISTED_STATES, Fleet

        aws, settings = _load(a)

        async def listing() -> list[Any]:
            async with AwsClients(aws).client("ec2") as ec2:
                fleet = Fleet(aws, settings, ec2)
                return await fleet.instances(LISTED_STATES, all_fleets=a.all_fleets)

        found = run(listing())
        if a.json:
            for inst in found:
                print(json.dumps(inst.as_dict()))
            return EXIT_OK
        print(f"{'INSTANCE':<20} {'STATE':<13} {'TYPE':<12} {'PRIVATE IP':<15} FLEET")
        for inst in found:
            d = inst.as_dict()
            row = (d["id"], d["state"], d["type"], d["private_ip"])
            print("{:<20} {:<13} {:<12} {:<15}".format(*row), d["fleet"])
        return EXIT_OK

    return _guarded(body)


def _stop(a: argparse.Namespace) -> int:
    def body() -> int:
        from client.loop import run
        from protocol.aws import AwsClients
        from provisioner.ec2 import ALIVE_STATES, Fleet

        aws, settings = _load(a)

        async def stop() -> list[str]:
            async with AwsClients(aws).client("ec2") as ec2:
                fleet = Fleet(aws, settings, ec2)
                ids = a.ids
                if a.all:
                    ids = [i.id for i in await fleet.instances((*ALIVE_STATES, "stopped"))]
                return await fleet.terminate(ids)

        done = run(stop())
        print(json.dumps({"terminated": done}) if a.json else "\n".join(done))
        return EXIT_OK

    return _guarded(body)


def _auto(a: argparse.Namespace) -> int:
    def body() -> int:
        from provisioner.autoscaler import serve

        aws, settings = _load(a)
        settings.check_launchable()
        record = Path(a.record) if a.record else None
        return serve(
            aws,
            settings,
            record=record,
            dry_run=a.dry_run,
            log_level=a.log_level,
            log_format=a.log_format,
        )

    return _guarded(body)


def _simulate(a: argparse.Namespace) -> int:
    def body() -> int:
        from provisioner.policy import PolicyConfig
        from provisioner.simulate import SimSettings, bursts, load_trace, simulate

        arrivals = (
            load_trace(Path(a.trace))
            if a.trace
            else bursts(a.burst or 400, a.task_duration, bursts=a.bursts, gap_s=a.gap)
        )
        given = {
            "min_workers": a.min_workers,
            "max_workers": a.max_workers,
            "slots_per_worker": a.slots_per_worker,
            "target_backlog_per_slot": a.target_backlog_per_slot,
            "tasks_per_message": a.tasks_per_message,
            "cooldown_s": a.cooldown,
        }
        policy = PolicyConfig(**{k: v for k, v in given.items() if v is not None})
        sim = SimSettings(
            policy=policy,
            interval_s=a.interval or 10.0,
            boot_s=a.boot_time,
            heartbeat_s=a.heartbeat,
            worker_idle_s=a.worker_idle,
            step_s=a.step,
        )
        if a.record:
            with open(a.record, "w", encoding="utf-8") as fh:
                result = simulate(arrivals, sim, record=fh)
        else:
            result = simulate(arrivals, sim)
        report = result.report()
        if not a.no_plot:
            from provisioner.plot import PlotUnavailable, plot

            try:
                report["plot"] = str(plot(result, Path(a.plot), title=a.title))
            except PlotUnavailable as exc:
                _error(str(exc))
                return EXIT_USAGE
        print(json.dumps(report))
        return EXIT_OK if result.complete else 1

    try:
        return _guarded(body)
    except OSError as exc:
        _error(f"{exc.filename}: {exc.strerror}")
        return EXIT_USAGE
