"""dramatiq with a redis broker and result backend, and its worker in a subprocess.

Run under ``bench/peers/.venv`` with ``PEERS_REDIS_URL`` pointing at a redis server:

    python -m bench.peers.drivers.dramatiq --workload noop

The worker is ``dramatiq bench.peers.drivers.dramatiq_app -p P -t T`` with SLOTS split
into processes x threads (2 -> 2 x 1, 8 -> 2 x 4). Every message is sent first, then
each result is waited for with ``message.get_result(block=True)``. The queue is
flushed before the worker starts and after every run, so nothing carries over.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from dramatiq import Message
from dramatiq.results import ResultTimeout

from bench.peers.drivers import dramatiq_app
from bench.peers.drivers.common import (
    REPO,
    BenchError,
    Session,
    Spec,
    check_count,
    check_exit_codes,
    parser,
    run,
    split_slots,
    stop_process,
)

SYSTEM = "dramatiq"
START_TIMEOUT_S = 90.0


def get_result(message: Message[Any], deadline: float) -> Any:
    # Whole seconds: the redis backend ignores sub-second timeouts (0 = do not block).
    timeout_ms = max(1000, int((deadline - time.monotonic()) * 1000))
    return message.get_result(block=True, timeout=timeout_ms)


class DramatiqSession(Session):
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        procs, threads = split_slots(spec.slots, spec.processes)
        self.config = f"-p {procs} -t {threads}"
        dramatiq_app.broker.flush(dramatiq_app.QUEUE)  # left over by an interrupted run
        argv = [sys.executable, "-m", "dramatiq", dramatiq_app.__name__]
        argv += ["-p", str(procs), "-t", str(threads)]
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            argv, cwd=REPO, stdout=sys.stderr, start_new_session=True
        )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        """One task's round trip, retried until the worker is up, or fail loudly."""
        deadline = time.monotonic() + START_TIMEOUT_S
        message = dramatiq_app.noop.send()
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(f"dramatiq worker exited with {self.proc.returncode}")
            try:
                message.get_result(block=True, timeout=1000)
                return
            except ResultTimeout:
                if time.monotonic() > deadline:
                    raise BenchError(f"dramatiq worker idle after {START_TIMEOUT_S} s") from None

    def batch(self, n: int) -> float:
        spec = self.spec
        t0 = time.perf_counter()
        sent: list[Message[Any]]
        if spec.workload == "shell":
            sent = [dramatiq_app.shell.send(i) for i in range(n)]
        elif spec.workload == "short":
            sent = [dramatiq_app.sleep.send(i, spec.duration) for i in range(n)]
        else:
            sent = [dramatiq_app.noop.send(i) for i in range(n)]
        deadline = time.monotonic() + spec.timeout
        values = [get_result(m, deadline) for m in sent]
        elapsed = time.perf_counter() - t0
        dramatiq_app.broker.flush(dramatiq_app.QUEUE)
        check_count(SYSTEM, len(values), n)
        if spec.workload == "shell":
            check_exit_codes(SYSTEM, values)
        return elapsed

    def one(self) -> None:
        get_result(dramatiq_app.noop.send(), time.monotonic() + self.spec.timeout)

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=30.0)
            self.proc = None


def main() -> None:
    run(SYSTEM, parser(__doc__.splitlines()[0]).parse_args(), DramatiqSession)


if __name__ == "__main__":
    main()
