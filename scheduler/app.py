"""The scheduler: task table + dispatcher + local workers + TCP server, with one ordered close.

Embeddable: ``await Scheduler(settings).start()`` binds the port (``port=0`` picks
a free one, read back from :attr:`Scheduler.port`), and ``await close()`` shuts
everything down in order. Every background task is owned here and awaited on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Coroutine, Iterable
from typing import Any

import structlog

from protocol.auth import TokenBook
from protocol.aws import AwsError, AwsSettings
from protocol.errors import ErrorCode
from protocol.framing import encode_frame
from protocol.messages import error_reply
from protocol.model import TaskState
from scheduler.dispatch import Dispatcher
from scheduler.errors import SchedulerError
from scheduler.journal import Journal, JournalError, MemoryJournal
from scheduler.local import LocalWorker
from scheduler.monitor import Monitor
from scheduler.records import Job
from scheduler.recovery import restore
from scheduler.remote import RemoteBackend
from scheduler.retry import RetryPolicy
from scheduler.security import load_tokens, tls_context
from scheduler.server import ResultStream, Session
from scheduler.settings import SchedulerSettings, WorkerGroup
from scheduler.state import TaskTable
from scheduler.telemetry import Sample, Sampler, health_problems

log = structlog.get_logger("taskmill.scheduler")

EXPIRY_INTERVAL_S = 30.0
RESTART_DELAY_MAX_S = 30.0


class Scheduler:
    def __init__(self, settings: SchedulerSettings, *, aws: AwsSettings | None = None) -> None:
        self.settings = settings
        self.aws = aws or AwsSettings()
        self.remote: RemoteBackend | None = None
        self.sampler = Sampler()
        self.tokens = TokenBook()
        self._ssl: ssl.SSLContext | None = None
        self.monitor: Monitor | None = None
        path = settings.journal_path
        self.journal: Journal | MemoryJournal = Journal(path) if path else MemoryJournal()
        self.table = TaskTable(
            max_queued_per_user=settings.max_queued_per_user, recorder=self.journal
        )
        self.dispatcher = Dispatcher(
            self.table,
            on_job_progress=self.job_progress,
            retry=RetryPolicy(
                retry_on=frozenset(settings.retry_on),
                base_s=settings.retry_backoff_s,
                max_s=settings.retry_backoff_max_s,
            ),
            kill_grace_s=settings.kill_grace_s,
        )
        self.closing = False
        self.started_at = time.time()
        self._server: asyncio.Server | None = None
        self.sessions: set[Session] = set()
        self._watchers: dict[str, set[ResultStream]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._worker_seq = 0
        self.worker_restarts = 0
        self.port: int = settings.port

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Replay the journal, start local workers, then listen.

        Raises :class:`SchedulerError` when any of it fails.
        """
        self._check_security()
        try:
            replay = self.journal.open()
        except JournalError as exc:
            raise SchedulerError(str(exc)) from exc
        recovered = restore(self.table, replay)
        self.journal.start()
        if recovered["tasks"]:
            log.info("recovered state from the journal", path=str(self.journal.path), **recovered)
        groups = self.settings.worker_groups
        try:
            workers = await asyncio.gather(
                *(self._start_worker(group) for group in groups for _ in range(group.count))
            )
        except SchedulerError:
            await self.close()
            raise
        for worker in workers:
            self._adopt(worker)
        if not workers or self.settings.remote:
            self.table.known_handlers = None  # remote workers may have other handlers
        if self.settings.remote:
            await self._start_remote()
        try:
            self._server = await asyncio.start_server(
                self._on_connect,
                self.settings.host,
                self.settings.port,
                limit=1 << 20,
                ssl=self._ssl,
            )
        except OSError as exc:
            await self.close()
            raise SchedulerError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror or exc}"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        self._spawn(self._expire_loop())
        self._spawn(self._sample_loop())
        if self.settings.monitor_port >= 0:
            self.monitor = Monitor(self, self.settings.monitor_host, self.settings.monitor_port)
            try:
                await self.monitor.start()
            except OSError as exc:
                await self.close()
                raise SchedulerError(
                    f"cannot serve the monitor on {self.settings.monitor_host}:"
                    f"{self.settings.monitor_port}: {exc.strerror or exc}"
                ) from exc
        log.info(
            "scheduler listening",
            host=self.settings.host,
            port=self.port,
            local_workers=len(workers),
            handlers=sorted(self.table.known_handlers or ()),
        )

    def _check_security(self) -> None:
        """Before anything starts: bad tokens or certificates fail fast."""
        self.tokens = load_tokens(self.settings)
        self._ssl = tls_context(self.settings)

    async def _start_remote(self) -> None:
        scheduler_id, ephemeral = self._scheduler_id()
        self.remote = RemoteBackend(
            self.aws,
            self.table,
            scheduler_id=scheduler_id,
            on_results=self.dispatcher.apply_results,
            on_job_progress=self.job_progress,
            avg_runtime=lambda: self.dispatcher.avg_runtime_s,
            min_inflight=self.settings.remote_min_inflight,
            delete_reply_queue_on_close=ephemeral,
            receive_wait_s=self.settings.reply_wait_s,
            max_bundle_tasks=self.settings.max_bundle_tasks,
            dead_letter_sweep_s=self.settings.dead_letter_sweep_s,
            on_requeued=self.dispatcher.wake,
        )
        try:
            await self.remote.start()
        except AwsError as exc:
            await self.close()
            raise SchedulerError(str(exc)) from exc
        self.dispatcher.remote = self.remote
        self.dispatcher.wake()

    def _scheduler_id(self) -> tuple[str, bool]:
        """This scheduler's id (it names the reply queue) and whether it is throw-away.

        With a journal, the id is kept beside it so a restarted scheduler reads the
        same reply queue, where results of bundles sent before the restart arrive.
        """
        if self.settings.scheduler_id:
            return self.settings.scheduler_id, False
        path = self.settings.journal_path
        if path is None:
            return "s" + os.urandom(6).hex(), True
        id_file = path.parent / "scheduler-id"
        try:
            return id_file.read_text().strip(), False
        except FileNotFoundError:
            scheduler_id = "s" + os.urandom(6).hex()
            id_file.write_text(scheduler_id + "\n")
            return scheduler_id, False

    async def close(self) -> None:
        """Stop accepting, let workers finish what they hold, flush clients, stop tasks."""
        if self.closing:
            return
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self.monitor is not None:
            await self.monitor.close()
        workers = list(self.dispatcher.workers.values())
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        if self.remote is not None:
            # Bundles in SQS stay there: a restarted scheduler requeues their tasks from
            # the journal and drops whichever result arrives second.
            await self.remote.close()
        self.dispatcher.close()
        # Let the last results become durable and reach the clients still connected.
        committed = asyncio.Event()
        self.journal.after_commit(lambda _: committed.set())
        await committed.wait()
        await asyncio.sleep(0)  # one tick: the sessions' coalesced flushes run
        await asyncio.gather(*(s.close() for s in list(self.sessions)), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        await self.journal.close()
        log.info("scheduler stopped", finished=self.table.finished_total)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- local workers -------------------------------------------------------------

    async def _start_worker(self, group: WorkerGroup) -> LocalWorker:
        self._worker_seq += 1
        worker = LocalWorker(f"local-{self._worker_seq}", group=group)
        await worker.start(
            self.settings.handlers,
            log_level=self.settings.log_level,
            log_format="console" if self.settings.log_format == "console" else "json",
            kill_grace_s=self.settings.kill_grace_s,
        )
        return worker

    def _adopt(self, worker: LocalWorker) -> None:
        self.dispatcher.add_worker(worker)
        self._spawn(self._supervise(worker))

    async def _supervise(self, worker: LocalWorker) -> None:
        """Run a worker's result loop; when the process dies unexpectedly, replace it."""
        await worker.serve(self.dispatcher.on_results)
        self.dispatcher.remove_worker(worker)
        if self.closing or worker.stopping:
            return
        self.worker_restarts += 1
        log.error("local worker died; restarting", worker=worker.id, returncode=worker.returncode)
        delay = min(RESTART_DELAY_MAX_S, 0.05 * 2 ** min(self.worker_restarts, 10))
        while not self.closing:
            await asyncio.sleep(delay)  # restart back-off, not synchronisation
            try:
                replacement = await self._start_worker(worker.group)
            except SchedulerError as exc:
                log.error("cannot restart local worker", error=str(exc))
                delay = min(RESTART_DELAY_MAX_S, delay * 2)
                continue
            if self._is_closing():  # close() may have begun while the process started
                await replacement.kill()
                return
            self._adopt(replacement)
            return

    def _is_closing(self) -> bool:
        return self.closing

    # --- clients -------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.closing:
            writer.close()
            return
        if len(self.sessions) >= self.settings.max_connections:
            log.warning("connection refused: too many clients", limit=self.settings.max_connections)
            writer.write(
                encode_frame(
                    error_reply(
                        None,
                        ErrorCode.QUOTA,
                        f"too many connections (limit {self.settings.max_connections})",
                    )
                )
            )
            writer.close()
            return
        session = Session(self, reader, writer)
        self.sessions.add(session)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            if task is not None:
                self._tasks.discard(task)

    def watch(self, stream: ResultStream) -> None:
        self._watchers.setdefault(stream.job.id, set()).add(stream)

    def unwatch(self, stream: ResultStream) -> None:
        streams = self._watchers.get(stream.job.id)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._watchers[stream.job.id]

    def job_progress(self, jobs: Iterable[Job]) -> None:
        """Jobs gained results (or were sealed): once the journal holds those results,
        make them visible and wake the sessions streaming them."""
        targets = [(job, len(job.results)) for job in jobs]

        def now_durable(error: BaseException | None) -> None:
            if error is not None:
                # The results exist but cannot be made durable (a full disk): deliver
                # them anyway rather than leave clients waiting; health reports it.
                log.error("results delivered without being journaled", error=str(error))
            watchers = self._watchers
            for job, count in targets:
                if count > job.durable:
                    job.durable = count
                for stream in watchers.get(job.id, ()):
                    stream.session.schedule_flush()

        self.journal.after_commit(now_durable)

    # --- operations ----------------------------------------------------------------

    def cancel(self, some_id: str) -> tuple[int, int]:
        """Cancel queued tasks now and running ones through their workers."""
        cancelled, running = self.table.cancel_queued(some_id)
        cancelling = self.dispatcher.cancel_running(running)
        jobs = {rec.job for rec in cancelled} | {rec.job for rec in running}
        if some_id in self.table.jobs:
            jobs.add(self.table.jobs[some_id])  # sealed by the cancel: its streams may end
        self.job_progress(jobs)
        return len(cancelled), cancelling

    def cancel_unstored(self, job: Job, ids: list[str], error: BaseException) -> None:
        """A batch the journal failed to store is not accepted: cancel what is left of it."""
        recs = [self.table.tasks[i] for i in ids if i in self.table.tasks]
        reason = f"not accepted: the journal could not store it ({error})"
        for rec in recs:
            if rec.state is TaskState.QUEUED:
                self.table.finish_without_running(rec, TaskState.CANCELLED, reason)
        self.dispatcher.cancel_running([r for r in recs if r.state is TaskState.RUNNING])
        self.job_progress((job,))

    def all_workers(self) -> list[dict[str, Any]]:
        """Local workers and, with -rw, the remote fleet from the workers table."""
        workers = self.dispatcher.worker_info()
        if self.remote is not None:
            workers += self.remote.fleet
        return workers

    def load(self) -> dict[str, int]:
        """Queued vs running as a user means them.

        The task table counts a task as running from the moment a worker holds it;
        a local worker may hold a few short tasks ahead of the one it runs, and those
        are reported as queued (``prefetched`` says how many).
        """
        table = self.table
        held = executing = 0
        for worker in self.dispatcher.workers.values():
            held += len(worker.held)
            executing += min(len(worker.held), worker.slots)
        prefetched = held - executing
        return {
            "queued": table.queued_total + table.waiting_retry + prefetched,
            "running": table.running_total - prefetched,
            "prefetched": prefetched,
        }

    def health(self) -> list[str]:
        table = self.table
        remote = self.remote
        return health_problems(
            now=time.time(),
            workers=sum(1 for w in self.dispatcher.workers.values() if w.alive),
            remote=remote is not None,
            fleet_slots=remote.fleet_slots if remote is not None else 0,
            queued=table.queued_total,
            last_progress=self.sampler.last_progress,
            stuck_after_s=self.settings.stuck_after_s,
            aws_error=remote.aws_error if remote is not None else None,
            journal_error=str(self.journal.failed) if self.journal.failed else None,
        )

    def stats(self) -> dict[str, Any]:
        table = self.table
        return {
            "server": "taskmill",
            "uptime_s": time.time() - self.started_at,
            "submitted": table.submitted_total,
            **self.load(),
            "finished": table.finished_total,
            "by_state": {state.value: n for state, n in table.finished_by_state.items()},
            "jobs": len(table.jobs),
            "clients": len(self.sessions),
            "workers": self.all_workers(),
            "health": self.health(),
            "monitor": (
                f"http://{self.monitor.host}:{self.monitor.port}/" if self.monitor else None
            ),
            "users": [
                {"user": user, "queued": queued, "running": running}
                for user, queued, running in table.queue.users()
            ],
            "handlers": sorted(table.known_handlers or ()),
            "avg_runtime_s": self.dispatcher.avg_runtime_s,
            "retries": table.retries_total,
            "waiting_retry": table.waiting_retry,
            "remote": self.remote.stats() if self.remote is not None else None,
            "journal": {
                "path": str(self.journal.path) if self.journal.path else None,
                "commits": self.journal.commits,
                "commit_seconds": self.journal.commit_seconds,
            },
        }

    async def _sample_loop(self) -> None:
        while True:
            table = self.table
            load = self.load()
            self.sampler.add(
                Sample(
                    t=time.time(),
                    submitted=table.submitted_total,
                    finished=table.finished_total,
                    queued=load["queued"],
                    running=load["running"],
                )
            )
            await asyncio.sleep(1.0)  # one sample a second for the monitor's charts

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL_S)  # periodic housekeeping
            dropped = self.table.expire(
                ttl_s=self.settings.result_ttl_s, max_age_s=self.settings.result_max_age_s
            )
            if dropped:
                log.info("expired finished jobs", jobs=dropped)
                self.journal.flush_soon()
