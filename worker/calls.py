"""Run one call task: a registered Python handler, in this process, with a timeout.

The timeout uses ``ITIMER_REAL``/SIGALRM, whose handler raises a private exception in the
handler's frame. That needs no thread and costs nothing for tasks without a timeout (the
timer is armed only for those), but it has the usual limits of an asynchronous
exception: it works only in the main thread (elsewhere the timeout is not enforced), it
interrupts blocking calls that return to the interpreter (``time.sleep``, socket reads)
but not a long C call that never does, and a handler must not use SIGALRM/ITIMER_REAL
itself.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import structlog

from protocol.codec import is_packable
from protocol.errors import ErrorCode
from protocol.model import TAIL_BYTES, TaskState
from worker.errors import UnknownHandler
from worker.registry import Handler, Registry, default_registry

log = structlog.get_logger(__name__)

# signal.getsignal() wraps its answer in an enum lookup that costs ~3 µs when the handler
# is a function (a raised and caught ValueError); the C function underneath does not.
_getsignal: Callable[[int], Any]
try:
    import _signal  # type: ignore[import-not-found]

    _getsignal = _signal.getsignal
except ImportError:  # pragma: no cover - not CPython
    _getsignal = signal.getsignal

# Return values of these types always pack; checking them by type skips an encode per task.
_ALWAYS_PACKABLE: frozenset[type] = frozenset({type(None), bool, float, bytes})
_INT_RANGE = range(-(2**63), 2**64)


class _CallTimeout(BaseException):
    """Raised by the SIGALRM handler inside a timed call.

    A BaseException, so a handler's own ``except Exception:`` does not swallow it.
    """


@dataclass(slots=True)
class CallOutcome:
    state: TaskState
    value: Any
    error: str | None
    stderr: str
    started: float
    finished: float


_timer_armed = False
_warned_not_main = False


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if _timer_armed:  # a late signal after the call finished must not hit the worker loop
        raise _CallTimeout


def _on_main_thread(fn_name: str) -> bool:
    """Signal handlers can only be set from the main thread; say so once otherwise."""
    global _warned_not_main
    if threading.current_thread() is threading.main_thread():
        return True
    if not _warned_not_main:
        _warned_not_main = True
        log.warning("call_timeout_unenforced", fn=fn_name, reason="not the main thread")
    return False


def _is_packable(value: Any) -> bool:
    kind = type(value)
    if kind in _ALWAYS_PACKABLE:
        return True
    if kind is int:
        return value in _INT_RANGE
    if kind is str and value.isascii():
        return True
    return is_packable(value)


def _describe_exception(exc: BaseException) -> tuple[str, str]:
    """``("ExcType: message", traceback tail)``, leaving out this module's own frame."""
    text = str(exc)
    error = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    formatted = "".join(traceback.format_exception(type(exc), exc, tb))
    encoded = formatted.encode("utf-8", errors="replace")
    if len(encoded) > TAIL_BYTES:
        formatted = encoded[-TAIL_BYTES:].decode("utf-8", errors="replace")
    return error, formatted


# (state, value, error, stderr, started, finished): a plain tuple, since building a
# dataclass per task would be a tenth of the whole per-task cost of a no-op call.
CallTuple = tuple[str, Any, str | None, str, float, float]

_SUCCEEDED = TaskState.SUCCEEDED.value
_FAILED = TaskState.FAILED.value
_TIMED_OUT = TaskState.TIMED_OUT.value


def invoke(
    fn_name: str,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    timeout_s: float | None,
    registry: Registry,
    /,
) -> CallTuple:
    """The hot path behind :func:`run_call`, returning a :data:`CallTuple`."""
    started = time.time()
    fn = registry.lookup(fn_name)
    if fn is None:
        error = f"{ErrorCode.UNKNOWN_HANDLER.value}: {UnknownHandler(fn_name, registry.names())}"
        return _FAILED, None, error, "", started, time.time()
    if timeout_s is not None and timeout_s > 0 and _on_main_thread(fn_name):
        return _invoke_timed(fn, fn_name, args, kwargs, timeout_s, started)
    try:
        value = fn(*(args or ()), **(kwargs or {}))
    except (Exception, SystemExit) as exc:  # a handler calling sys.exit() fails its task only
        error, stderr = _describe_exception(exc)
        return _FAILED, None, error, stderr, started, time.time()
    return _returned(fn_name, value, started)


def _invoke_timed(
    fn: Handler,
    fn_name: str,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    timeout_s: float,
    started: float,
) -> CallTuple:
    """:func:`invoke` under an ITIMER_REAL deadline.

    Whoever had SIGALRM before (pytest-timeout, an embedding application) gets its
    Python handler back afterwards and its timer re-armed with the time it had left; a
    deadline of theirs that passed during the call fires right after it.
    """
    global _timer_armed
    previous_handler = _getsignal(signal.SIGALRM)
    if previous_handler is not _on_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
    previous_delay, previous_interval = 0.0, 0.0
    try:
        try:
            _timer_armed = True
            previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
            value = fn(*(args or ()), **(kwargs or {}))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            _timer_armed = False
    except _CallTimeout:
        return _TIMED_OUT, None, f"timed out after {timeout_s:g}s", "", started, time.time()
    except (Exception, SystemExit) as exc:
        error, stderr = _describe_exception(exc)
        return _FAILED, None, error, stderr, started, time.time()
    finally:
        # Only a Python handler is put back: the default (fatal) disposition is not, so
        # a worker keeps its handler installed from one timed call to the next.
        if callable(previous_handler) and previous_handler is not _on_alarm:
            signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:
            left = previous_delay - (time.time() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), previous_interval)
    return _returned(fn_name, value, started)


def _returned(fn_name: str, value: Any, started: float) -> CallTuple:
    finished = time.time()
    if type(value) not in _ALWAYS_PACKABLE and not _is_packable(value):
        error = (
            f"the return value of handler {fn_name!r} is not serialisable: "
            f"{type(value).__module__}.{type(value).__qualname__}"
        )
        return _FAILED, None, error, "", started, finished
    return _SUCCEEDED, value, None, "", started, finished


def run_call(
    fn_name: str,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    timeout_s: float | None = None,
    registry: Registry = default_registry,
) -> CallOutcome:
    """Call handler ``fn_name`` and describe the outcome; never raises for the task's faults.

    A handler's ``KeyboardInterrupt`` still propagates: that is the worker being stopped.
    """
    state, value, error, stderr, started, finished = invoke(
        fn_name, args, kwargs, timeout_s, registry
    )
    return CallOutcome(TaskState(state), value, error, stderr, started, finished)
