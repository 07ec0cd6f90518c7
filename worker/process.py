"""The local worker process: runs tasks sent by the scheduler over an inherited socketpair.

Started by the scheduler as::

    python -m worker.process --fd FD --worker-id ID [--handlers mod1,mod2]

FD is this process's end of a ``socket.socketpair()``, spoken with the framing of
:mod:`protocol.framing` (the ops are listed at the end of :mod:`protocol.messages`)::

    worker -> scheduler  ready {worker, pid, handlers}   or  fatal {error}, then exit 3
    scheduler -> worker  run {tasks}  cancel {ids}  stop
    worker -> scheduler  results {results}

Tasks run one at a time, in order, from a local queue. Results are batched: a batch is sent
when the queue runs dry, when it holds :data:`BATCH_MAX` results, or when it has been
collecting for :data:`BATCH_AGE_S` (so a long task reports at once and short ones share a
frame). The socket is read without blocking whenever a batch is sent, and watched while a
shell task runs, so a ``cancel`` can stop the running task. Call tasks cost no system call
of their own: the per-task path is a dict lookup, the call and a result dict.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from types import FrameType
from typing import Any

import structlog

from protocol.errors import FrameError, FrameTooLarge
from protocol.framing import BlockingFrameSocket
from protocol.logs import LEVELS, configure_logging
from protocol.messages import W_CANCEL, W_FATAL, W_READY, W_RESULTS, W_RUN, W_STOP
from protocol.model import TaskState
from worker.errors import HandlerImportError
from worker.execute import cancelled_result, execute
from worker.registry import load_handler_modules
from worker.shell import DEFAULT_KILL_GRACE_S, kill_all_tasks

log = structlog.get_logger(__name__)

BATCH_MAX = 256
# A result frame per 20 ms at most while tasks keep coming: with 5 ms, 2 ms shell tasks
# sent a frame per two or three tasks, and the scheduler and client spent 140 and 86 us
# of CPU per task on frames (measured); with 20 ms, 45 and 29 us. A worker whose queue
# runs dry reports at once, so a lone task's result is never held back.
BATCH_AGE_S = 0.02
EXIT_OK = 0
EXIT_PROTOCOL = 2
EXIT_FATAL = 3


class WorkerLoop:
    """The run/cancel/stop loop over one scheduler connection."""

    def __init__(
        self,
        conn: BlockingFrameSocket,
        worker_id: str,
        *,
        kill_grace_s: float = DEFAULT_KILL_GRACE_S,
        batch_max: int = BATCH_MAX,
        batch_age_s: float = BATCH_AGE_S,
    ) -> None:
        self.conn = conn
        self.worker_id = worker_id
        self.kill_grace_s = kill_grace_s
        self.batch_max = batch_max
        self.batch_age_s = batch_age_s
        self.pending: deque[dict[str, Any]] = deque()
        self.results: list[dict[str, Any]] = []
        self.batch_started = 0.0  # monotonic time the pending batch began collecting
        self.running_id: Any = None  # id of the shell task in progress
        self.cancel_running = False
        self.stopping = False
        self.closed = False  # the scheduler's end is gone
        self.tasks_done = 0

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until ``stop`` (after the queue drains) or the scheduler closes the socket."""
        pending = self.pending
        monotonic = time.monotonic
        worker_id = self.worker_id
        while not self.closed:  # set when the scheduler's end goes away
            if not pending:
                self.flush()
                if pending:
                    continue
                if self.stopping or self.closed:
                    return
                msg = self.conn.recv()
                if msg is None:
                    self.closed = True
                    return
                self.handle(msg)
                while self.conn.has_buffered():  # read together, handle together (no syscall)
                    self.handle(self.conn.recv())
                continue
            task = pending.popleft()
            if not self.results:
                self.batch_started = monotonic()
            if task.get("kind") == "shell":
                result = self._run_shell(task)  # may see the scheduler go, ending the loop
            else:
                result = execute(task, worker_id=worker_id)
            self.results.append(result)
            self.tasks_done += 1
            if (
                len(self.results) >= self.batch_max
                or monotonic() - self.batch_started >= self.batch_age_s
            ):
                self.flush()

    def _run_shell(self, task: dict[str, Any]) -> dict[str, Any]:
        self.running_id = task.get("id")
        self.cancel_running = False
        # Results collected before this task must not wait for it to finish.
        wake_at = self.batch_started + self.batch_age_s if self.results else None
        try:
            return execute(
                task,
                worker_id=self.worker_id,
                kill_grace_s=self.kill_grace_s,
                control_fd=self.conn.fileno(),
                on_control=self._on_control,
                wake_at=wake_at,
                on_wake=self._send_results,
            )
        finally:
            self.running_id = None

    def _on_control(self) -> bool:
        """The socket is readable while a shell task runs: True cancels that task."""
        msgs = self.conn.poll()
        if msgs is None:
            self.closed = True
            return True  # no scheduler, no point in finishing: kill the task
        reported = len(self.results)
        for msg in msgs:
            self.handle(msg)
        if len(self.results) > reported:  # queued tasks just cancelled: report them now
            self._send_results()
        # Otherwise (new tasks to hold) the results wait for their batch: a result frame
        # per refill cost the scheduler and the client a frame per one or two shell tasks.
        return self.cancel_running

    # --- messages ------------------------------------------------------------------------

    def handle(self, msg: Any) -> None:
        op = msg.get("op") if isinstance(msg, dict) else None
        if op == W_RUN:
            tasks = msg.get("tasks")
            if isinstance(tasks, list):
                self.pending.extend(t for t in tasks if isinstance(t, dict))
            else:
                log.warning("bad_run_message", tasks_type=type(tasks).__name__)
        elif op == W_CANCEL:
            ids = msg.get("ids")
            if isinstance(ids, list):
                self._cancel(ids)
            else:
                log.warning("bad_cancel_message", ids_type=type(ids).__name__)
        elif op == W_STOP:
            self.stopping = True
        else:
            log.warning("unknown_message", op=op)

    def _cancel(self, ids: list[Any]) -> None:
        wanted = {i for i in ids if isinstance(i, str | int)}
        if self.running_id is not None and self.running_id in wanted:
            self.cancel_running = True
        if not any(task.get("id") in wanted for task in self.pending):
            return
        kept: list[dict[str, Any]] = []
        for task in self.pending:
            if task.get("id") in wanted:
                self._add_result(cancelled_result(task, worker_id=self.worker_id))
            else:
                kept.append(task)
        self.pending.clear()
        self.pending.extend(kept)

    # --- results -------------------------------------------------------------------------

    def _add_result(self, result: dict[str, Any]) -> None:
        if not self.results:
            self.batch_started = time.monotonic()
        self.results.append(result)

    def flush(self) -> None:
        """Send pending results, then take in whatever the scheduler has sent meanwhile."""
        self._send_results()
        if self.closed:
            return
        msgs = self.conn.poll()
        if msgs is None:
            self.closed = True
            return
        for msg in msgs:
            self.handle(msg)
        if not self.pending:
            # A run and a cancel of the same tasks read together leave only cancelled
            # results: send them now, since the caller is about to block in recv().
            self._send_results()

    def _send_results(self) -> None:
        if not self.results or self.closed:
            return
        batch, self.results = self.results, []
        try:
            try:
                self.conn.send({"op": W_RESULTS, "results": batch})
            except FrameTooLarge:
                self._send_one_by_one(batch)
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True

    def _send_one_by_one(self, batch: list[dict[str, Any]]) -> None:
        """A batch over the frame limit: send results singly, failing any that alone is."""
        for result in batch:
            try:
                self.conn.send({"op": W_RESULTS, "results": [result]})
            except FrameTooLarge as exc:
                log.warning("result_too_large", id=result.get("id"), error=str(exc))
                shrunk = dict(result, state=TaskState.FAILED.value, value=None)
                shrunk["error"] = f"result too large to send: {exc}"
                self.conn.send({"op": W_RESULTS, "results": [shrunk]})


