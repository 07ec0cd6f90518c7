"""The dramatiq actors the peers benchmark drives: RedisBroker plus Results on redis.

Imported both by the driver (to send) and by ``dramatiq bench.peers.drivers.dramatiq_app``
(to run). The redis URL comes from ``PEERS_REDIS_URL``. Retries are off so a failing
task fails the run instead of being retried quietly; results are stored
(``store_results=True``) so the driver can wait for every one of them.
"""

from __future__ import annotations

import subprocess
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.peers.drivers.common import SHELL_CMD, redis_url

QUEUE = "peers-bench"

broker = RedisBroker(url=redis_url())
backend = RedisBackend(url=redis_url())
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def noop(_index: object = None) -> None:
    return None


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def shell(_index: object = None, cmd: str = SHELL_CMD) -> int:
    return subprocess.run(cmd, shell=True, check=False).returncode


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def sleep(_index: object = None, seconds: float = 0.01) -> None:
    time.sleep(seconds)
