"""celery with a redis broker and result backend, and a prefork worker in a subprocess.

Run under ``bench/peers/.venv`` with ``PEERS_REDIS_URL`` pointing at a redis server:

    python -m bench.peers.drivers.celery --workload noop

The worker is ``celery -A bench.peers.drivers.celery_app worker -P prefork -c SLOTS``
without heartbeat, gossip and mingle (cluster chatter a single worker does not
need). Every task is sent with ``.delay()`` first, then each result is gathered with
``.get()`` in order of sending (measured faster here than one ``ResultSet.get()``,
which polls the backend in bulk).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from celery.result import AsyncResult, ResultSet

from bench.peers.drivers import celery_app
from bench.peers.drivers.common import (
    REPO,
    BenchError,
    Session,
    Spec,
    check_count,
    check_exit_codes,
    parser,
    run,
    stop_process,
)

SYSTEM = "celery"
START_TIMEOUT_S = 90.0


def worker_argv(slots: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        celery_app.__name__,
        "--quiet",  # no banner
        "worker",
        "-P",
        "prefork",
        "-c",
        str(slots),
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "warning",
        "-Q",
        celery_app.QUEUE,
        "-n",
        f"peers{os.getpid()}@%h",  # unique, should a stray worker share the broker
    ]


class CelerySession(Session):
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.config = f"prefork -c {spec.slots}"
        app = celery_app.app
        app.control.purge()  # left over by an interrupted earlier run
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            # Its stdout goes to stderr: this driver's stdout carries only the JSON line.
            worker_argv(spec.slots),
            cwd=REPO,
            stdout=sys.stderr,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        """Until the worker answers a ping and has run one task, or fail loudly."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(f"celery worker exited with {self.proc.returncode}")
            if celery_app.app.control.ping(timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"celery worker not answering after {START_TIMEOUT_S} s")
        celery_app.noop.delay().get(timeout=START_TIMEOUT_S)

    def batch(self, n: int) -> float:
        spec = self.spec
        t0 = time.perf_counter()
        sent: list[AsyncResult[Any]]
        if spec.workload == "shell":
            sent = [celery_app.shell.delay(i) for i in range(n)]
        elif spec.workload == "short":
            sent = [celery_app.sleep.delay(i, spec.duration) for i in range(n)]
        else:
            sent = [celery_app.noop.delay(i) for i in range(n)]
        deadline = time.monotonic() + spec.timeout
        values = [r.get(timeout=max(1.0, deadline - time.monotonic())) for r in sent]
        elapsed = time.perf_counter() - t0
        ResultSet(sent).forget()  # keep redis from growing across repeats
        check_count(SYSTEM, len(values), n)
        if spec.workload == "shell":
            check_exit_codes(SYSTEM, values)
        return elapsed

    def one(self) -> None:
        celery_app.noop.delay().get(timeout=self.spec.timeout)

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=30.0)
            self.proc = None


def main() -> None:
    run(SYSTEM, parser(__doc__.splitlines()[0]).parse_args(), CelerySession)


if __name__ == "__main__":
    main()
