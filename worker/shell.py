"""Run one shell task as a real subprocess, with bounded output, a timeout and cancellation.

Each task runs in a new session (so in its own process group) with stdin on /dev/null.
Its stdout and stderr are read in a ``poll`` loop that keeps only the last
:data:`~protocol.model.TAIL_BYTES` of each, so a task printing gigabytes costs no memory.
The loop also watches:

* a pidfd of the task's leader process, so the task ends when the leader exits even if a
  background child still holds the pipes open (``sleep 30 & echo started``);
* an optional control descriptor (the worker's socket to the scheduler): when it is
  readable the caller's ``on_control()`` runs and may ask for the task to be cancelled;
* the timeout, and an optional wake-up time at which ``on_wake()`` runs (the worker uses it
  to flush results that were waiting when a long task started).

Stopping a task (timeout, cancel) sends SIGTERM to the whole process group, then SIGKILL
after a grace period. When the leader exits, whatever is left of its group is SIGKILLed
before the leader is reaped (the zombie leader keeps the group id from being reused), so a
task never leaves processes behind, even when the supervising code itself fails.

Commands without shell syntax are exec'd directly from their ``split()`` words, which saves
starting /bin/sh for every task; :func:`needs_shell` decides, conservatively.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import select
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from protocol.model import TAIL_BYTES, TaskState, tail_text

SHELL = "/bin/sh"
DEFAULT_KILL_GRACE_S = 2.0
READ_CHUNK = 64 * 1024
# Without pidfd support the loop checks for the leader's exit this often.
_EXIT_CHECK_S = 0.01
# After the leader exits, at most this much more output is read from the pipes.
_DRAIN_LIMIT = 4 * 1024 * 1024

# Characters that make a command line mean more than its blank-separated words: quoting,
# expansions, globs, redirections, pipelines, lists, grouping, comments; also any blank
# other than space and tab, since str.split() and sh disagree about those.
_SHELL_SYNTAX = re.compile(r"""[^\S \t]|[\\'"`$|&;<>()*?\[{}#]|(?:^|[ \t])~""")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")

# Reserved words, and every builtin of dash and bash. Builtins that also exist as programs
# (echo, printf, test, true, kill, pwd) are included on purpose: the builtin's behaviour
# differs in details (``echo -e``, ``pwd`` through symlinks), and sh running a builtin costs
# no more than exec'ing the program would.
_SHELL_WORDS = frozenset(
    """
    ! { } case do done elif else esac fi for function if in select then time until while
    . : [ [[ alias bg bind break builtin caller cd chdir command compgen complete compopt
    continue coproc declare dirs disown echo enable eval exec exit export false fc fg getopts
    hash help history jobs kill let local logout mapfile popd printf pushd pwd read readarray
    readonly return set shift shopt source suspend test times trap true type typeset ulimit
    umask unalias unset wait
    """.split()  # noqa: SIM905 (one word list reads better than 90 quoted strings)
)


def needs_shell(cmd: str) -> bool:
    """True unless ``cmd`` means exactly its ``split()`` words exec'd as a program.

    Conservative: when in doubt, the command goes through ``/bin/sh -c``.
    """
    if _SHELL_SYNTAX.search(cmd):
        return True
    words = cmd.split()
    if not words:
        return True  # sh -c "" succeeds; there is nothing to exec
    first = words[0]
    return first in _SHELL_WORDS or _ASSIGNMENT.match(first) is not None


@dataclass(slots=True)
class ShellOutcome:
    """What happened to one shell task."""

    state: TaskState
    exit_code: int | None  # negative: killed by that signal number
    stdout: str
    stderr: str
    error: str | None
    started: float  # time.time()
    finished: float
    pid: int | None = None  # the leader (and process group id); None if it never started
    direct: bool = False  # exec'd without /bin/sh


_devnull_fd = -1
# Leaders (= process group ids) of the tasks started here and not yet reaped.
_live_leaders: set[int] = set()


def _devnull() -> int:
    """One read-only /dev/null descriptor for every task's stdin (saves an open per task)."""
    global _devnull_fd
    if _devnull_fd < 0:
        _devnull_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _devnull_fd


def _sh_argv(cmd: str) -> list[str]:
    # argv[0] "sh" (run from SHELL) makes sh's messages read "sh: 1: foo: not found", the
    # same as the one run_shell synthesises for a missing program exec'd directly.
    return ["sh", "-c", cmd]


@dataclass(slots=True)
class _Child:
    """A started task: its leader's pid and our ends of its stdout and stderr pipes."""

    pid: int
    out_fd: int
    err_fd: int
    returncode: int | None = None

    def wait(self) -> int:
        """Reap the leader; the exit code, or minus the signal number (as Popen has it)."""
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def close(self) -> None:
        os.close(self.out_fd)
        os.close(self.err_fd)


# Python ignores these; a task must start with them at their defaults (as Popen's
# restore_signals does), or `yes | head` would never see SIGPIPE.
_RESTORED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name)
)


