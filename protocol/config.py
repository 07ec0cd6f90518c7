"""Settings loading shared by every daemon: CLI flags, then ``TASKMILL_*``, then TOML.

Each component declares a frozen, keyword-only dataclass of settings; :func:`load`
fills it from (highest precedence first) explicit overrides such as parsed CLI
flags, the environment (``TASKMILL_<FIELD>``, upper-cased), an optional TOML file
(the table named by ``section``, or the top level), and finally the defaults.
Values from text sources are converted to the field's declared type.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "TASKMILL_"
T = TypeVar("T")


class ConfigError(ValueError):
    """A setting could not be read or converted; the message names the source and field."""


def _convert(value: Any, hint: Any, name: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        is_null = value is None or (
            isinstance(value, str) and value.lower() in ("", "none", "null")
        )
        if is_null and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors: list[str] = []
        for member in inner:  # the first member that accepts the value wins
            try:
                return _convert(value, member, name, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1])
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if hint is int:
            if isinstance(value, bool):
                raise ValueError("a boolean is not an integer")
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if hint is Path:
            return Path(value).expanduser()
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(
                _convert(item.strip() if isinstance(item, str) else item, args[0], name, source)
                for item in items
                if item != ""
            )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: setting {name!r} has a bad value {value!r}: {exc}") from exc
    return value


def load(
    cls: type[T],
    *,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    toml_path: str | os.PathLike[str] | None = None,
    section: str | None = None,
) -> T:
    """Build ``cls`` from overrides > environment > TOML file > defaults.

    ``None`` values in ``overrides`` mean "not given" (argparse's default), so a flag
    left out does not mask the environment.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    env = os.environ if env is None else env
    values: dict[str, Any] = {}

    if toml_path is not None:
        path = Path(toml_path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from exc
        if section is not None:
            data = data.get(section, {})
        for key, value in data.items():
            if section is None and isinstance(value, dict):
                continue  # a table: another component's section, such as [aws]
            name = key.replace("-", "_")
            if name not in fields:
                raise ConfigError(f"settings file {path}: unknown setting {key!r}")
            values[name] = _convert(value, hints[name], name, str(path))

    for name in fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = _convert(env[key], hints[name], name, f"environment {key}")

    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in fields:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _convert(value, hints[name], name, "command line")

    return cls(**values)
