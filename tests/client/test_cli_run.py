"""``taskmill run``: the embedded scheduler with real local workers, end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from client.cli import main


@pytest.fixture(autouse=True)
def keep_logging_config() -> Iterator[None]:
    """``run`` configures structlog for the process; put the old config back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_run_embedded_shell_and_call_tasks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = tmp_path / "w.jsonl"
    lines: list[dict[str, object]] = [{"cmd": "echo out-$((20 + 1))"}, {"cmd": "sleep 0"}]
    lines += [{"fn": "add", "args": [i, 1], "id": f"add-{i}"} for i in range(20)]
    lines += [{"fn": "HELLO", "kwargs": {"firstName": "John", "lastName": "Doe"}}]
    workload.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    output = tmp_path / "results.jsonl"
    argv = ["run", "-w", str(workload), "-lw", "2", "--handlers", "tests.integration.handlers"]
    code = main([*argv, "--json", "--output", str(output)])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert (summary["tasks"], summary["succeeded"], summary["failed"]) == (23, 23, 0)
    rows = {row["id"]: row for row in map(json.loads, output.read_text().splitlines())}
    assert len(rows) == 23
    assert [rows[f"add-{i}"]["value"] for i in range(20)] == [i + 1 for i in range(20)]
    values = {row["value"] for row in rows.values()}
    assert "Hello John Doe !" in values
    assert "out-21\n" in {row["stdout"] for row in rows.values()}


def test_run_reports_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workload = tmp_path / "w.txt"
    workload.write_text("sleep 0\nexit 4\n", encoding="utf-8")
    code = main(["run", "-w", str(workload), "-lw", "1"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines()[-1].startswith("2 tasks: 1 succeeded, 1 failed in ")
    assert "(exit 4)" in err
