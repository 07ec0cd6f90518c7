"""The CLI's commands: each takes plain arguments and returns the process exit status.

Exit status: 0 all tasks succeeded (or the command did what it was asked), 1 some
task did not succeed, 2 bad input (usage, workload, address, settings, a request the
scheduler refused, no scheduler to talk to), 3 the connection was lost mid-way (and,
unless reconnection is off, could not be made again within its timeout).
``client.cli`` maps :class:`ClientError` and friends to those codes and messages.

The scheduler is imported only inside :func:`cmd_run` and :func:`cmd_scheduler`:
``taskmill client`` and the other client commands never load scheduler code.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from client.client import DEFAULT_BATCH_SIZE, DEFAULT_RECONNECT_TIMEOUT_S, Client, Submission
from client.errors import ClientError, os_reason
from client.loop import run as run_async
from client.progress import Progress
from client.summary import ResultWriter, Summary, describe_failure
from client.workload import generate_workload, load_workload
from protocol.config import ConfigError
from protocol.model import ALL_STATES

EXIT_OK = 0
EXIT_TASKS_FAILED = 1
EXIT_USAGE = 2
EXIT_CONNECTION_LOST = 3
EXIT_UNHEALTHY = 1
FAILURES_SHOWN = 3


class CommandError(ClientError):
    """Bad input to a command (an output file that cannot be written, bad settings...)."""


@dataclass(frozen=True, slots=True)
class Server:
    """Where a client command connects, and whether it reconnects after a loss."""

    host: str
    port: int
    reconnect: bool = True
    reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S
    token: str | None = None
    tls_ca: str | None = None
    tls: bool = False

    def client(self) -> Client:
        return Client(
            self.host,
            self.port,
            reconnect=self.reconnect,
            reconnect_timeout_s=self.reconnect_timeout_s,
            token=self.token,
            tls_ca=self.tls_ca,
            tls=self.tls,
        )


def read_token(path: str | None) -> str | None:
    """The client's secret: the first word of ``path``, else ``$TASKMILL_TOKEN``."""
    if path is None:
        return os.environ.get("TASKMILL_TOKEN") or None
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                words = line.split("#", 1)[0].split()
                if words:
                    return words[0]
    except OSError as exc:
        raise CommandError(f"cannot read the token file {path}: {os_reason(exc)}") from None
    raise CommandError(f"the token file {path} holds no token")


@dataclass(frozen=True, slots=True)
class TaskDefaults:
    """Submission-wide settings: batch defaults and per-task fallbacks."""

    user: str | None = None
    priority: int | None = None
    max_attempts: int | None = None  # for tasks that set none
    timeout_s: float | None = None  # for tasks that set none
    batch_size: int = DEFAULT_BATCH_SIZE


