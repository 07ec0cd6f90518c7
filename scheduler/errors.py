"""The scheduler's exception hierarchy. Each error that reaches a client has a wire code."""

from __future__ import annotations

from protocol.errors import ErrorCode


class SchedulerError(Exception):
    """Root of every error raised by :mod:`scheduler`."""

    code: ErrorCode = ErrorCode.INTERNAL


class NotFound(SchedulerError):
    code = ErrorCode.NOT_FOUND


class Conflict(SchedulerError):
    code = ErrorCode.CONFLICT


class QuotaExceeded(SchedulerError):
    code = ErrorCode.QUOTA


class UnknownHandler(SchedulerError):
    code = ErrorCode.UNKNOWN_HANDLER


class AuthFailed(SchedulerError):
    """Not authenticated, or not allowed: the connection is closed after the reply."""

    code = ErrorCode.AUTH


class ShuttingDown(SchedulerError):
    code = ErrorCode.SHUTTING_DOWN


class WorkerStartError(SchedulerError):
    """A local worker process could not start (e.g. a --handlers module failed to import)."""
