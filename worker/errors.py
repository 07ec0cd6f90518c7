"""The worker package's exception hierarchy.

These are raised to the code that loads handlers or looks them up; a task's own failure
never raises out of the runners (it becomes a ``failed`` result instead).
"""

from __future__ import annotations

from collections.abc import Iterable

# Lists of registered handlers in messages are cut here, so an error stays one readable line.
_MAX_LISTED = 40


class WorkerError(Exception):
    """Root of every error raised by :mod:`worker`."""


class UnknownHandler(WorkerError):
    """A call task names a handler that is not registered."""

    def __init__(self, name: str, registered: Iterable[str]) -> None:
        self.name = name
        self.registered = sorted(registered)
        listed = ", ".join(self.registered[:_MAX_LISTED]) or "none"
        if len(self.registered) > _MAX_LISTED:
            listed += f", ... ({len(self.registered)} in all)"
        super().__init__(f"no handler named {name!r} (registered: {listed})")


class HandlerImportError(WorkerError):
    """A module named by ``--handlers`` could not be imported."""

    def __init__(self, module: str, cause: BaseException) -> None:
        self.module = module
        self.cause = cause
        detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        super().__init__(f"cannot import handler module {module!r}: {detail}")


class DuplicateHandler(WorkerError):
    """Two different functions were registered under one handler name."""

    def __init__(self, name: str, existing: str, new: str) -> None:
        self.name = name
        super().__init__(
            f"handler name {name!r} is already registered to {existing}; cannot register {new}"
        )


class ProcessStartError(WorkerError):
    """A ``worker.process`` subprocess could not start or did not report ready."""


class DaemonStartError(WorkerError):
    """The remote worker daemon cannot start: a missing queue or table, bad credentials,
    an unreachable endpoint, a handler module that does not import. One line, for humans."""
