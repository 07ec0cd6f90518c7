"""The durable journal: accepted tasks, attempts and results in SQLite (WAL).

Writes are group-committed by one owned writer thread: the event loop appends
records to an in-memory batch and returns at once; the thread takes everything
pending, writes it in one transaction and commits, then calls back into the loop.
While it commits, the next batch accumulates, so a busy scheduler makes large
commits and an idle one makes small, prompt ones; there is never one commit per
task.

A small batch is committed on the event loop itself instead, at the end of the
loop iteration that recorded it, when the writer thread is not busy: such a commit
takes tens of microseconds, while handing it to the thread and back costs two
thread wake-ups (about 0.1 ms each, with a long tail) on the path of every lone
task's acknowledgement and result. WAL checkpoints (which fsync) are taken off that
path too: automatic checkpoints are off, and the writer thread runs a passive one
after every :data:`CHECKPOINT_EVERY` commits.

``synchronous=NORMAL`` in WAL mode means a commit survives the process being
killed (it is in the OS once ``commit`` returns) without an fsync per commit.

Callers use :meth:`Journal.after_commit` to act only once their records are
durable: the scheduler acknowledges a submit, and sends a result to a client, only
after the journal holds it, so a restart never loses or repeats what a client saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from protocol.codec import pack, unpack
from scheduler.records import TaskRecord
from scheduler.state import NoRecorder
from scheduler.telemetry import COMMIT_BUCKETS, Histogram

log = structlog.get_logger("taskmill.journal")

# A batch of at most this many records may be committed on the event loop (see above).
INLINE_MAX_RECORDS = 64
# Commits between two passive WAL checkpoints (SQLite's own default is every 1000 pages).
CHECKPOINT_EVERY = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    sealed INTEGER NOT NULL DEFAULT 0,
    collected REAL
);
CREATE TABLE IF NOT EXISTS task_batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    submitted REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS task_batches_job ON task_batches(job);
CREATE TABLE IF NOT EXISTS starts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ids BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS result_batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS result_batches_job ON result_batches(job);
"""


class JournalError(Exception):
    """The journal cannot be opened or written (disk full, permissions, corruption)."""


@dataclass(slots=True)
class _Batch:
    jobs: list[tuple[str, float, int]] = field(default_factory=list)
    sealed: list[str] = field(default_factory=list)
    tasks: list[list[TaskRecord]] = field(default_factory=list)  # one list per submit
    starts: list[list[str]] = field(default_factory=list)
    results: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    collected: list[tuple[float, str]] = field(default_factory=list)
    dropped_jobs: list[str] = field(default_factory=list)
    callbacks: list[Callable[[BaseException | None], None]] = field(default_factory=list)

    def small(self) -> bool:
        """Few enough records to commit on the event loop without holding it up."""
        n = len(self.results) + len(self.jobs) + len(self.collected) + len(self.dropped_jobs)
        for recs in self.tasks:
            n += len(recs)
        for ids in self.starts:
            n += len(ids)
        return n <= INLINE_MAX_RECORDS

    def empty(self) -> bool:
        return not (
            self.jobs
            or self.sealed
            or self.tasks
            or self.starts
            or self.results
            or self.collected
            or self.dropped_jobs
            or self.callbacks
        )


