"""A handler module that reuses a built-in handler's name with a different function."""

from __future__ import annotations

from worker import handler


@handler("noop")
def not_the_builtin_noop() -> str:
    return "impostor"
