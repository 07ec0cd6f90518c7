"""Task execution: the shell runner, the handler registry and runner, the worker process,
the process pool, and the remote worker daemon (`taskmill worker`, :mod:`worker.daemon`).

``from worker import handler`` is the one name user code needs.
"""

from __future__ import annotations

from worker import builtin_handlers as _builtin_handlers  # registers noop, echo, sleep, fail
from worker.errors import DuplicateHandler, HandlerImportError, UnknownHandler, WorkerError
from worker.registry import Registry, default_registry, handler, load_handler_modules

__all__ = [
    "DuplicateHandler",
    "HandlerImportError",
    "Registry",
    "UnknownHandler",
    "WorkerError",
    "default_registry",
    "handler",
    "load_handler_modules",
]

del _builtin_handlers
