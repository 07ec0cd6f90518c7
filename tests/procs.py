"""Daemons as real subprocesses for the tests: start, wait until ready, stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tests.conftest import REPO_ROOT

TASKMILL = [sys.executable, "-m", "client.cli"]


class Daemon:
    """A ``taskmill`` subcommand run as a subprocess with JSON logs on stderr.

    :meth:`wait_for` reads the log until an event appears; afterwards a thread keeps
    reading, so a chatty daemon never blocks on a full pipe, and every event is kept.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.events: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [*TASKMILL, *args, "--log-format", "json"],
            cwd=REPO_ROOT,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**(env if env is not None else os.environ), "PYTHONPATH": str(REPO_ROOT)},
            preexec_fn=preexec_fn,
        )
        self._drain: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_event(self) -> dict[str, Any] | None:
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if not line:
            return None
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return {"event": "<text>", "line": line.rstrip()}
        self.events.append(event)
        return event if isinstance(event, dict) else {"event": "<json>", "value": event}

    def wait_for(self, name: str, timeout: float = 60) -> dict[str, Any]:
        assert self._drain is None, "wait_for() is only for start-up"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self._read_event()
            if event is None:
                raise AssertionError(
                    f"{self.proc.args} exited with {self.proc.wait()}: {self.events[-5:]}"
                )
            if event.get("event") == name:
                self._drain = threading.Thread(target=self._drain_rest, daemon=True)
                self._drain.start()
                return event
        raise AssertionError(f"no {name!r} event within {timeout}s")

    def _drain_rest(self) -> None:
        while self._read_event() is not None:
            pass

    def stop(self, timeout: float = 30) -> int:
        """SIGKILL if still running; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(timeout)
        if self._drain is not None:
            self._drain.join(timeout)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code


def start_scheduler(
    *args: str,
    env: Mapping[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> tuple[Daemon, int]:
    """``taskmill scheduler ARGS``; returns the daemon and the port it listens on."""
    daemon = Daemon(["scheduler", *args], env=env, preexec_fn=preexec_fn)
    try:
        event = daemon.wait_for("scheduler listening")
    except AssertionError:
        daemon.stop()
        raise
    return daemon, int(event["port"])
