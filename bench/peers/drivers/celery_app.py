"""The celery app the peers benchmark drives: broker and results on the local redis.

Imported both by the driver (to send) and by ``celery -A bench.peers.drivers.celery_app
worker`` (to run). The redis URL comes from ``PEERS_REDIS_URL`` (``run.py`` starts a
private redis-server and sets it). Everything else is celery's default configuration,
which is what a user would measure: JSON serialisation, prefetch multiplier 4, results
stored in redis; tasks go to their own queue so nothing else on that redis is touched.
"""

from __future__ import annotations

import subprocess
import time

from celery import Celery

from bench.peers.drivers.common import SHELL_CMD, redis_url

QUEUE = "peers-bench"

app = Celery("peers", broker=redis_url(), backend=redis_url())
app.conf.update(
    broker_connection_retry_on_startup=True,  # the default, stated to silence its warning
    task_default_queue=QUEUE,
    result_expires=3600,
)


@app.task(name="peers.noop")
def noop(_index: object = None) -> None:
    return None


@app.task(name="peers.shell")
def shell(_index: object = None, cmd: str = SHELL_CMD) -> int:
    return subprocess.run(cmd, shell=True, check=False).returncode


@app.task(name="peers.sleep")
def sleep(_index: object = None, seconds: float = 0.01) -> None:
    time.sleep(seconds)
