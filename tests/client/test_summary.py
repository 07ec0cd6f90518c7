from __future__ import annotations

import io
import json
import re
from typing import Any

from client.commands import format_status
from client.progress import Progress
from client.summary import ResultWriter, Summary, describe_failure, result_json
from protocol.model import Result, TaskState

WIRE_FIELDS = {
    "id",
    "state",
    "exit_code",
    "stdout",
    "stderr",
    "value",
    "error",
    "worker",
    "attempt",
    "submitted",
    "started",
    "finished",
}


def result(i: int, state: TaskState = TaskState.SUCCEEDED, **kw: Any) -> Result:
    return Result(id=f"t{i}", state=state, job="j", **kw)


def sample_summary() -> Summary:
    summary = Summary(job="j", expected=4)
    summary.add([result(0), result(1), result(2, TaskState.FAILED, exit_code=3)])
    summary.add([result(3, TaskState.TIMED_OUT)])
    summary.elapsed_s = 2.0
    return summary


def test_summary_line_format() -> None:
    summary = sample_summary()
    assert summary.line() == "4 tasks: 2 succeeded, 2 failed in 2.00s (2.0 tasks/s)"
    assert re.fullmatch(
        r"\d+ tasks: \d+ succeeded, \d+ failed in \d+\.\d\ds \(\d+\.\d tasks/s\)", summary.line()
    )


def test_summary_json_has_the_contract_fields() -> None:
    data = json.loads(sample_summary().to_json())
    assert data["tasks"] == 4
    assert data["succeeded"] == 2
    assert data["failed"] == 2
    assert data["elapsed_s"] == 2.0
    assert data["throughput"] == 2.0
    assert data["job"] == "j"
    assert data["states"] == {"succeeded": 2, "failed": 1, "timed_out": 1}
    assert "missing" not in data


def test_summary_reports_missing_results_and_zero_elapsed() -> None:
    summary = Summary(expected=3)
    summary.add([result(0)])
    assert summary.throughput == 0.0
    assert summary.to_dict()["missing"] == 2
    assert summary.line() == "1 tasks: 1 succeeded, 0 failed in 0.00s (0.0 tasks/s)"


def test_summary_keeps_only_a_few_failures() -> None:
    summary = Summary()
    summary.add(result(i, TaskState.FAILED) for i in range(100))
    assert summary.failed == 100
    assert [f.id for f in summary.failures] == ["t0", "t1", "t2", "t3", "t4"]


def test_result_writer_writes_one_json_object_per_result() -> None:
    out = io.StringIO()
    writer = ResultWriter(out)
    writer.write([result(0, stdout="hi\n", worker="w1", started=1.0, finished=2.0)])
    writer.write([])
    writer.write([result(1, TaskState.FAILED, exit_code=2, value=b"\xffraw")])
    lines = out.getvalue().splitlines()
    assert writer.written == 2
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first.keys() >= WIRE_FIELDS
    assert first["stdout"] == "hi\n"
    assert first["worker"] == "w1"
    assert first["state"] == "succeeded"
    assert second["exit_code"] == 2
    assert second["value"] == "\ufffdraw"  # bytes become text, never a crash


def test_result_json_is_one_line() -> None:
    text = result_json(result(0, stdout="a\nb\n"))
    assert "\n" not in text
    assert json.loads(text)["stdout"] == "a\nb\n"


def test_describe_failure() -> None:
    failed = result(7, TaskState.FAILED, exit_code=3, stderr="warming up\nboom: disk full\n\n")
    assert describe_failure(failed) == "task t7 failed (exit 3): boom: disk full"
    call = result(8, TaskState.FAILED, error="ValueError: bad x")
    assert describe_failure(call) == "task t8 failed: ValueError: bad x"
    assert describe_failure(result(9, TaskState.CANCELLED)) == "task t9 cancelled"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_off_a_terminal_prints_plain_lines_sparingly() -> None:
    out = io.StringIO()  # a StringIO is not a terminal
    clock = FakeClock()
    progress = Progress(1000, stream=out, clock=clock)
    assert not progress.live
    clock.now += 5
    progress.update(100)  # under the 10 s interval: nothing yet
    assert out.getvalue() == ""
    clock.now += 5
    progress.update(200, 3)
    progress.close()
    assert out.getvalue() == "taskmill:  20%  200/1000  20 tasks/s  ETA 40s  3 failed\n"


def test_progress_can_be_disabled() -> None:
    out = io.StringIO()
    clock = FakeClock()
    progress = Progress(10, stream=out, enabled=False, clock=clock)
    clock.now += 60
    progress.update(5, 1)
    progress.close()
    assert out.getvalue() == ""


def test_progress_bar_redraws_at_most_ten_times_a_second() -> None:
    out = io.StringIO()
    clock = FakeClock()
    progress = Progress(200, stream=out, enabled=True, clock=clock)
    clock.now += 1.0
    progress.update(50)
    progress.update(60)  # same instant: not drawn
    clock.now += 0.05
    progress.update(70)  # 50 ms later: not drawn
    clock.now += 0.06
    progress.update(100, 2)
    draws = out.getvalue().split("\r\x1b[K")[1:]
    assert draws == [
        "[######..................]   25%  50/200  50 tasks/s  ETA 3s",
        "[############............]   50%  100/200  90 tasks/s  ETA 1s  2 failed",
    ]
    progress.close()
    assert out.getvalue().endswith("\r\x1b[K")


def test_format_status_for_a_job_and_a_task() -> None:
    job = {
        "kind": "job",
        "job": "j1",
        "counts": {"queued": 2, "running": 0, "succeeded": 5, "failed": 1},
        "total": 8,
        "sealed": True,
    }
    assert format_status(job) == "job j1 (sealed): 8 tasks: 2 queued, 5 succeeded, 1 failed"
    task = {
        "kind": "task",
        "task": {
            "id": "t1",
            "job": "j1",
            "state": "failed",
            "attempt": 2,
            "max_attempts": 3,
            "worker": "local-1",
            "started": 10.0,
            "finished": 10.5,
            "result": {"exit_code": 1, "error": None},
        },
    }
    assert format_status(task) == (
        "task t1: failed (job j1, attempt 2/3, worker local-1, exit 1, 0.500s)"
    )
