"""Run taskmill and its peers on the same workloads, in one go, and compare them.

Stdlib only; runs with any Python 3.11+:

    python bench/peers/install.py          # once: bench/peers/.venv and the tools
    python bench/peers/run.py [--systems taskmill,dask,...] [--workloads noop,...]
                              [--repeat 3] [--quick] [--markdown FILE]

Prints a header JSON line, then each driver's result line as it comes, then the
ratio lines. Every (workload, system) pair runs in its own driver subprocess under
the interpreter that has its libraries: the project's ``.venv`` for taskmill
(journal off and on), ``bench/peers/.venv`` for dask, celery, dramatiq and the
process pool. Workloads are the outer loop, so the systems compared in one row ran
minutes apart, not an hour. celery and dramatiq get a private redis-server on a
free loopback port, which is stopped (by its PID) at the end, also after an error
or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers.report import markdown, ratio_lines  # noqa: E402

PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
PEERS_PYTHON = REPO / "bench" / "peers" / ".venv" / "bin" / "python"
ALL_WORKLOADS = ("noop", "shell", "short", "latency")
SHELL_WORKLOADS = ("shell", "short")
QUICK_TASKS = {"noop": 2000, "shell": 300, "short": 200, "latency": 100}
QUICK_WARMUP = 20


@dataclass(frozen=True)
class System:
    """How to run one system's driver: under which interpreter, with what it needs."""

    module: str
    python: str  # "project", "peers" or "any"
    variants: tuple[tuple[str, ...], ...] = ((),)  # extra driver args, one run-set each
    workloads: tuple[str, ...] = ALL_WORKLOADS
    tools: tuple[str, ...] = ()
    redis: bool = False


SYSTEMS = {
    "taskmill": System("taskmill", "project", (("--journal", "on"), ("--journal", "off"))),
    "dask": System("dask", "peers"),
    "celery": System("celery", "peers", tools=("redis-server",), redis=True),
    "dramatiq": System("dramatiq", "peers", tools=("redis-server",), redis=True),
    "pool": System("pool", "peers"),
    "xargs": System("xargs", "any", workloads=SHELL_WORKLOADS, tools=("xargs",)),
    "parallel": System("parallel", "any", workloads=SHELL_WORKLOADS, tools=("parallel",)),
}


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def note(message: str) -> None:
    print(f"[peers] {message}", file=sys.stderr, flush=True)


def interpreter(system: System) -> tuple[Path | None, str]:
    """The python to run the driver with, or None and why not."""
    if system.python == "project":
        if PROJECT_PYTHON.exists():
            return PROJECT_PYTHON, ""
        return None, f"{PROJECT_PYTHON} is missing: run `make test` (or pip install -e '.[dev]')"
    if system.python == "peers":
        if PEERS_PYTHON.exists():
            return PEERS_PYTHON, ""
        return None, f"{PEERS_PYTHON} is missing: run `python bench/peers/install.py` first"
    return (PROJECT_PYTHON if PROJECT_PYTHON.exists() else Path(sys.executable)), ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(deadline_s: float = 20.0) -> tuple[subprocess.Popen[bytes], str]:
    """A throw-away redis-server on a free loopback port, no persistence; waits for PING."""
    for _ in range(3):  # the free port may be taken between probing and binding
        port = free_port()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--loglevel", "warning"]
        proc = subprocess.Popen(argv, stdout=sys.stderr, start_new_session=True)
        deadline = time.monotonic() + deadline_s
        while proc.poll() is None and time.monotonic() < deadline:
            if redis_ping(port):
                note(f"redis-server pid {proc.pid} on 127.0.0.1:{port}")
                return proc, f"redis://127.0.0.1:{port}/0"
            time.sleep(0.05)
        stop(proc, signal.SIGTERM)
    raise RuntimeError("redis-server did not answer PING")


