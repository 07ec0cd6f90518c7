"""The shell runner: real subprocesses, exit codes, output tails, timeouts, cancellation."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from protocol.model import TAIL_BYTES, TaskState
from tests.worker.proc_util import process_gone, wait_until
from worker import shell as shell_module
from worker.shell import kill_all_tasks, run_shell


def _pids(text: str) -> list[int]:
    return [int(word) for word in text.split()]


def test_success_captures_stdout_and_times() -> None:
    before = time.time()
    out = run_shell("echo hello; echo world")
    assert out.state is TaskState.SUCCEEDED
    assert out.exit_code == 0
    assert out.stdout == "hello\nworld\n"
    assert out.stderr == ""
    assert out.error is None
    assert before <= out.started <= out.finished <= time.time()


def test_failing_command_reports_exit_code_and_stderr() -> None:
    out = run_shell("sh -c 'echo oops >&2; exit 3'")
    assert out.state is TaskState.FAILED
    assert out.exit_code == 3
    assert out.stderr == "oops\n"
    assert out.stdout == ""
    assert out.error == "exit code 3"


def test_plain_command_is_exec_directly_and_shell_syntax_is_not() -> None:
    direct = run_shell("expr 40 + 2")
    assert direct.direct is True
    assert direct.stdout == "42\n"
    via_sh = run_shell("expr 40 + 2 | tr 4 X")
    assert via_sh.direct is False
    assert via_sh.stdout == "X2\n"


def test_stdout_keeps_only_the_real_tail_of_a_megabyte() -> None:
    expected = subprocess.run(["seq", "1", "200000"], capture_output=True, check=True).stdout
    assert len(expected) > 1_000_000
    out = run_shell("seq 1 200000")
    assert out.state is TaskState.SUCCEEDED
    assert len(out.stdout) == TAIL_BYTES
    assert out.stdout.encode() == expected[-TAIL_BYTES:]


def test_stderr_keeps_only_the_real_tail_of_a_megabyte() -> None:
    expected = subprocess.run(["seq", "1", "200000"], capture_output=True, check=True).stdout
    out = run_shell("seq 1 200000 >&2; echo done")
    assert out.stdout == "done\n"
    assert out.stderr.encode() == expected[-TAIL_BYTES:]


def test_stdin_is_dev_null() -> None:
    # With an inherited stdin, cat would wait for input until the timeout.
    out = run_shell("cat", timeout_s=5)
    assert out.direct is True
    assert out.state is TaskState.SUCCEEDED
    assert out.stdout == ""


def test_only_stdio_reaches_the_task() -> None:
    # ls holds one descriptor of its own (3) on /proc/self/fd; nothing else may be open.
    extra_r, extra_w = os.pipe()
    os.set_inheritable(extra_r, True)
    try:
        out = run_shell("ls /proc/self/fd")
    finally:
        os.close(extra_r)
        os.close(extra_w)
    assert out.direct is True
    assert set(out.stdout.split()) <= {"0", "1", "2", "3"}


def test_missing_command_behaves_like_sh() -> None:
    out = run_shell("no-such-command-xyz --flag")
    assert out.direct is True
    assert out.state is TaskState.FAILED
    assert out.exit_code == 127
    assert out.stderr == "sh: 1: no-such-command-xyz: not found\n"
    real = subprocess.run(["sh", "-c", "no-such-command-xyz --flag"], capture_output=True)
    assert real.returncode == out.exit_code
    assert real.stderr.decode() == out.stderr


def test_file_without_execute_permission_gets_sh_exit_126(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("echo hi\n")
    out = run_shell(str(script))
    assert out.exit_code == 126
    assert "Permission denied" in out.stderr
    assert out.direct is False  # sh gave the verdict


def test_executable_script_without_shebang_runs_as_a_sh_script(tmp_path: Path) -> None:
    script = tmp_path / "no-shebang"
    script.write_text("echo from-script $((1 + 2))\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    out = run_shell(f"{script} arg")
    assert out.state is TaskState.SUCCEEDED
    assert out.stdout == "from-script 3\n"


def test_death_by_signal_is_a_negative_exit_code() -> None:
    out = run_shell("kill -KILL $$")
    assert out.state is TaskState.FAILED
    assert out.exit_code == -9
    assert out.error == "killed by signal SIGKILL"


def test_timeout_kills_the_whole_process_group() -> None:
    began = time.monotonic()
    out = run_shell("sleep 30 & echo $!; echo $$; sleep 30", timeout_s=0.5, kill_grace_s=1.0)
    assert time.monotonic() - began < 10
    assert out.state is TaskState.TIMED_OUT
    assert out.error == "timed out after 0.5s"
    background, leader = _pids(out.stdout)
    assert leader == out.pid
    assert wait_until(lambda: process_gone(background) and process_gone(leader))


def test_timeout_escalates_to_sigkill_after_the_grace_period() -> None:
    # Both sh and its sleep ignore SIGTERM (the disposition is inherited across exec).
    out = run_shell("trap '' TERM; echo $$; sleep 30", timeout_s=0.3, kill_grace_s=0.3)
    assert out.state is TaskState.TIMED_OUT
    assert out.exit_code == -9
    assert 0.6 <= out.finished - out.started < 10
    assert wait_until(lambda: process_gone(_pids(out.stdout)[0]))


def test_task_ends_with_its_leader_and_background_children_are_killed() -> None:
    out = run_shell("sleep 30 & echo $!", timeout_s=20)
    assert out.state is TaskState.SUCCEEDED
    assert out.finished - out.started < 10
    (background,) = _pids(out.stdout)
    assert wait_until(lambda: process_gone(background))


def test_timeout_applies_to_a_task_that_closed_its_output() -> None:
    out = run_shell("exec >&- 2>&-; sleep 30", timeout_s=0.3, kill_grace_s=0.5)
    assert out.state is TaskState.TIMED_OUT
    assert out.finished - out.started < 10


def test_control_fd_cancels_the_running_task() -> None:
    read_fd, write_fd = os.pipe()
    calls: list[bytes] = []

    def on_control() -> bool:
        calls.append(os.read(read_fd, 100))
        return True

    try:
        os.write(write_fd, b"cancel")
        out = run_shell("sleep 30", control_fd=read_fd, on_control=on_control, kill_grace_s=1)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert out.state is TaskState.CANCELLED
    assert out.error == "cancelled"
    assert out.finished - out.started < 10
    assert calls == [b"cancel"]
    assert out.pid is not None
    assert wait_until(lambda: process_gone(out.pid or 0))


def test_control_fd_without_cancel_lets_the_task_finish() -> None:
    read_fd, write_fd = os.pipe()
    seen: list[bytes] = []

    def on_control() -> bool:
        seen.append(os.read(read_fd, 100))
        return False

    try:
        os.write(write_fd, b"other business")
        out = run_shell("sh -c 'sleep 0.2; echo done'", control_fd=read_fd, on_control=on_control)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert out.state is TaskState.SUCCEEDED
    assert out.stdout == "done\n"
    assert seen == [b"other business"]


def test_on_wake_runs_once_while_the_task_runs() -> None:
    wakes: list[float] = []
    wake_at = time.monotonic() + 0.05
    out = run_shell("sleep 0.4", wake_at=wake_at, on_wake=lambda: wakes.append(time.monotonic()))
    assert out.state is TaskState.SUCCEEDED
    assert len(wakes) == 1
    assert wakes[0] >= wake_at


def test_a_failing_callback_leaves_no_process_behind(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    read_fd, write_fd = os.pipe()

    def on_control() -> bool:
        assert wait_until(lambda: marker.exists() and marker.read_text().endswith("\n"))
        raise RuntimeError("callback failed")

    try:
        os.write(write_fd, b"x")
        with pytest.raises(RuntimeError, match="callback failed"):
            run_shell(
                f"echo $$ > {marker}; exec sleep 30", control_fd=read_fd, on_control=on_control
            )
    finally:
        os.close(read_fd)
        os.close(write_fd)
    pid = int(marker.read_text())
    assert wait_until(lambda: process_gone(pid))


def test_no_descriptor_leaks_across_tasks() -> None:
    run_shell("true")  # opens the shared /dev/null descriptor, which is meant to stay
    before = len(os.listdir("/proc/self/fd"))
    for cmd in ("true", "echo x", "no-such-command-xyz", "sh -c 'exit 4'"):
        run_shell(cmd)
    assert len(os.listdir("/proc/self/fd")) == before


def test_control_fd_and_callback_must_come_together() -> None:
    with pytest.raises(ValueError, match="together"):
        run_shell("true", control_fd=0)


def test_kill_all_tasks_kills_the_running_task_and_its_group(tmp_path: Path) -> None:
    marker = tmp_path / "pids"

    def kill_everything() -> None:
        assert wait_until(lambda: marker.exists() and marker.read_text().count("\n") == 2)
        kill_all_tasks()

    out = run_shell(
        f"sleep 30 & echo $! > {marker}; echo $$ >> {marker}; wait",
        wake_at=time.monotonic(),
        on_wake=kill_everything,
    )
    assert out.state is TaskState.FAILED
    assert out.exit_code == -9
    assert out.finished - out.started < 10
    background, leader = _pids(marker.read_text())
    assert leader == out.pid
    assert wait_until(lambda: process_gone(background))


def test_a_shell_that_cannot_start_fails_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shell_module, "SHELL", "/nonexistent/sh")
    out = run_shell("echo hi")
    assert out.state is TaskState.FAILED
    assert out.exit_code is None
    assert out.pid is None
    assert out.error is not None
    assert out.error.startswith("cannot start /nonexistent/sh: ")


def test_without_pidfd_the_leader_is_still_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shell_module, "_open_pidfd", lambda pid: -1)
    out = run_shell("sleep 30 & echo $!", timeout_s=20)
    assert out.state is TaskState.SUCCEEDED
    assert out.finished - out.started < 10
    assert wait_until(lambda: process_gone(_pids(out.stdout)[0]))
    timed = run_shell("exec >&- 2>&-; sleep 30", timeout_s=0.3, kill_grace_s=0.5)
    assert timed.state is TaskState.TIMED_OUT


@pytest.mark.parametrize("cmd", ["echo a\0b", "printenv a\0b"])
def test_a_command_with_a_nul_byte_fails_instead_of_raising(cmd: str) -> None:
    out = run_shell(cmd)
    assert out.state is TaskState.FAILED
    assert out.error == "invalid command: embedded null byte"
