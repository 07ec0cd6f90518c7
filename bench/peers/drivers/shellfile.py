"""What xargs and GNU parallel share: a file of shell lines, one command reading it.

The lines are ``sleep 0`` (shell workload) or ``sleep DURATION`` (short); the file is
written before the clock starts. Neither tool reports per-task results, so a run is
verified by its exit status: both exit non-zero if any line failed or was not run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

from bench.peers.drivers.common import SHELL_CMD, BenchError, Session, Spec


def shell_line(spec: Spec) -> str:
    return SHELL_CMD if spec.workload == "shell" else f"sleep {spec.duration:g}"


class ShellFileSession(Session):
    """Runs ``argv(slots)`` with stdin from a file of ``n`` identical lines."""

    def __init__(self, system: str, spec: Spec, argv: Callable[[int], list[str]]) -> None:
        if shutil.which(argv(1)[0]) is None:
            raise BenchError(f"{system}: {argv(1)[0]} is not on PATH")
        self.system = system
        self.spec = spec
        self.argv = argv(spec.slots)
        self.config = " ".join(self.argv)
        self.line = shell_line(spec)
        self.dir = tempfile.mkdtemp(prefix="peers-shellfile-")
        self.files: dict[int, str] = {}

    def file_for(self, n: int) -> str:
        if n not in self.files:
            path = os.path.join(self.dir, f"{n}.txt")
            with open(path, "w") as fh:
                fh.write(f"{self.line}\n" * n)
            self.files[n] = path
        return self.files[n]

    def batch(self, n: int) -> float:
        path = self.file_for(n)
        with open(path) as stdin:
            t0 = time.perf_counter()
            done = subprocess.run(
                self.argv,
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                timeout=self.spec.timeout,
                check=False,
            )
            elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise BenchError(f"{self.system}: exit status {done.returncode} for {n} lines")
        return elapsed

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