@dataclass(slots=True, frozen=True)
class Replay:
    """Everything the journal holds, in the order it was written."""

    jobs: list[tuple[str, float, bool, float | None]]
    tasks: list[tuple[str, str, float, dict[str, Any]]]
    attempts: dict[str, int]
    results: list[tuple[str, dict[str, Any]]]


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._batch = _Batch()
        self._cond = threading.Condition()
        # Held while writing to the database, by the thread or by an inline commit; a
        # batch is taken from _batch only while holding it, so commits keep their order.
        self._write_lock = threading.Lock()
        self._handoff_scheduled = False
        self._since_checkpoint = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None
        self.failed: BaseException | None = None
        self.commits = 0
        self.commit_seconds = 0.0
        self.commit_latency = Histogram(COMMIT_BUCKETS)

    # --- open / replay / close -------------------------------------------------------

    def open(self) -> Replay:
        """Open (creating) the database and read back everything in it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the writer thread checkpoints
            conn.executescript(SCHEMA)
            replay = self._read(conn)
            self._compact_starts(conn, replay)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open the journal at {self.path}: {exc}") from exc
        self._conn = conn
        return replay

    @staticmethod
    def _read(conn: sqlite3.Connection) -> Replay:
        jobs = [
            (row[0], row[1], bool(row[2]), row[3])
            for row in conn.execute(
                "SELECT id, created, sealed, collected FROM jobs ORDER BY rowid"
            )
        ]
        tasks = [
            (task["id"], job, submitted, task)
            for job, submitted, body in conn.execute(
                "SELECT job, submitted, body FROM task_batches ORDER BY seq"
            )
            for task in unpack(body)
        ]
        attempts: dict[str, int] = {}
        for (ids,) in conn.execute("SELECT ids FROM starts ORDER BY seq"):
            for task_id in unpack(ids):
                attempts[task_id] = attempts.get(task_id, 0) + 1
        results = [
            (result["id"], result)
            for (body,) in conn.execute("SELECT body FROM result_batches ORDER BY seq")
            for result in unpack(body)
        ]
        return Replay(jobs=jobs, tasks=tasks, attempts=attempts, results=results)

    @staticmethod
    def _compact_starts(conn: sqlite3.Connection, replay: Replay) -> None:
        """Fold the attempt rows into one, forgetting tasks of dropped jobs."""
        live = {task_id for task_id, *_ in replay.tasks}
        ids = [
            task_id for task_id, n in replay.attempts.items() if task_id in live for _ in range(n)
        ]
        conn.execute("BEGIN")
        conn.execute("DELETE FROM starts")
        if ids:
            conn.execute("INSERT INTO starts(ids) VALUES (?)", (pack(ids),))
        conn.execute("COMMIT")

    def start(self) -> None:
        """Start the writer thread; callbacks run on the calling event loop."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="taskmill-journal", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Commit what is pending, then stop the writer and close the database."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- recording (event loop side, no I/O) -------------------------------------------

    def _changed(self) -> None:
        """Commit what is pending once this loop iteration is over: inline or by the thread."""
        if not self._handoff_scheduled and self._loop is not None:
            self._handoff_scheduled = True
            self._loop.call_soon(self._commit_or_hand_off)

    def _commit_or_hand_off(self) -> None:
        self._handoff_scheduled = False
        batch = self._batch
        if batch.empty():
            return
        if batch.small() and not self._closing and self._write_lock.acquire(blocking=False):
            try:
                batch, self._batch = self._batch, _Batch()
                self._write(batch, inline=True)
            finally:
                self._write_lock.release()
            if self._since_checkpoint >= CHECKPOINT_EVERY:
                self._wake_writer()
            return
        self._wake_writer()

    def _wake_writer(self) -> None:
        with self._cond:
            self._cond.notify()

    def job_created(self, job_id: str, created: float, sealed: bool) -> None:
        self._batch.jobs.append((job_id, created, int(sealed)))

    def job_sealed(self, job_id: str) -> None:
        self._batch.sealed.append(job_id)

    # Records are encoded by the writer thread, not here: the event loop only appends.
    # Task specs and result dicts are not mutated once recorded, so sharing is safe.

    def tasks_accepted(self, recs: list[TaskRecord]) -> None:
        self._batch.tasks.append(recs)

    def tasks_started(self, ids: list[str]) -> None:
        self._batch.starts.append(ids)

    def result(self, task_id: str, job_id: str, body: dict[str, Any]) -> None:
        self._batch.results.append((task_id, job_id, body))

    def job_collected(self, job_id: str, when: float) -> None:
        self._batch.collected.append((when, job_id))

    def jobs_dropped(self, job_ids: list[str]) -> None:
        self._batch.dropped_jobs.extend(job_ids)

    def after_commit(self, callback: Callable[[BaseException | None], None]) -> None:
        """Run ``callback(error)`` on the event loop once everything recorded so far is
        durable (``error`` is None) or failed to be written (the exception)."""
        if self._thread is None:  # never started: nothing can be pending
            callback(None)
            return
        self._batch.callbacks.append(callback)
        self._changed()

    def flush_soon(self) -> None:
        """Wake the writer for records that nobody waits on."""
        self._changed()

    # --- writer thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while (
                    self._batch.empty()
                    and not self._closing
                    and self._since_checkpoint < CHECKPOINT_EVERY
                ):
                    self._cond.wait()
                closing = self._closing
            with self._write_lock:
                batch, self._batch = self._batch, _Batch()
                if not batch.empty():
                    self._write(batch, inline=False)
                if self._since_checkpoint >= CHECKPOINT_EVERY:
                    self._checkpoint()
            if closing and self._batch.empty():
                return

    def _checkpoint(self) -> None:
        """A passive checkpoint: copies the WAL into the database without blocking writers
        for long, and lets the WAL be reused from its start (so it stops growing)."""
        assert self._conn is not None
        self._since_checkpoint = 0
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except (sqlite3.Error, OSError) as exc:
            log.warning("journal checkpoint failed", error=str(exc), path=str(self.path))

    def _write(self, batch: _Batch, *, inline: bool) -> None:
        """Write and commit ``batch``, then run its callbacks: directly when ``inline``
        (we are on the event loop), else through the loop."""
        conn = self._conn
        assert conn is not None and self._loop is not None
        t0 = time.perf_counter()
        try:
            conn.execute("BEGIN")
            if batch.jobs:
                conn.executemany(
                    "INSERT OR IGNORE INTO jobs(id, created, sealed) VALUES (?, ?, ?)", batch.jobs
                )
            if batch.tasks:
                # One row per submitted batch (all of one job), not one per task.
                conn.executemany(
                    "INSERT INTO task_batches(job, submitted, body) VALUES (?, ?, ?)",
                    [
                        (recs[0].job.id, recs[0].submitted, pack([r.task.to_wire() for r in recs]))
                        for recs in batch.tasks
                    ],
                )
            if batch.sealed:
                conn.executemany(
                    "UPDATE jobs SET sealed = 1 WHERE id = ?", [(j,) for j in batch.sealed]
                )
            if batch.starts:
                # One row per commit, not per task: replay only counts attempts.
                ids = [task_id for chunk in batch.starts for task_id in chunk]
                conn.execute("INSERT INTO starts(ids) VALUES (?)", (pack(ids),))
            if batch.results:
                by_job: dict[str, list[dict[str, Any]]] = {}
                for _, job_id, body in batch.results:
                    by_job.setdefault(job_id, []).append(body)
                conn.executemany(
                    "INSERT INTO result_batches(job, body) VALUES (?, ?)",
                    [(job_id, pack(bodies)) for job_id, bodies in by_job.items()],
                )
            if batch.collected:
                conn.executemany("UPDATE jobs SET collected = ? WHERE id = ?", batch.collected)
            if batch.dropped_jobs:
                self._drop(conn, batch.dropped_jobs)
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            # A journal that cannot write (full disk) must not ack work it cannot keep.
            self.failed = exc
            log.error("journal write failed", error=str(exc), path=str(self.path))
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._deliver(batch.callbacks, exc, inline)
            return
        elapsed = time.perf_counter() - t0
        self.failed = None  # writing works (again): a freed disk heals the journal
        self.commits += 1
        self._since_checkpoint += 1
        self.commit_seconds += elapsed
        self.commit_latency.observe(elapsed)
        if batch.callbacks:
            self._deliver(batch.callbacks, None, inline)

    def _deliver(
        self,
        callbacks: list[Callable[[BaseException | None], None]],
        error: BaseException | None,
        inline: bool,
    ) -> None:
        if inline:
            _run_all(callbacks, error)
        else:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_run_all, callbacks, error)

    @staticmethod
    def _drop(conn: sqlite3.Connection, job_ids: list[str]) -> None:
        rows = [(j,) for j in job_ids]
        conn.executemany("DELETE FROM result_batches WHERE job = ?", rows)
        conn.executemany("DELETE FROM task_batches WHERE job = ?", rows)
        conn.executemany("DELETE FROM jobs WHERE id = ?", rows)
        # starts rows hold ids of many jobs; they are compacted on the next open instead.


def _run_all(
    callbacks: list[Callable[[BaseException | None], None]], error: BaseException | None
) -> None:
    for cb in callbacks:
        try:
            cb(error)
        except Exception:
            log.exception("journal callback failed")


class MemoryJournal(NoRecorder):
    """The journal's stub for ``--state-dir none``: keeps nothing, commits at once.

    Same interface as :class:`Journal`, so the scheduler has one code path; every
    ``after_commit`` callback runs immediately because there is nothing to wait for.
    """

    path = None
    failed: BaseException | None = None
    commits = 0
    commit_seconds = 0.0
    commit_latency = Histogram(COMMIT_BUCKETS)

    def open(self) -> Replay:
        return Replay(jobs=[], tasks=[], attempts={}, results=[])

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def after_commit(self, callback: Callable[[BaseException | None], None]) -> None:
        callback(None)

    def flush_soon(self) -> None:
        pass
