"""The call runner: handlers in-process, failures, timeouts, unserialisable values."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from protocol.model import TAIL_BYTES, TaskState
from tests.worker import handlers_sample  # noqa: F401 (registers the sample handlers)
from worker.calls import run_call
from worker.registry import Registry


def test_success_returns_the_value() -> None:
    out = run_call("add", [2, 3])
    assert out.state is TaskState.SUCCEEDED
    assert out.value == 5
    assert out.error is None
    assert out.stderr == ""
    assert out.started <= out.finished


def test_keyword_arguments_reach_the_handler() -> None:
    out = run_call("HELLO", kwargs={"firstName": "Ada", "lastName": "Lovelace"})
    assert out.value == "Hello Ada Lovelace"


def test_builtin_echo_returns_args_and_kwargs() -> None:
    out = run_call("echo", [1, "two"], {"three": 3})
    assert out.value == [[1, "two"], {"three": 3}]


def test_exception_fails_the_task_with_type_message_and_traceback() -> None:
    out = run_call("fail", ["boom"])
    assert out.state is TaskState.FAILED
    assert out.error == "RuntimeError: boom"
    assert out.value is None
    assert out.stderr.startswith("Traceback (most recent call last):")
    assert "builtin_handlers.py" in out.stderr
    assert "worker/calls.py" not in out.stderr  # the runner's own frame is left out
    assert out.stderr.rstrip().endswith("RuntimeError: boom")


def test_a_long_traceback_keeps_its_last_lines_within_the_tail_limit() -> None:
    out = run_call("deep_fail", [200])
    assert out.error == "ValueError: bottom reached"
    assert len(out.stderr.encode()) <= TAIL_BYTES
    assert out.stderr.rstrip().endswith("ValueError: bottom reached")


def test_wrong_arguments_fail_the_task() -> None:
    out = run_call("add", [1])
    assert out.state is TaskState.FAILED
    assert out.error is not None
    assert out.error.startswith("TypeError: ")


def test_sys_exit_in_a_handler_fails_only_the_task() -> None:
    out = run_call("exit_with", [3])
    assert out.state is TaskState.FAILED
    assert out.error == "SystemExit: 3"


@pytest.fixture
def no_outer_alarm() -> Iterator[None]:
    """Set aside pytest-timeout's SIGALRM timer and handler for the test."""
    handler = signal.getsignal(signal.SIGALRM)
    delay, interval = signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, handler)
        if delay:
            signal.setitimer(signal.ITIMER_REAL, delay, interval)


@pytest.mark.usefixtures("no_outer_alarm")
def test_timeout_interrupts_the_handler() -> None:
    began = time.monotonic()
    out = run_call("sleep", [10], timeout_s=0.2)
    assert out.state is TaskState.TIMED_OUT
    assert out.error == "timed out after 0.2s"
    assert time.monotonic() - began < 5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_timeout_is_not_swallowed_by_except_exception() -> None:
    out = run_call("swallow_exceptions", [10], timeout_s=0.2)
    assert out.state is TaskState.TIMED_OUT
    assert out.finished - out.started < 5


@pytest.mark.usefixtures("no_outer_alarm")
def test_a_call_within_its_timeout_succeeds_and_disarms_the_timer() -> None:
    out = run_call("add", [1, 1], timeout_s=5)
    assert out.state is TaskState.SUCCEEDED
    assert out.value == 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.usefixtures("no_outer_alarm")
def test_an_outer_alarm_handler_and_timer_are_restored() -> None:
    fired: list[int] = []

    def outer(signum: int, frame: object) -> None:
        fired.append(signum)

    signal.signal(signal.SIGALRM, outer)
    signal.setitimer(signal.ITIMER_REAL, 50)
    try:
        out = run_call("add", [1, 1], timeout_s=5)
        assert out.state is TaskState.SUCCEEDED
        assert signal.getsignal(signal.SIGALRM) is outer
        delay, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 40 < delay <= 50
        timed_out = run_call("sleep", [10], timeout_s=0.1)
        assert timed_out.state is TaskState.TIMED_OUT
        assert signal.getsignal(signal.SIGALRM) is outer
        assert fired == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def test_timeouts_are_not_enforced_off_the_main_thread() -> None:
    outcomes = []
    thread = threading.Thread(
        target=lambda: outcomes.append(run_call("sleep", [0.05], timeout_s=0.01))
    )
    thread.start()
    thread.join(10)
    assert outcomes[0].state is TaskState.SUCCEEDED


def test_unknown_handler_fails_with_the_list_of_handlers() -> None:
    reg = Registry()
    reg.register("one", lambda: 1)
    reg.register("two", lambda: 2)
    out = run_call("three", registry=reg)
    assert out.state is TaskState.FAILED
    assert out.error == "unknown_handler: no handler named 'three' (registered: one, two)"


def test_unknown_handler_in_the_default_registry_lists_the_builtins() -> None:
    out = run_call("no_such_handler")
    assert out.error is not None
    assert out.error.startswith("unknown_handler: no handler named 'no_such_handler'")
    assert "noop" in out.error


def test_unserialisable_return_value_fails_the_task() -> None:
    out = run_call("make_object")
    assert out.state is TaskState.FAILED
    assert out.value is None
    assert (
        out.error
        == "the return value of handler 'make_object' is not serialisable: builtins.object"
    )


def test_an_int_too_large_for_msgpack_is_unserialisable() -> None:
    out = run_call("huge_int")
    assert out.state is TaskState.FAILED
    assert out.error is not None
    assert "'huge_int' is not serialisable: builtins.int" in out.error


def test_serialisable_containers_pass() -> None:
    out = run_call("kwargs_echo", kwargs={"a": [1, 2.5, None, True, b"raw"], "b": {"c": "é"}})
    assert out.state is TaskState.SUCCEEDED
    assert out.value == {"a": [1, 2.5, None, True, b"raw"], "b": {"c": "é"}}
