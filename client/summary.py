"""Run summaries and result files: what ``taskmill client``/``run``/``results`` print.

The summary is built incrementally (counts only, plus a few failures to show), so a
million-task run does not keep its results in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from protocol.model import ALL_STATES, Result, TaskState

MAX_FAILURES_KEPT = 5


@dataclass(slots=True)
class Summary:
    """Counts of a finished (or partly collected) run."""

    tasks: int = 0
    succeeded: int = 0
    elapsed_s: float = 0.0
    job: str | None = None
    expected: int | None = None  # tasks submitted, when known
    states: dict[str, int] = field(default_factory=dict)
    failures: list[Result] = field(default_factory=list)  # the first few

    @property
    def failed(self) -> int:
        """Tasks that did not succeed (failed, timed out or cancelled)."""
        return self.tasks - self.succeeded

    @property
    def throughput(self) -> float:
        return self.tasks / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def add(self, results: Iterable[Result]) -> None:
        states = self.states
        succeeded = TaskState.SUCCEEDED
        for result in results:
            self.tasks += 1
            state = result.state
            states[state] = states.get(state, 0) + 1
            if state is succeeded:
                self.succeeded += 1
            elif len(self.failures) < MAX_FAILURES_KEPT:
                self.failures.append(result)

    def line(self) -> str:
        """``N tasks: S succeeded, F failed in E.EEs (R tasks/s)``."""
        return (
            f"{self.tasks} tasks: {self.succeeded} succeeded, {self.failed} failed "
            f"in {self.elapsed_s:.2f}s ({self.throughput:.1f} tasks/s)"
        )

    def to_dict(self) -> dict[str, Any]:
        order = {state.value: i for i, state in enumerate(ALL_STATES)}
        out: dict[str, Any] = {
            "tasks": self.tasks,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed_s, 6),
            "throughput": round(self.throughput, 1),
            "states": {
                str(k): v for k, v in sorted(self.states.items(), key=lambda kv: order[kv[0]])
            },
        }
        if self.job is not None:
            out["job"] = self.job
        if self.expected is not None and self.expected != self.tasks:
            out["missing"] = self.expected - self.tasks
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)


def describe_failure(result: Result) -> str:
    """One line about a task that did not succeed."""
    what = f"task {result.id} {result.state.value}"
    if result.exit_code is not None:
        what += f" (exit {result.exit_code})"
    detail = result.error or _last_line(result.stderr)
    return f"{what}: {detail}" if detail else what


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else ""


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


_encoder = json.JSONEncoder(ensure_ascii=False, default=_json_default)


def result_json(result: Result) -> str:
    """One result as a JSON object on one line (Result.to_wire's fields)."""
    return _encoder.encode(result.to_wire())


class ResultWriter:
    """Writes results as JSON Lines to an open text stream, as they arrive."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.written = 0

    def write(self, results: Iterable[Result]) -> None:
        lines = [result_json(r) for r in results]
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.written += len(lines)
