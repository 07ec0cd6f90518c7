"""The handler registry: named Python functions that call tasks invoke.

Users decorate functions in their own modules and name those modules on the worker's
command line (``--handlers mod1,mod2``)::

    from worker import handler

    @handler                # registered as "add"
    def add(a, b):
        return a + b

    @handler("HELLO")       # registered under an explicit name
    def hello(firstName, lastName): ...

Decorating registers into :data:`default_registry`, the one a worker process runs from.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, overload

from protocol.messages import MAX_ID_LEN
from worker.errors import DuplicateHandler, HandlerImportError, UnknownHandler

Handler = Callable[..., Any]
F = TypeVar("F", bound=Handler)

BUILTIN_MODULE = "worker.builtin_handlers"


def _describe(fn: Handler) -> str:
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{qualname}"


def _same_definition(a: Handler, b: Handler) -> bool:
    """True when ``b`` is ``a`` or the same source definition executed again.

    Re-executing a module (``importlib.reload``, or a retry after a failed import)
    creates new function objects for the same ``def``; that must not count as a clash.
    """
    if a is b:
        return True
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    if code_a is None or code_b is None:
        return False
    return (
        _describe(a) == _describe(b)
        and code_a.co_filename == code_b.co_filename
        and code_a.co_firstlineno == code_b.co_firstlineno
    )


class Registry:
    """A mapping of handler name to callable, with a decorator to fill it."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, fn: Handler) -> None:
        """Register ``fn`` as ``name``; the same definition twice is accepted."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a handler name must be a non-empty string, got {name!r}")
        if len(name) > MAX_ID_LEN:
            raise ValueError(f"handler name {name[:40]!r}... is longer than {MAX_ID_LEN} chars")
        if not callable(fn):
            raise TypeError(f"handler {name!r} must be callable, got {type(fn).__name__}")
        existing = self._handlers.get(name)
        if existing is not None and not _same_definition(existing, fn):
            raise DuplicateHandler(name, _describe(existing), _describe(fn))
        self._handlers[name] = fn

    @overload
    def handler(self, fn: F, /) -> F: ...

    @overload
    def handler(self, name: str | None = None, /) -> Callable[[F], F]: ...

    def handler(self, target: F | str | None = None, /) -> F | Callable[[F], F]:
        """Decorator: ``@handler`` (named after the function) or ``@handler("NAME")``."""
        if target is None or isinstance(target, str):
            explicit = target

            def decorate(fn: F) -> F:
                self.register(explicit or fn.__name__, fn)
                return fn

            return decorate
        self.register(target.__name__, target)
        return target

    def get(self, name: str) -> Handler:
        """The handler called ``name``; raises :class:`UnknownHandler`."""
        try:
            return self._handlers[name]
        except KeyError:
            raise UnknownHandler(name, self._handlers) from None

    def lookup(self, name: str) -> Handler | None:
        """The handler called ``name`` or ``None`` (the hot path: no exception cost)."""
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def unregister(self, name: str) -> None:
        self._handlers.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


default_registry = Registry()
handler = default_registry.handler


def get(name: str) -> Handler:
    """The handler called ``name`` in the default registry; raises :class:`UnknownHandler`."""
    return default_registry.get(name)


def import_handler_module(name: str) -> None:
    """Import one module by dotted name; any failure becomes :class:`HandlerImportError`."""
    try:
        importlib.import_module(name)
    except (Exception, SystemExit) as exc:  # a module may sys.exit() at import time
        raise HandlerImportError(name, exc) from exc


def load_handler_modules(names: Sequence[str]) -> list[str]:
    """Import the built-in handlers and each module in ``names``; return the registered names.

    Names may carry surrounding blanks and empty entries (from ``--handlers a, b,``).
    Registration happens as a side effect of importing, into :data:`default_registry`.
    """
    import_handler_module(BUILTIN_MODULE)
    for raw in names:
        name = raw.strip()
        if name:
            import_handler_module(name)
    return default_registry.names()