def _environment() -> Mapping[Any, Any]:
    """The current environment, cheaply: CPython keeps ``os.environ``'s contents, encoded,
    in a plain dict, which posix_spawn reads at C speed; going through ``os.environ``'s
    Python-level mapping methods cost 70 us per task (more than the spawn itself)."""
    data = getattr(os.environ, "_data", None)
    return data if isinstance(data, dict) else os.environ


def _inherited_fds() -> list[int]:
    """Descriptors above 2 that an exec would pass on: what Popen's close_fds closes.

    Normally none (Python opens everything close-on-exec), but a library or handler
    may have made one inheritable; the task must not get it. Linux lists them in
    /proc/self/fd; without /proc there is nothing cheap to look at.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    fds: list[int] = []
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    fds.append(fd)
            except OSError:
                pass  # the descriptor listdir itself used, closed already
    return fds


def _spawn(argv: list[str], executable: str | None) -> _Child:
    """Start a task with ``posix_spawn`` (glibc's is a vfork-style clone and an exec).

    It costs about half the parent CPU of ``subprocess.Popen`` (measured 122 vs 222 us
    per ``sleep 0``), which matters when tasks are tiny. The task gets only its stdin,
    stdout and stderr (see :func:`_inherited_fds`): a task holding the scheduler socket
    would hide the worker's death from the scheduler.
    """
    out_r, out_w = os.pipe()
    try:
        err_r, err_w = os.pipe()
    except OSError:
        os.close(out_r)
        os.close(out_w)
        raise
    actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds()]
    actions += [
        (os.POSIX_SPAWN_DUP2, _devnull(), 0),
        (os.POSIX_SPAWN_DUP2, out_w, 1),
        (os.POSIX_SPAWN_DUP2, err_w, 2),
    ]
    # No executable: search PATH for argv[0], as execvp does.
    spawn, path = (os.posix_spawnp, argv[0]) if executable is None else (os.posix_spawn, executable)
    try:
        pid = spawn(
            path,
            argv,
            _environment(),
            file_actions=actions,
            setsid=True,
            setsigdef=_RESTORED_SIGNALS,
            setsigmask=(),
        )
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return _Child(pid, out_r, err_r)


def kill_all_tasks() -> None:
    """SIGKILL every shell task this process runs, with its process group.

    For a worker about to die abruptly (its SIGTERM handler), where no ``finally`` will run.
    Besides our own record it reads the kernel's list of this process's children, which
    also covers a task whose ``posix_spawn()`` call has not returned yet.
    """
    leaders = set(_live_leaders)
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as fh:
                leaders.update(int(pid) for pid in fh.read().split())
    except OSError:
        pass  # no /proc or no CONFIG_PROC_CHILDREN: our record has to do
    for pid in leaders:
        _killpg(pid, signal.SIGKILL)  # a task's leader is its group id (new session)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)  # any child that has no group of its own


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the whole group is gone already
    except PermissionError:
        pass  # a setuid member; nothing more we can do


def _open_pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, or a kernel older than 5.3
        return -1


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it (WNOWAIT keeps the zombie)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _append_tail(tail: bytearray, data: bytes) -> None:
    tail += data
    if len(tail) > TAIL_BYTES:
        del tail[:-TAIL_BYTES]


def _outcome_without_process(
    started: float, exit_code: int | None, stderr: str, error: str, *, direct: bool
) -> ShellOutcome:
    return ShellOutcome(
        state=TaskState.FAILED,
        exit_code=exit_code,
        stdout="",
        stderr=stderr,
        error=error,
        started=started,
        finished=time.time(),
        direct=direct,
    )


def run_shell(
    cmd: str,
    *,
    timeout_s: float | None = None,
    kill_grace_s: float = DEFAULT_KILL_GRACE_S,
    control_fd: int | None = None,
    on_control: Callable[[], bool] | None = None,
    wake_at: float | None = None,
    on_wake: Callable[[], None] | None = None,
) -> ShellOutcome:
    """Run ``cmd`` to completion and describe the outcome; never raises for the task's faults.

    ``timeout_s``: wall-clock limit (None or <= 0: none); then the group gets SIGTERM, and
    SIGKILL ``kill_grace_s`` later; state ``timed_out``.

    ``control_fd`` / ``on_control``: when the descriptor is readable, ``on_control()`` is
    called; it must consume what is readable and return True to cancel the task (state
    ``cancelled``, same SIGTERM/SIGKILL sequence). After it returns True it is not called
    again for this task.

    ``wake_at`` / ``on_wake``: ``on_wake()`` is called once when ``time.monotonic()``
    reaches ``wake_at``, if the task is still running.
    """
    if (control_fd is None) != (on_control is None):
        raise ValueError("control_fd and on_control go together")
    if wake_at is not None and on_wake is None:
        raise ValueError("wake_at needs on_wake")
    direct = not needs_shell(cmd)
    argv = cmd.split() if direct else _sh_argv(cmd)
    started = time.time()
    try:
        proc = _spawn(argv, None if direct else SHELL)
    except ValueError as exc:  # an embedded NUL: no exec can carry it
        return _outcome_without_process(started, None, "", f"invalid command: {exc}", direct=direct)
    except OSError as exc:
        if not direct:  # fork failed (EAGAIN, ENOMEM, EMFILE): the task never ran
            return _outcome_without_process(
                started, None, "", f"cannot start {SHELL}: {exc}", direct=False
            )
        if exc.errno == errno.ENOENT:
            # What sh (dash) reports for a missing command, without paying for sh to say it.
            message = f"sh: 1: {argv[0]}: not found\n"
            return _outcome_without_process(started, 127, message, "exit code 127", direct=True)
        # EACCES, ENOEXEC (a script without #!) and the like: sh has rules for these
        # (exit 126, or running the file as a script), so let it apply them.
        direct = False
        try:
            proc = _spawn(_sh_argv(cmd), SHELL)
        except OSError as exc2:
            return _outcome_without_process(
                started, None, "", f"cannot start {SHELL}: {exc2}", direct=False
            )
    return _supervise(
        proc,
        started=started,
        direct=direct,
        timeout_s=timeout_s,
        kill_grace_s=kill_grace_s,
        control_fd=control_fd,
        on_control=on_control,
        wake_at=wake_at,
        on_wake=on_wake,
    )


def _supervise(
    proc: _Child,
    *,
    started: float,
    direct: bool,
    timeout_s: float | None,
    kill_grace_s: float,
    control_fd: int | None,
    on_control: Callable[[], bool] | None,
    wake_at: float | None,
    on_wake: Callable[[], None] | None,
) -> ShellOutcome:
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    _live_leaders.add(pgid)
    out_fd, err_fd = proc.out_fd, proc.err_fd
    tails = {out_fd: bytearray(), err_fd: bytearray()}
    pidfd = -1
    stop_reason: TaskState | None = None
    group_killed = False
    try:
        pidfd = _open_pidfd(proc.pid)
        poller = select.poll()
        poller.register(out_fd, select.POLLIN)
        poller.register(err_fd, select.POLLIN)
        if pidfd >= 0:
            poller.register(pidfd, select.POLLIN)
        if control_fd is not None:
            poller.register(control_fd, select.POLLIN)
        open_pipes = 2
        now = time.monotonic()
        deadline = now + timeout_s if timeout_s is not None and timeout_s > 0 else math.inf
        kill_at = math.inf
        wake = math.inf if wake_at is None else wake_at
        exited = False

        def stop(reason: TaskState) -> None:
            nonlocal stop_reason, kill_at
            stop_reason = reason
            _killpg(pgid, signal.SIGTERM)
            kill_at = time.monotonic() + max(kill_grace_s, 0.0)

        while not exited:
            wait = min(deadline, kill_at, wake) - now
            if pidfd < 0:
                wait = min(wait, _EXIT_CHECK_S)
            # Round up: waking just before a deadline would only spin once more.
            timeout_ms = -1 if wait == math.inf else max(0, math.ceil(wait * 1000))
            for fd, _events in poller.poll(timeout_ms):
                if fd == pidfd:
                    exited = True
                elif fd == control_fd:
                    assert on_control is not None
                    if on_control():
                        poller.unregister(fd)
                        if stop_reason is None and not exited:
                            stop(TaskState.CANCELLED)
                else:
                    data = os.read(fd, READ_CHUNK)
                    if data:
                        _append_tail(tails[fd], data)
                    else:
                        poller.unregister(fd)
                        open_pipes -= 1
            now = time.monotonic()
            if pidfd < 0 and not exited:
                exited = _has_exited(proc.pid)
            if exited:
                break
            if stop_reason is None and now >= deadline:
                stop(TaskState.TIMED_OUT)
            if now >= kill_at:
                _killpg(pgid, signal.SIGKILL)
                kill_at = math.inf
            if now >= wake:
                wake = math.inf
                assert on_wake is not None
                on_wake()

        # The leader is a zombie now: kill what is left of its group (background children
        # would otherwise outlive the task), then take the output already in the pipes.
        _killpg(pgid, signal.SIGKILL)
        group_killed = True
        drained = 0
        while open_pipes and drained < _DRAIN_LIMIT:
            ready = [fd for fd, _ in poller.poll(0) if fd in tails]
            if not ready:
                break
            for fd in ready:
                data = os.read(fd, READ_CHUNK)
                drained += len(data)
                if data:
                    _append_tail(tails[fd], data)
                else:
                    poller.unregister(fd)
                    open_pipes -= 1
    finally:
        if not group_killed:  # an exception from a callback or the loop: no process survives
            _killpg(pgid, signal.SIGKILL)
        proc.wait()
        _live_leaders.discard(pgid)
        proc.close()
        if pidfd >= 0:
            os.close(pidfd)

    code = proc.wait()  # reaped above: the saved code
    state: TaskState
    error: str | None
    if stop_reason is TaskState.TIMED_OUT:
        state, error = stop_reason, f"timed out after {timeout_s:g}s"
    elif stop_reason is TaskState.CANCELLED:
        state, error = stop_reason, "cancelled"
    elif code == 0:
        state, error = TaskState.SUCCEEDED, None
    elif code > 0:
        state, error = TaskState.FAILED, f"exit code {code}"
    else:
        state, error = TaskState.FAILED, f"killed by signal {_signal_name(-code)}"
    return ShellOutcome(
        state=state,
        exit_code=code,
        stdout=tail_text(bytes(tails[out_fd])),
        stderr=tail_text(bytes(tails[err_fd])),
        error=error,
        started=started,
        finished=time.time(),
        pid=proc.pid,
        direct=direct,
    )


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
