"""``/metrics`` in Prometheus text format, read from the scheduler at scrape time.

A custom collector reads the counters the scheduler keeps anyway, so exporting
metrics adds nothing to the per-task path. Each scheduler has its own registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from protocol.model import TaskState
from scheduler.telemetry import Histogram

if TYPE_CHECKING:
    from scheduler.app import Scheduler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name, doc, buckets=[(b, float(n)) for b, n in hist.cumulative()], sum_value=hist.sum
    )


class SchedulerCollector(Collector):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        sched = self.scheduler
        table = sched.table
        submitted = CounterMetricFamily("taskmill_tasks_submitted", "Tasks accepted")
        submitted.add_metric([], table.submitted_total)
        yield submitted
        finished = CounterMetricFamily(
            "taskmill_tasks_finished", "Tasks finished, by final state", labels=["state"]
        )
        for state in (s for s in TaskState if s.finished):
            finished.add_metric([state.value], table.finished_by_state[state])
        yield finished
        retries = CounterMetricFamily("taskmill_task_retries", "Attempts retried after a failure")
        retries.add_metric([], table.retries_total)
        yield retries
        load = sched.load()
        for name, doc, value in (
            ("taskmill_queue_depth", "Tasks waiting to run (incl. retries)", load["queued"]),
            ("taskmill_tasks_running", "Tasks running on a worker", load["running"]),
            ("taskmill_jobs", "Jobs held (not yet expired)", len(table.jobs)),
            ("taskmill_clients", "Connected clients", len(sched.sessions)),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], value)
            yield gauge
        workers = GaugeMetricFamily("taskmill_workers", "Live workers", labels=["kind"])
        workers.add_metric(["local"], sum(1 for w in sched.dispatcher.workers.values() if w.alive))
        remote = sched.remote
        workers.add_metric(
            ["remote"], sum(1 for w in remote.fleet if w["state"] == "running") if remote else 0
        )
        yield workers
        yield _histogram(
            "taskmill_task_duration_seconds", "Task run time", sched.dispatcher.durations
        )
        yield _histogram(
            "taskmill_journal_commit_seconds",
            "Journal commit latency",
            sched.journal.commit_latency,
        )
        aws = CounterMetricFamily(
            "taskmill_aws_requests", "AWS HTTP requests", labels=["service", "operation"]
        )
        if remote is not None:
            for key, n in remote.clients.counter.snapshot()["requests"].items():
                service, _, operation = key.partition(".")
                aws.add_metric([service, operation], n)
        yield aws


def render(scheduler: Scheduler) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector(scheduler))
    data: bytes = generate_latest(registry)
    return data
