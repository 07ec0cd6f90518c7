"""The client's exception hierarchy.

Everything the client raises on purpose derives from :class:`ClientError`, except the
scheduler's own ``error`` replies, which arrive as :class:`protocol.errors.RemoteError`
(they carry the stable wire ``code``). OS and framing errors are translated here, at
the boundary, so callers never see a bare ``OSError`` or ``FrameError``.
"""

from __future__ import annotations

import os
from pathlib import Path


class ClientError(Exception):
    """Root of the client's own errors."""


class ConnectError(ClientError):
    """The scheduler at ``host:port`` could not be reached (or refused the handshake)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot connect to {format_address(host, port)}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


class ConnectionLost(ClientError):
    """The connection ended (or became unusable) while requests were outstanding."""


class ReconnectFailed(ConnectionLost):
    """The connection was lost and no new one could be made within the reconnect timeout."""

    def __init__(
        self, host: str, port: int, *, cause: str, elapsed_s: float, attempts: int, last: str
    ) -> None:
        super().__init__(
            f"lost the connection to {format_address(host, port)} ({cause}) and could not "
            f"reconnect within {elapsed_s:.1f}s ({attempts} attempt"
            f"{'s' if attempts != 1 else ''}; last: {last})"
        )
        self.host = host
        self.port = port
        self.cause = cause
        self.elapsed_s = elapsed_s
        self.attempts = attempts
        self.last = last


class WorkloadError(ClientError):
    """A workload file cannot be read or has a broken line; nothing was submitted."""

    def __init__(self, path: str | Path, message: str, *, line: int | None = None) -> None:
        where = f"{path}: line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.problem = message


def format_address(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def os_reason(exc: BaseException) -> str:
    """A short human reason for an OS-level failure (``Connection refused``)."""
    if isinstance(exc, OSError):
        if exc.errno:
            return os.strerror(exc.errno)  # asyncio's strerror repeats the address
        if exc.strerror:
            return exc.strerror
    text = str(exc)
    return text or type(exc).__name__
