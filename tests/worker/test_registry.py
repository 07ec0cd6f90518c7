"""The handler registry: decorator forms, duplicates, lookups, module loading."""

from __future__ import annotations

import importlib

import pytest

import tests.worker.handlers_sample as sample
from worker import builtin_handlers, default_registry, handler
from worker.errors import DuplicateHandler, HandlerImportError, UnknownHandler, WorkerError
from worker.registry import Registry, load_handler_modules


def test_bare_decorator_registers_under_the_function_name() -> None:
    reg = Registry()

    @reg.handler
    def add(a: int, b: int) -> int:
        return a + b

    assert reg.get("add") is add
    assert add(1, 2) == 3  # the decorator returns the function itself


def test_named_decorator_registers_under_the_given_name() -> None:
    reg = Registry()

    @reg.handler("HELLO")
    def hello(firstName: str, lastName: str) -> str:
        return f"{firstName} {lastName}"

    @reg.handler()
    def plain() -> None:
        return None

    assert reg.get("HELLO") is hello
    assert "hello" not in reg
    assert reg.get("plain") is plain
    assert reg.names() == ["HELLO", "plain"]


def test_module_level_decorator_fills_the_default_registry() -> None:
    assert default_registry.get("add") is sample.add
    assert default_registry.get("HELLO") is sample.hello
    assert handler is not None
    assert default_registry.get("noop") is builtin_handlers.noop


def test_a_second_function_under_a_taken_name_is_refused() -> None:
    reg = Registry()

    @reg.handler("job")
    def first() -> int:
        return 1

    def second() -> int:
        return 2

    with pytest.raises(DuplicateHandler, match="'job' is already registered") as info:
        reg.handler("job")(second)
    assert isinstance(info.value, WorkerError)
    assert "first" in str(info.value)
    assert reg.get("job") is first


def test_registering_the_same_function_again_is_accepted() -> None:
    reg = Registry()

    def task() -> None:
        return None

    reg.register("task", task)
    reg.register("task", task)
    assert reg.get("task") is task


def test_reloading_a_handler_module_is_not_a_duplicate() -> None:
    old_add = default_registry.get("add")
    importlib.reload(sample)
    new_add = default_registry.get("add")
    assert new_add is sample.add
    assert new_add is not old_add
    assert new_add(2, 3) == 5


def test_unknown_handler_names_the_missing_one_and_lists_the_rest() -> None:
    reg = Registry()
    reg.register("alpha", lambda: None)
    reg.register("beta", lambda: None)
    with pytest.raises(UnknownHandler) as info:
        reg.get("gamma")
    assert str(info.value) == "no handler named 'gamma' (registered: alpha, beta)"
    assert info.value.name == "gamma"


def test_bad_names_and_non_callables_are_refused() -> None:
    reg = Registry()
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("", lambda: None)
    with pytest.raises(ValueError, match="longer than"):
        reg.register("x" * 300, lambda: None)
    with pytest.raises(TypeError, match="callable"):
        reg.register("value", 42)  # type: ignore[arg-type]


def test_load_handler_modules_returns_every_registered_name() -> None:
    names = load_handler_modules([" tests.worker.handlers_sample", ""])
    assert names == sorted(names)
    assert {"add", "HELLO", "noop", "echo", "sleep", "fail"} <= set(names)


def test_load_handler_modules_with_no_modules_still_has_the_builtins() -> None:
    assert {"noop", "echo", "sleep", "fail"} <= set(load_handler_modules([]))


def test_missing_module_is_a_handler_import_error() -> None:
    with pytest.raises(HandlerImportError) as info:
        load_handler_modules(["tests.worker.no_such_module"])
    message = str(info.value)
    assert "'tests.worker.no_such_module'" in message
    assert "ModuleNotFoundError" in message
    assert info.value.module == "tests.worker.no_such_module"


def test_module_failing_at_import_is_a_handler_import_error() -> None:
    with pytest.raises(HandlerImportError) as info:
        load_handler_modules(["tests.worker.handlers_broken"])
    assert "'tests.worker.handlers_broken'" in str(info.value)
    assert "RuntimeError: broken on purpose at import time" in str(info.value)
    assert isinstance(info.value.cause, RuntimeError)


def test_module_clashing_with_a_builtin_is_a_handler_import_error() -> None:
    with pytest.raises(HandlerImportError) as info:
        load_handler_modules(["tests.worker.handlers_clash"])
    assert isinstance(info.value.cause, DuplicateHandler)
    assert "'noop' is already registered" in str(info.value)
    assert default_registry.get("noop") is builtin_handlers.noop
