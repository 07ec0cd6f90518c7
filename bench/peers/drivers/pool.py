"""A bare ``concurrent.futures.ProcessPoolExecutor(SLOTS)``: the floor for Python calls.

Stdlib only, so it runs under the project venv and the peers venv alike:

    python -m bench.peers.drivers.pool --workload noop

No network, no scheduler, no persistence: submit every call, then ``result()`` each.
What a task system costs on top of this is its own overhead per task.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ProcessPoolExecutor

from bench.peers.drivers import tasks
from bench.peers.drivers.common import (
    Session,
    Spec,
    check_count,
    check_exit_codes,
    parser,
    run,
)

SYSTEM = "pool"


class PoolSession(Session):
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.config = f"ProcessPoolExecutor({spec.slots})"
        self.pool = ProcessPoolExecutor(spec.slots)

    def batch(self, n: int) -> float:
        pool, spec = self.pool, self.spec
        t0 = time.perf_counter()
        futures: list[Future[object]]
        if spec.workload == "shell":
            futures = [pool.submit(tasks.shell, i) for i in range(n)]
        elif spec.workload == "short":
            futures = [pool.submit(tasks.sleep, i, spec.duration) for i in range(n)]
        else:
            futures = [pool.submit(tasks.noop, i) for i in range(n)]
        values = [f.result(timeout=spec.timeout) for f in futures]
        elapsed = time.perf_counter() - t0
        check_count(SYSTEM, len(values), n)
        if spec.workload == "shell":
            check_exit_codes(SYSTEM, values)
        return elapsed

    def one(self) -> None:
        self.pool.submit(tasks.noop).result(timeout=self.spec.timeout)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def main() -> None:
    run(SYSTEM, parser(__doc__.splitlines()[0]).parse_args(), PoolSession)


if __name__ == "__main__":
    main()
