"""The task bodies the Python peers run (dask, the process pool).

They live in an importable module, not in a driver run as ``__main__``, so worker
processes started by spawn or by another interpreter find them by name. Each takes
and ignores a leading index, so ``map(fn, range(n))`` makes ``n`` distinct calls.
"""

from __future__ import annotations

import subprocess
import time

SHELL_CMD = "sleep 0"


def noop(_index: object = None) -> None:
    """The cheapest call: what is measured is the system's own cost per task."""
    return None


def shell(_index: object = None, cmd: str = SHELL_CMD) -> int:
    """Run ``cmd`` through ``/bin/sh``, as taskmill's shell tasks and xargs do."""
    return subprocess.run(cmd, shell=True, check=False).returncode


def sleep(_index: object = None, seconds: float = 0.01) -> None:
    time.sleep(seconds)
