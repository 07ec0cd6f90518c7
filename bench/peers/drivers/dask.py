"""dask.distributed: a ``LocalCluster`` of worker processes and a ``Client`` in this process.

Run under ``bench/peers/.venv``:

    python -m bench.peers.drivers.dask --workload noop

SLOTS are split into worker processes x threads (2 -> 2 x 1, 8 -> 2 x 4), as in a
real deployment on a 2-core machine; the dask scheduler runs in this process (the
``LocalCluster`` default), so submitting, scheduling and gathering share it. The
dashboard is off (it would need bokeh and only adds load).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from distributed import Client, LocalCluster

from bench.peers.drivers import tasks
from bench.peers.drivers.common import (
    Session,
    Spec,
    check_count,
    check_exit_codes,
    parser,
    run,
    split_slots,
)

SYSTEM = "dask"


class DaskSession(Session):
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        workers, threads = split_slots(spec.slots, spec.processes)
        self.config = f"LocalCluster {workers} workers x {threads} threads"
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None
        try:
            self.cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=threads,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.WARNING,
            )
            self.client = Client(self.cluster)
        except BaseException:
            self.close()
            raise

    def batch(self, n: int) -> float:
        client, spec = self.client, self.spec
        assert client is not None
        kwargs: dict[str, Any] = {}
        fn: Any = tasks.noop
        if spec.workload == "shell":
            fn = tasks.shell
        elif spec.workload == "short":
            fn, kwargs = tasks.sleep, {"seconds": spec.duration}
        t0 = time.perf_counter()
        futures = client.map(fn, range(n), pure=False, **kwargs)
        values = client.gather(futures)
        elapsed = time.perf_counter() - t0
        del futures  # let the cluster forget them before the next run
        check_count(SYSTEM, len(values), n)
        if spec.workload == "shell":
            check_exit_codes(SYSTEM, values)
        return elapsed

    def one(self) -> None:
        assert self.client is not None
        self.client.submit(tasks.noop, pure=False).result(timeout=self.spec.timeout)

    def close(self) -> None:
        try:
            if self.client is not None:
                self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def main() -> None:
    run(SYSTEM, parser(__doc__.splitlines()[0]).parse_args(), DaskSession)


if __name__ == "__main__":
    main()
