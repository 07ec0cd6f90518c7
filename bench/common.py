"""What every benchmark shares: JSON-line output and a scheduler daemon in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def emit(**fields: Any) -> None:
    """One JSON line per result, on stdout."""
    print(json.dumps(fields), flush=True)


def start_scheduler(
    *args: str, env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    """``taskmill scheduler -s 0 ARGS``; returns the process and its port once it listens.

    Its log keeps being read by a thread so the pipe never fills.
    """
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client.cli",
            "scheduler",
            "-s",
            "0",
            *args,
            "--log-format",
            "json",
            "--log-level",
            "info",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**(env if env is not None else os.environ)},
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "scheduler listening":
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(event["port"])
    raise RuntimeError(f"scheduler exited with {proc.wait()}")


def stop_scheduler(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=60)