# --- process entry point -------------------------------------------------------------------


def _ignore_sigint(signum: int, frame: FrameType | None) -> None:
    """SIGINT belongs to the scheduler, which stops workers itself.

    A Python handler rather than SIG_IGN: an ignored disposition would be inherited by
    every task exec'd from here, a handler is reset to the default by exec.
    """


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Die of SIGTERM as by default, but take the running task's process group along.

    Killing here rather than raising an exception to unwind through the shell runner
    leaves no window (such as inside ``Popen()``) where a task could escape.
    """
    kill_all_tasks()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _tighten_timer_slack() -> None:
    """Ask Linux to wake this process's sleeps on time (1 ns slack instead of 50 us).

    A task that sleeps or waits with a timeout is otherwise woken up to 50 us late
    each time; measured on ``time.sleep(0.01)``: 10.19 ms on average, 10.12 ms with
    this. Shell tasks inherit it (it survives exec). Best effort: not Linux, or no
    prctl, means the default slack.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


_PR_SET_TIMERSLACK = 29


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.process", description="taskmill local worker process"
    )
    parser.add_argument("--fd", type=int, required=True, help="inherited socketpair end")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument(
        "--handlers", default="", help="comma-separated modules that register handlers"
    )
    parser.add_argument(
        "--kill-grace",
        type=float,
        default=DEFAULT_KILL_GRACE_S,
        help="seconds between SIGTERM and SIGKILL when stopping a shell task",
    )
    parser.add_argument("--log-level", default="info", choices=sorted(LEVELS))
    parser.add_argument("--log-format", default="json", choices=("auto", "json", "console"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    # Handler print()s must never reach whatever fd 1 was; stderr is the worker's log.
    sys.stdout.flush()
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, _ignore_sigint)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if sys.platform == "linux":
        _tighten_timer_slack()
    configure_logging(args.log_level, args.log_format)
    structlog.contextvars.bind_contextvars(worker=args.worker_id, pid=os.getpid())

    try:
        sock = socket.socket(fileno=args.fd)
    except OSError as exc:
        log.error("bad_control_fd", fd=args.fd, error=str(exc))
        return EXIT_PROTOCOL
    os.set_inheritable(sock.fileno(), False)  # never leak the control socket into tasks
    sock.setblocking(True)
    conn = BlockingFrameSocket(sock)
    loop: WorkerLoop | None = None
    try:
        try:
            names = load_handler_modules(args.handlers.split(","))
        except HandlerImportError as exc:
            log.error("handler_import_failed", module=exc.module, error=str(exc))
            with contextlib.suppress(OSError):  # the scheduler may be gone already
                conn.send({"op": W_FATAL, "error": str(exc)})
            return EXIT_FATAL
        conn.send({"op": W_READY, "worker": args.worker_id, "pid": os.getpid(), "handlers": names})
        log.info("worker_ready", handlers=len(names))
        loop = WorkerLoop(conn, args.worker_id, kill_grace_s=args.kill_grace)
        loop.run()
    except FrameError as exc:
        log.error("protocol_error", error=str(exc))
        return EXIT_PROTOCOL
    except (BrokenPipeError, ConnectionResetError):
        log.info("scheduler_gone")
    finally:
        sock.close()
    log.info(
        "worker_exit",
        tasks=loop.tasks_done if loop else 0,
        reason="stop" if loop and loop.stopping else "eof",
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
