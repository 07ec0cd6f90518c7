"""Settings precedence: CLI overrides > TASKMILL_* environment > TOML file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.config import ConfigError, load
from scheduler.settings import SchedulerSettings


def test_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "taskmill.toml"
    toml.write_text('[scheduler]\nport = 7001\nlocal_workers = 3\nhandlers = ["a.b"]\n')
    env = {"TASKMILL_PORT": "7002", "TASKMILL_LOG_LEVEL": "debug"}
    s = load(
        SchedulerSettings,
        overrides={"port": 7003, "local_workers": None},
        env=env,
        toml_path=toml,
        section="scheduler",
    )
    assert s.port == 7003  # flag beats environment
    assert s.log_level == "debug"  # environment beats default
    assert s.local_workers == 3  # TOML used; the None flag does not mask it
    assert s.handlers == ("a.b",)


def test_env_conversion_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="TASKMILL_PORT"):
        load(SchedulerSettings, env={"TASKMILL_PORT": "seventy"})


def test_tuple_from_env() -> None:
    s = load(SchedulerSettings, env={"TASKMILL_HANDLERS": "x.y, z"})
    assert s.handlers == ("x.y", "z")


def test_unknown_toml_key(tmp_path: Path) -> None:
    toml = tmp_path / "t.toml"
    toml.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load(SchedulerSettings, env={}, toml_path=toml)


def test_frozen_settings_validate() -> None:
    with pytest.raises(ValueError, match="port"):
        SchedulerSettings(port=70000)
