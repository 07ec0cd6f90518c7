"""AWS requests per task through SQS + DynamoDB, against moto on loopback (the bill).

Runs a scheduler (-rw, no local workers) and two worker daemons as subprocesses
against a moto server, pushes N ``sleep 0`` tasks through, and prints one JSON line
with the requests each side made, per task, and the dollars per million tasks at
list prices. ``--bundle 1`` turns bundling off (one task per SQS message).

    python bench/remote_cost.py --tasks 10000
    python bench/remote_cost.py --tasks 1000 --bundle 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import emit, start_scheduler, stop_scheduler  # noqa: E402
from client.client import Client  # noqa: E402
from protocol.aws import AwsSettings  # noqa: E402
from provisioner.resources import init_aws  # noqa: E402

SQS_PER_MILLION = 0.40  # standard queue, per million requests (64 KiB chunks)
DDB_WRITE_PER_MILLION = 0.625  # on-demand, per million write request units
DDB_READ_PER_MILLION = 0.125  # on-demand, per million read request units


def env_for(aws: AwsSettings) -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",  # moto's dummy credentials, never real ones
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": aws.aws_region,
        "TASKMILL_AWS_ENDPOINT_URL": aws.aws_endpoint_url or "",
        "TASKMILL_REQUEST_QUEUE": aws.request_queue,
        "TASKMILL_DEAD_LETTER_QUEUE": aws.dead_letter_queue,
        "TASKMILL_REPLY_QUEUE_PREFIX": aws.reply_queue_prefix,
        "TASKMILL_TASKS_TABLE": aws.tasks_table,
        "TASKMILL_WORKERS_TABLE": aws.workers_table,
    }


class Worker:
    def __init__(self, env: dict[str, str], queue: str, slots: int) -> None:
        self.stopped: dict[str, Any] | None = None
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "client.cli",
                "worker",
                "-s",
                queue,
                "-t",
                str(slots),
                "--log-format",
                "json",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "worker started":
                self.ready.set()
            if event.get("event") == "worker stopped":
                self.stopped = event

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        time.sleep(0.2)  # let the reader thread take the last line
        return self.stopped or {}


async def push(port: int, n: int) -> tuple[float, dict[str, Any]]:
    async with Client("127.0.0.1", port) as client:
        t0 = time.perf_counter()
        sub = await client.submit([{"cmd": "sleep 0"}] * n)
        got = 0
        async for batch in client.result_batches(sub.job):
            got += len(batch.results)
        elapsed = time.perf_counter() - t0
        assert got == n
        return elapsed, await client.stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--bundle", type=int, default=1000, help="max tasks per message")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    prefix = "b" + uuid.uuid4().hex[:8]
    aws = AwsSettings(
        aws_endpoint_url=f"http://{host}:{port}",
        request_queue=f"{prefix}-requests",
        dead_letter_queue=f"{prefix}-dlq",
        reply_queue_prefix=f"{prefix}-replies-",
        tasks_table=f"{prefix}-tasks",
        workers_table=f"{prefix}-workers",
    )
    env = env_for(aws)
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    asyncio.run(init_aws(aws))
    workers = [Worker(env, aws.request_queue, args.slots) for _ in range(args.workers)]
    for w in workers:
        w.ready.wait(60)
    sched_env = {
        **env,
        "TASKMILL_STATE_DIR": "none",
        "TASKMILL_MONITOR_PORT": "-1",
        "TASKMILL_MAX_BUNDLE_TASKS": str(args.bundle),
    }
    proc, sched_port = start_scheduler("-lw", "0", "-rw", env=sched_env)
    try:
        elapsed, stats = asyncio.run(push(sched_port, args.tasks))
    finally:
        stop_scheduler(proc)
        finals = [w.stop() for w in workers]
        server.stop()
    sched_requests: dict[str, int] = stats["remote"]["aws"]["requests"]
    worker_requests: dict[str, int] = {}
    ddb_units = 0.0
    for final in finals:
        for key, n in (final.get("aws_requests") or {}).items():
            worker_requests[key] = worker_requests.get(key, 0) + n
        # moto reports no ConsumedCapacity for UpdateItem: use the worker's own
        # estimate from item sizes (one unit per KiB written, as DynamoDB bills).
        ddb_units += float(
            final.get("tasks_table_write_units_est") or final.get("ddb_write_units") or 0
        )
    every = {**sched_requests}
    for key, n in worker_requests.items():
        every[key] = every.get(key, 0) + n
    sqs = sum(n for key, n in every.items() if key.startswith("sqs."))
    ddb = sum(n for key, n in every.items() if key.startswith("dynamodb."))
    n = args.tasks
    dollars = (sqs * SQS_PER_MILLION + ddb_units * DDB_WRITE_PER_MILLION) / n  # per task, $/M
    emit(
        bench="remote_cost",
        tasks=n,
        bundle_max=args.bundle,
        workers=args.workers,
        slots=args.slots,
        elapsed_s=round(elapsed, 2),
        throughput=round(n / elapsed, 1),
        bundles_sent=stats["remote"]["bundles_sent"],
        sqs_requests=sqs,
        sqs_per_task=round(sqs / n, 4),
        ddb_requests=ddb,
        ddb_write_units=round(ddb_units, 1),
        ddb_write_units_per_task=round(ddb_units / n, 4),
        dollars_per_million_tasks=round(dollars, 3),
        scheduler_requests=sched_requests,
        worker_requests=worker_requests,
    )


if __name__ == "__main__":
    main()