class _Stderr:
    """``sys.stderr`` as it is at each write, for a logger configured once."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_client_logging() -> None:
    """Client commands log (reconnections) to stderr: ``$TASKMILL_LOG_LEVEL`` or warning."""
    from protocol.logs import configure_logging

    level = os.environ.get("TASKMILL_LOG_LEVEL") or "warning"
    fmt = os.environ.get("TASKMILL_LOG_FORMAT") or "auto"
    try:
        configure_logging(level, fmt, stream=_Stderr())
    except ValueError as exc:
        raise CommandError(f"bad logging settings in the environment: {exc}") from None


@contextlib.contextmanager
def open_output(path: str | None) -> Iterator[ResultWriter | None]:
    """A :class:`ResultWriter` on ``path`` (``-`` is stdout), opened before any work."""
    if path is None:
        yield None
        return
    if path == "-":
        yield ResultWriter(sys.stdout)
        return
    try:
        fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise CommandError(f"cannot write the output file {path}: {os_reason(exc)}") from None
    with fh:
        yield ResultWriter(fh)


def load_tasks(path: str, fmt: str) -> list[dict[str, Any]]:
    tasks = load_workload(path, fmt)
    if not tasks:
        raise CommandError(f"{path}: the workload has no tasks")
    return tasks


# --- submit + wait ----------------------------------------------------------------------


async def submit(
    client: Client, tasks: Sequence[dict[str, Any]], defaults: TaskDefaults
) -> Submission:
    return await client.submit(
        tasks,
        user=defaults.user,
        priority=defaults.priority,
        batch_size=defaults.batch_size,
        max_attempts=defaults.max_attempts,
        timeout_s=defaults.timeout_s,
    )


async def submit_and_wait(
    client: Client,
    tasks: Sequence[dict[str, Any]],
    defaults: TaskDefaults | None = None,
    *,
    writer: ResultWriter | None = None,
    progress: Progress | None = None,
) -> Summary:
    """Submit ``tasks`` as one job and collect every result into a :class:`Summary`."""
    progress = progress or Progress(len(tasks))
    start = time.perf_counter()
    submission = await submit(client, tasks, defaults or TaskDefaults())
    summary = Summary(job=submission.job, expected=len(submission.ids))
    progress.update(0, total=len(submission.ids))
    try:
        async with contextlib.aclosing(client.result_batches(submission.job)) as batches:
            async for batch in batches:
                summary.add(batch.results)
                if writer is not None:
                    writer.write(batch.results)
                progress.update(summary.tasks, summary.failed)
    finally:
        summary.elapsed_s = time.perf_counter() - start
        progress.close()
    return summary


def report(summary: Summary, *, as_json: bool, out: TextIO | None = None) -> int:
    """Print failures (stderr) and the summary (stdout); return the exit status."""
    out = out or sys.stdout
    for failure in summary.failures[:FAILURES_SHOWN]:
        print(f"taskmill: {describe_failure(failure)}", file=sys.stderr)
    if summary.failed > FAILURES_SHOWN:
        more = summary.failed - FAILURES_SHOWN
        print(f"taskmill: ... and {more} more tasks did not succeed", file=sys.stderr)
    missing = (summary.expected or 0) - summary.tasks
    if missing > 0:
        print(f"taskmill: warning: {missing} results never arrived", file=sys.stderr)
    print(summary.to_json() if as_json else summary.line(), file=out)
    out.flush()
    return EXIT_TASKS_FAILED if summary.failed or missing > 0 else EXIT_OK


def cmd_client(
    server: Server,
    *,
    workload: str,
    fmt: str = "auto",
    output: str | None = None,
    as_json: bool = False,
    defaults: TaskDefaults | None = None,
) -> int:
    """``taskmill client``: submit a workload to a running scheduler and wait."""
    tasks = load_tasks(workload, fmt)
    configure_client_logging()

    async def go(writer: ResultWriter | None) -> Summary:
        async with server.client() as client:
            return await submit_and_wait(client, tasks, defaults, writer=writer)

    with open_output(output) as writer:
        summary = run_async(go(writer))
    return report(summary, as_json=as_json)


def cmd_run(
    *,
    workload: str,
    fmt: str = "auto",
    settings: Mapping[str, Any] | None = None,
    output: str | None = None,
    as_json: bool = False,
    defaults: TaskDefaults | None = None,
    log_level: str | None = None,
) -> int:
    """``taskmill run``: an in-process scheduler with local workers, then the client.

    ``settings`` are scheduler setting overrides (``None`` values: not given). The
    state is kept in memory unless ``state_dir`` is given: a one-shot run has nothing
    to come back to.
    """
    from protocol.config import load
    from protocol.logs import configure_logging
    from scheduler.app import Scheduler
    from scheduler.errors import SchedulerError
    from scheduler.settings import SchedulerSettings

    tasks = load_tasks(workload, fmt)
    if log_level is None and "TASKMILL_LOG_LEVEL" not in os.environ:
        log_level = "warning"  # an embedded scheduler stays quiet unless asked
    overrides: dict[str, Any] = {**(settings or {}), "host": "127.0.0.1", "port": 0}
    if overrides.get("state_dir") is None:
        overrides["state_dir"] = "none"
    if overrides.get("monitor_port") is None:
        overrides["monitor_port"] = -1  # no web monitor for a one-shot run unless asked
    overrides["log_level"] = log_level
    try:
        scheduler_settings = load(SchedulerSettings, overrides=overrides)
        configure_logging(scheduler_settings.log_level, scheduler_settings.log_format)
    except (ConfigError, ValueError) as exc:
        raise CommandError(f"bad scheduler settings: {exc}") from None

    async def go(writer: ResultWriter | None) -> Summary:
        scheduler = Scheduler(scheduler_settings)
        try:
            await scheduler.start()
        except SchedulerError as exc:
            raise CommandError(f"cannot start the embedded scheduler: {exc}") from None
        try:
            # Reconnecting cannot bring back a scheduler that lives in this process.
            async with Client(
                "127.0.0.1",
                scheduler.port,
                max_frame=scheduler_settings.max_frame_bytes,
                reconnect=False,
            ) as c:
                return await submit_and_wait(c, tasks, defaults, writer=writer)
        finally:
            await scheduler.close()

    with open_output(output) as writer:
        summary = run_async(go(writer))
    return report(summary, as_json=as_json)


def cmd_scheduler(
    *,
    settings: Mapping[str, Any] | None = None,
    aws: Mapping[str, Any] | None = None,
    config: str | None = None,
    autoscale: bool = False,
) -> int:
    """``taskmill scheduler``: the daemon, until SIGINT/SIGTERM.

    ``settings`` and ``aws`` are the flags given (``None``: not given, so the
    environment or the ``config`` file, its top level and its ``[aws]`` table,
    supplies the value).
    """
    from protocol.aws import AwsSettings
    from protocol.config import load
    from scheduler.main import serve
    from scheduler.settings import SchedulerSettings

    try:
        scheduler_settings = load(SchedulerSettings, overrides=settings, toml_path=config)
        aws_settings = load(AwsSettings, overrides=aws, toml_path=config, section="aws")
    except (ConfigError, ValueError) as exc:
        raise CommandError(f"bad scheduler settings: {exc}") from None
    services = []
    if autoscale:
        # The CLI composes: the scheduler does not import the provisioner.
        from provisioner.autoscaler import Autoscaler
        from provisioner.settings import ProvisionSettings

        try:
            provision = load(ProvisionSettings, toml_path=config, section="provision")
            services.append(Autoscaler(aws_settings, provision))
        except (ConfigError, ValueError) as exc:
            raise CommandError(f"bad autoscaler settings: {exc}") from None
    return serve(scheduler_settings, aws_settings, services)


def cmd_workload_gen(nb_tasks: int, sleep_ms: str, *, output: str | None = None) -> int:
    """``taskmill workload-gen``: NB_TASKS lines of ``sleep SECONDS``."""
    try:
        lines = generate_workload(nb_tasks, sleep_ms)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    text = "".join(line + "\n" for line in lines)
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return EXIT_OK
    try:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {os_reason(exc)}") from None
    return EXIT_OK


# --- job lifecycle (issue 3) -----------------------------------------------------------


def cmd_submit(
    server: Server,
    *,
    workload: str,
    fmt: str = "auto",
    as_json: bool = False,
    defaults: TaskDefaults | None = None,
) -> int:
    """``taskmill submit``: submit a workload, print the job id, do not wait."""
    tasks = load_tasks(workload, fmt)
    configure_client_logging()

    async def go() -> Submission:
        async with server.client() as client:
            return await submit(client, tasks, defaults or TaskDefaults())

    submission = run_async(go())
    job = submission.job
    print(json.dumps({"job": job, "tasks": len(submission)}) if as_json else job)
    return EXIT_OK


def format_status(status: dict[str, Any]) -> str:
    """One line for a ``status`` reply (job counts, or one task's record)."""
    if status.get("kind") == "job":
        counts: dict[str, int] = status.get("counts") or {}
        order = [s.value for s in ALL_STATES] + sorted(set(counts) - {s.value for s in ALL_STATES})
        parts = [f"{counts[s]} {s}" for s in order if counts.get(s)]
        flags = ["sealed" if status.get("sealed") else "open"]
        if status.get("done"):
            flags.append("done")
        total = status.get("total", sum(counts.values()))
        body = ", ".join(parts) if parts else "no tasks"
        return f"job {status.get('job')} ({', '.join(flags)}): {total} tasks: {body}"
    task: dict[str, Any] = status.get("task") or {}
    raw_result = task.get("result")
    result: dict[str, Any] = raw_result if isinstance(raw_result, dict) else task
    details = [f"job {task['job']}"] if task.get("job") else []
    if task.get("attempt") is not None:
        attempts = task.get("max_attempts")
        details.append(f"attempt {task['attempt']}" + (f"/{attempts}" if attempts else ""))
    if task.get("worker"):
        details.append(f"worker {task['worker']}")
    if result.get("exit_code") is not None:
        details.append(f"exit {result['exit_code']}")
    started, finished = task.get("started"), task.get("finished")
    if isinstance(started, int | float) and isinstance(finished, int | float):
        details.append(f"{finished - started:.3f}s")
    line = f"task {task.get('id')}: {task.get('state')}"
    if details:
        line += f" ({', '.join(details)})"
    if result.get("error"):
        line += f": {result['error']}"
    return line


def cmd_status(server: Server, *, id: str, as_json: bool = False) -> int:
    """``taskmill status ID``: a job's state counts or one task's state."""
    configure_client_logging()

    async def go() -> dict[str, Any]:
        async with server.client() as client:
            return await client.status(id)

    status = run_async(go())
    print(json.dumps(status, default=repr) if as_json else format_status(status))
    return EXIT_OK


def cmd_results(
    server: Server,
    *,
    job: str,
    output: str | None = None,
    follow: bool = False,
    as_json: bool = False,
) -> int:
    """``taskmill results JOB``: results so far (or, with ``--follow``, all of them).

    Without ``--output`` the results go to stdout as JSON Lines; with it they go to
    the file and the summary is printed. Exit status 1 when some task did not succeed.
    A lost connection is made again and the stream goes on where it stopped.
    """
    configure_client_logging()

    async def go(writer: ResultWriter) -> Summary:
        async with server.client() as client:
            summary = Summary(job=job)
            progress = Progress(enabled=False if output is None else None)
            start = time.perf_counter()
            try:
                batches = client.result_batches(job, follow=follow)
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        summary.add(batch.results)
                        writer.write(batch.results)
                        progress.update(summary.tasks, summary.failed, total=batch.total)
            finally:
                summary.elapsed_s = time.perf_counter() - start
                progress.close()
            return summary

    with open_output(output or "-") as writer:
        assert writer is not None
        summary = run_async(go(writer))
    if output is None and not as_json:
        return EXIT_TASKS_FAILED if summary.failed else EXIT_OK
    return report(summary, as_json=as_json)


def cmd_cancel(server: Server, *, id: str, as_json: bool = False) -> int:
    """``taskmill cancel ID``: cancel a job's unfinished tasks, or one task."""
    configure_client_logging()

    async def go() -> int:
        async with server.client() as client:
            return await client.cancel(id)

    cancelled = run_async(go())
    if as_json:
        print(json.dumps({"id": id, "cancelled": cancelled}))
    else:
        print(f"cancelled {cancelled} task{'s' if cancelled != 1 else ''} of {id}")
    return EXIT_OK


def cmd_health(server: Server, *, as_json: bool = False) -> int:
    """``taskmill health``: warn and exit 1 when the scheduler is unhealthy.

    The scheduler decides (no workers, a stuck queue, AWS unreachable); this prints
    its reasons, like the seed's "LB HAS NO WORKERS" warning, made useful.
    """
    configure_client_logging()

    async def go() -> dict[str, Any]:
        async with server.client() as client:
            return await client.stats()

    stats = run_async(go())
    problems: list[str] = list(stats.get("health") or [])
    workers = stats.get("workers") or []
    if as_json:
        print(
            json.dumps(
                {
                    "ok": not problems,
                    "problems": problems,
                    "workers": len(workers),
                    "queued": stats.get("queued"),
                    "running": stats.get("running"),
                }
            )
        )
    elif problems:
        for problem in problems:
            print(f"taskmill: WARNING: {problem}", file=sys.stderr)
    else:
        print(
            f"healthy: {len(workers)} workers, {stats.get('queued', 0)} queued, "
            f"{stats.get('running', 0)} running, {stats.get('finished', 0)} finished"
        )
    return EXIT_UNHEALTHY if problems else EXIT_OK