def stop(proc: subprocess.Popen[Any], sig: int, grace: float = 60.0) -> None:
    """``sig`` to the process we started, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Runner:
    """Runs driver subprocesses one at a time and relays their JSON lines."""

    env: dict[str, str]
    timeout: float
    results: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0

    def drive(self, python: Path, module: str, args: list[str], what: str) -> None:
        argv = [str(python), "-m", f"bench.peers.drivers.{module}", *args]
        note(f"{what}: {' '.join(argv[1:])}")
        # A session of its own: Ctrl-C reaches only us, and we pass exactly one SIGTERM
        # on, so the driver's cleanup (stopping its workers) is not interrupted twice.
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        timer = threading.Timer(self.timeout, lambda: proc.send_signal(signal.SIGTERM))
        timer.start()
        got = False
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    line = None
                if isinstance(line, dict):
                    got = True
                    self.results.append(line)
                    print(json.dumps(line), flush=True)
                else:
                    print(raw, end="", file=sys.stderr, flush=True)
            code = proc.wait()
        except BaseException:  # Ctrl-C or SIGTERM: let the driver stop its workers
            stop(proc, signal.SIGTERM)
            raise
        finally:
            timer.cancel()
        if code != 0 or not got:
            self.failures += 1
            emit(error=f"{what} failed (exit status {code})", driver=module, args=args)


def header() -> dict[str, Any]:
    commit = ""
    if shutil.which("git"):
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        commit = done.stdout.strip()
    return {
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": commit,
    }


def parse_list(text: str, allowed: tuple[str, ...] | list[str], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def driver_args(workload: str, args: argparse.Namespace) -> list[str]:
    out = ["--workload", workload, "--repeat", str(args.repeat)]
    if args.quick:
        out += ["--tasks", str(QUICK_TASKS[workload]), "--warmup", str(QUICK_WARMUP)]
    return out


def usable(name: str, system: System) -> Path | None:
    """The driver's interpreter, or None after saying (on stderr and stdout) why not."""
    python, why = interpreter(system)
    missing = [t for t in system.tools if shutil.which(t) is None]
    if missing and not why:
        why = f"{', '.join(missing)} not on PATH: run `python bench/peers/install.py`"
    if python is None or why:
        note(f"skipping {name}: {why}")
        emit(system=name, skipped=why)
        return None
    return python


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--workloads", default=",".join(ALL_WORKLOADS))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    p.add_argument("--markdown", metavar="FILE", help="also write the table here")
    p.add_argument("--redis-url", help="use this redis instead of starting one")
    p.add_argument("--driver-timeout", type=float, default=3600.0, help="seconds per driver")
    args = p.parse_args()
    names = parse_list(args.systems, list(SYSTEMS), "system")
    workloads = parse_list(args.workloads, ALL_WORKLOADS, "workload")

    head = header()
    emit(**head)
    pythons = {name: usable(name, SYSTEMS[name]) for name in names}
    runnable = [name for name in names if pythons[name] is not None]

    # SIGTERM takes the same way out as Ctrl-C, so the finally clause below runs.
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    runner = Runner(env=env, timeout=args.driver_timeout)
    redis: subprocess.Popen[bytes] | None = None
    try:
        if any(SYSTEMS[n].redis for n in runnable):
            if args.redis_url:
                env["PEERS_REDIS_URL"] = args.redis_url
            else:
                redis, env["PEERS_REDIS_URL"] = start_redis()
        for workload in workloads:
            for name in runnable:
                system, python = SYSTEMS[name], pythons[name]
                if workload not in system.workloads or python is None:
                    continue
                for variant in system.variants:
                    what = f"{name} {workload}" + (f" {' '.join(variant)}" if variant else "")
                    runner.drive(
                        python, system.module, [*driver_args(workload, args), *variant], what
                    )
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    finally:
        if redis is not None:
            stop(redis, signal.SIGTERM, grace=10.0)
            note(f"redis-server pid {redis.pid} stopped")

    for line in ratio_lines(runner.results):
        emit(**line)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(runner.results, head))
        note(f"markdown table written to {args.markdown}")
    return 1 if runner.failures else 0


if __name__ == "__main__":
    sys.exit(main())
