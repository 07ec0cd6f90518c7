"""The protocol package's exception hierarchy and the stable error codes of the wire.

Every failure that can be reported to a peer carries a ``code`` from :class:`ErrorCode`;
the codes are part of the protocol contract and never change meaning.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable codes carried by ``error`` replies."""

    BAD_FRAME = "bad_frame"  # garbage bytes, not msgpack, truncated body
    FRAME_TOO_LARGE = "frame_too_large"  # declared length above the limit
    BAD_MESSAGE = "bad_message"  # not a map, no op, rid of the wrong type
    UNKNOWN_OP = "unknown_op"
    INVALID_FIELD = "invalid_field"  # a field of the wrong type or out of range
    MISSING_FIELD = "missing_field"
    UNKNOWN_HANDLER = "unknown_handler"  # a call task names no registered handler
    NOT_FOUND = "not_found"  # no such job or task
    CONFLICT = "conflict"  # an id reused with a different body
    QUOTA = "quota"  # a per-user or per-request limit was hit
    VERSION = "version"  # protocol version not supported
    AUTH = "auth"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """Root of every error raised by :mod:`protocol`."""

    code: ErrorCode = ErrorCode.BAD_MESSAGE

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code.value


class FrameError(ProtocolError):
    """The byte stream cannot be split into frames; the connection must be closed."""

    code = ErrorCode.BAD_FRAME


class FrameTooLarge(FrameError):
    code = ErrorCode.FRAME_TOO_LARGE


class IncompleteFrame(FrameError):
    """The stream ended in the middle of a frame (header or body)."""


class FrameTimeout(FrameError):
    """A frame was started but not finished in time (a slow or stalled sender)."""


class DecodeError(FrameError):
    """A complete frame whose body is not valid msgpack."""


class ValidationError(ProtocolError):
    """A well-formed frame whose message does not match the schema.

    ``rid`` is the request id when it could be read, so the error reply can echo it.
    """

    code = ErrorCode.INVALID_FIELD

    def __init__(
        self, message: str, *, code: ErrorCode | None = None, rid: int | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.rid = rid


class RemoteError(ProtocolError):
    """An ``error`` reply received from a peer, raised on the receiving side."""

    def __init__(self, code: str, message: str) -> None:
        try:
            parsed = ErrorCode(code)
        except ValueError:
            parsed = ErrorCode.INTERNAL
        super().__init__(message, code=parsed)
        self.raw_code = code

    def __str__(self) -> str:
        return f"{self.raw_code}: {self.message}"
