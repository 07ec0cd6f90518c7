"""Smoke tests of the peers benchmark harness (bench/peers): it runs and reports sanely.

No timing is asserted: the drivers run with tiny task counts under this interpreter
(the project venv), and only the shape of their JSON lines is checked, plus the
pure ratio and table functions on synthetic lines. dask, celery and dramatiq need
bench/peers/.venv and redis, so they are left to ``bench/peers/run.py --quick``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.peers import report, run
from bench.peers.drivers import xargs
from bench.peers.drivers.common import BenchError, Spec, percentile, split_slots
from bench.peers.drivers.shellfile import ShellFileSession
from bench.peers.seed_tables import seed_markdown

REPO = Path(__file__).resolve().parents[2]
TINY = {"noop": 200, "shell": 20, "short": 16, "latency": 10}
SLOTS = {"noop": 2, "shell": 2, "short": 8, "latency": 2}
DURATION = 0.001


def drive(module: str, workload: str, *extra: str) -> dict[str, Any]:
    """Run one driver with tiny counts; its only stdout line, parsed."""
    argv = [sys.executable, "-m", f"bench.peers.drivers.{module}", "--workload", workload]
    argv += ["--tasks", str(TINY[workload]), "--repeat", "1", "--warmup", "3"]
    argv += ["--duration", str(DURATION), "--timeout", "60", *extra]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.strip()]
    assert len(lines) == 1, done.stdout
    line: dict[str, Any] = lines[0]
    return line


def check_line(line: dict[str, Any], system: str, workload: str) -> None:
    assert line["system"] == system
    assert line["workload"] == workload
    assert line["tasks"] == TINY[workload]
    assert line["slots"] == SLOTS[workload]
    assert isinstance(line["config"], str) and line["config"]
    if workload == "latency":
        assert 0 < line["p50_ms"] <= line["p99_ms"]
        assert line["mean_ms"] > 0
        assert line["runs"] == 1
        return
    assert line["throughput"] > 0
    assert line["elapsed_s"] > 0
    assert len(line["runs"]) == 1
    if workload == "short":
        assert line["duration_s"] == DURATION
        assert 0 < line["efficiency"] <= 1.5


@pytest.mark.parametrize("workload", ["noop", "shell", "short", "latency"])
@pytest.mark.parametrize("journal", ["off", "on"])
def test_taskmill_driver(workload: str, journal: str) -> None:
    line = drive("taskmill", workload, "--journal", journal)
    check_line(line, "taskmill" if journal == "on" else "taskmill (no journal)", workload)


@pytest.mark.parametrize("workload", ["noop", "shell", "short", "latency"])
def test_pool_driver(workload: str) -> None:
    check_line(drive("pool", workload), "pool", workload)


@pytest.mark.parametrize("workload", ["shell", "short"])
def test_xargs_driver(workload: str) -> None:
    check_line(drive("xargs", workload), "xargs", workload)


@pytest.mark.skipif(shutil.which("parallel") is None, reason="GNU parallel is not on PATH")
@pytest.mark.parametrize("workload", ["shell", "short"])
def test_parallel_driver(workload: str) -> None:
    check_line(drive("parallel", workload), "parallel", workload)


def test_a_failing_shell_line_fails_the_run() -> None:
    spec = Spec("shell", 4, 2, 1, 0.01, 0, 60.0, 2)
    with ShellFileSession("xargs", spec, xargs.argv) as session:
        session.line = "false"
        with pytest.raises(BenchError, match="exit status"):
            session.batch(4)


def test_orchestrator_end_to_end(tmp_path: Path) -> None:
    """run.py relays driver lines, then prints ratios and writes the table."""
    table = tmp_path / "peers.md"
    argv = [sys.executable, str(REPO / "bench" / "peers" / "run.py"), "--quick"]
    argv += ["--repeat", "1", "--systems", "taskmill,xargs", "--workloads", "shell"]
    argv += ["--markdown", str(table)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.strip()]
    assert "machine" in lines[0] and "cpus" in lines[0]
    systems = {ln["system"] for ln in lines if "system" in ln}
    assert systems == {"taskmill", "taskmill (no journal)", "xargs"}
    ratios = {ln["ratio"] for ln in lines if "ratio" in ln}
    assert ratios == {"taskmill/xargs", "taskmill (no journal)/xargs"}
    text = table.read_text()
    assert "| workload | taskmill | taskmill (no journal) | xargs |" in text


def test_a_missing_venv_is_skipped_with_advice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(run, "PEERS_PYTHON", tmp_path / "nope" / "python")
    assert run.usable("dask", run.SYSTEMS["dask"]) is None
    out, err = capsys.readouterr()
    assert "install.py" in err
    assert json.loads(out)["system"] == "dask" and "install.py" in json.loads(out)["skipped"]


# --- pure functions -------------------------------------------------------------------


def result(system: str, workload: str, **fields: Any) -> dict[str, Any]:
    return {"system": system, "workload": workload, "tasks": 100, "slots": 2, **fields}


SYNTHETIC = [
    {"machine": "m", "cpus": 2, "python": "3.11", "date": "d"},
    result("taskmill", "noop", throughput=1000.0, config="-lw 2"),
    result("taskmill (no journal)", "noop", throughput=2000.0),
    result("dask", "noop", throughput=250.0, config="2x1"),
    result("xargs", "shell", throughput=400.0),
    result("taskmill", "shell", throughput=800.0),
    result("taskmill", "short", efficiency=0.9, duration_s=0.01, slots=8),
    result("dask", "short", efficiency=0.6, duration_s=0.01, slots=8),
    result("taskmill", "latency", p50_ms=0.5, p99_ms=1.0),
    result("dask", "latency", p50_ms=5.0, p99_ms=9.0),
    {"system": "celery", "skipped": "no venv"},
    {"error": "dramatiq noop failed"},
]


def test_ratio_lines() -> None:
    got = {(r["ratio"], r["workload"]): r["value"] for r in report.ratio_lines(SYNTHETIC)}
    assert got == {
        ("taskmill/dask", "noop"): 4.0,
        ("taskmill/xargs", "shell"): 2.0,
        ("taskmill/dask", "short"): 1.5,
        ("taskmill/dask", "latency"): 10.0,  # peer p50 / taskmill p50
        ("taskmill (no journal)/dask", "noop"): 8.0,
    }


def test_markdown_layout() -> None:
    text = report.markdown(SYNTHETIC, SYNTHETIC[0])
    rows = [r for r in text.splitlines() if r.startswith("|")]
    assert rows[0] == "| workload | taskmill | taskmill (no journal) | dask | xargs |"
    noop, noop_ratio = rows[2], rows[3]
    assert noop.startswith("| **noop**") and "1,000/s" in noop and "250/s" in noop
    assert noop_ratio == "| _taskmill ÷ peer_ |  |  | 4.00x |  |"
    assert "| _peer p50 ÷ taskmill p50_ |  |  | 10.00x |  |" in rows
    assert any("90.0 %" in r and "60.0 %" in r for r in rows)
    assert "- dask: `2x1`" in text
    assert report.markdown([]) == "No results.\n"


def test_seed_markdown_layout() -> None:
    lines = [
        {"table": "throughput", "system": "taskmill", "tasks": 10000, "workers": 1,
         "throughput": 900.0},
        {"table": "throughput", "system": "xargs", "tasks": 10000, "workers": 1,
         "throughput": 450.0},
        {"table": "efficiency", "system": "taskmill", "workers": 1, "duration_s": 0.01,
         "efficiency": 0.95},
        {"table": "efficiency", "system": "taskmill", "workers": 1, "duration_s": 1.0,
         "efficiency": 0.999},
        {"table": "efficiency", "system": "xargs", "workers": 1, "duration_s": 0.01,
         "efficiency": 0.6},
    ]  # fmt: skip
    text = seed_markdown(lines)
    assert "| #Workers | Throughput | xargs -P W |" in text
    assert "| 1 | 900/s | 450/s |" in text
    assert "| Workers | 10ms Tasks | 1s tasks | xargs 10ms |" in text
    assert "| 1 | 95.0% | 99.9% | 60.0% |" in text


def test_percentile_and_slots() -> None:
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 99) == pytest.approx(99.0)
    assert split_slots(2) == (2, 1)
    assert split_slots(8) == (2, 4)
    assert split_slots(1) == (1, 1)
    with pytest.raises(BenchError):
        split_slots(3)
