"""The autoscaler simulation: the model's arithmetic, the report, the PNG."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest

from client.cli import main
from provisioner.policy import PolicyConfig
from provisioner.simulate import (
    Arrival,
    SimSettings,
    TraceError,
    bursts,
    parse_trace,
    simulate,
)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_one_worker_one_task_is_exact() -> None:
    # One 50 s task: launched at t=0 (first tick), boots in 30 s, runs 30..80; the
    # worker idles 60 s (cooldown) from the first idle tick (80), is drained at 140,
    # sees it at its heartbeat (145) and powers off.
    sim = SimSettings(policy=PolicyConfig(max_workers=1, slots_per_worker=1, cooldown_s=60))
    r = simulate([Arrival(at=0, count=1, duration=50)], sim)
    assert r.complete and r.done == 1
    assert r.makespan_s == 80
    assert r.mean_wait_s == 30
    assert r.instance_seconds == 145
    assert r.idle_fraction == pytest.approx(1 - 50 / 145)
    assert r.launches == 1 and r.peak_instances == 1


def test_min_billing_applies() -> None:
    sim = SimSettings(policy=PolicyConfig(max_workers=1, cooldown_s=0), min_billed_s=60)
    r = simulate([Arrival(at=0, count=1, duration=1)], sim)
    assert r.instance_seconds == 60


def test_more_capacity_is_faster_and_a_static_fleet_pays_for_idle() -> None:
    work = bursts(200, 20, bursts=2, gap_s=900)
    small = simulate(work, SimSettings(policy=PolicyConfig(max_workers=2)))
    large = simulate(work, SimSettings(policy=PolicyConfig(max_workers=20)))
    static = simulate(work, SimSettings(policy=PolicyConfig(min_workers=20, max_workers=20)))
    assert small.complete and large.complete and static.complete
    assert large.makespan_s < small.makespan_s  # both include the 900 s gap
    assert large.mean_wait_s < small.mean_wait_s / 4
    assert large.peak_instances == 20 and small.peak_instances == 2
    # The autoscaled fleet goes to zero between the bursts; the static one idles.
    assert static.instance_seconds > 1.5 * large.instance_seconds
    assert static.idle_fraction > large.idle_fraction
    assert large.samples[-1].instances == 0
    assert min(s.instances for s in large.samples if 400 < s.t < 800) == 0


def test_worker_idle_timeout_also_retires_workers() -> None:
    # Without drains (cooldown far too long), workers still leave by their own idle exit.
    policy = PolicyConfig(max_workers=4, cooldown_s=10_000)
    r = simulate(bursts(40, 10), SimSettings(policy=policy, worker_idle_s=30))
    assert r.complete and r.samples[-1].instances == 0
    assert r.instance_seconds < 4 * (r.makespan_s + 60)


def test_trace_parsing() -> None:
    lines = [
        "# a comment",
        "",
        '{"at": 30, "count": 2, "duration": 1.5}',
        '{"at": 0, "count": 1, "duration": 3}',
    ]
    assert parse_trace(lines) == [
        Arrival(at=0, count=1, duration=3),
        Arrival(at=30, count=2, duration=1.5),
    ]
    with pytest.raises(TraceError, match="trace:1"):
        parse_trace(['{"at": 0}'])
    with pytest.raises(TraceError, match="no arrivals"):
        parse_trace(["# nothing"])


def test_record_writes_a_replayable_trace() -> None:
    out = io.StringIO()
    simulate(bursts(10, 5), SimSettings(policy=PolicyConfig(max_workers=2)), record=out)
    lines = out.getvalue().splitlines()
    assert json.loads(lines[0])["policy"]["max_workers"] == 2
    assert {"observation", "decision"} <= set(json.loads(lines[1]))


def test_cli_simulate_reports_json_and_writes_a_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        '{"at": 0, "count": 50, "duration": 10}\n{"at": 300, "count": 20, "duration": 5}\n'
    )
    png = tmp_path / "plot.png"
    code = main(["provision", "simulate", "--trace", str(trace), "--max", "5", "--plot", str(png)])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["tasks"] == 70 and report["complete"] is True
    assert report["makespan_s"] > 300 and report["instance_seconds"] > 0
    assert 0 < report["idle_fraction"] < 1
    assert report["plot"] == str(png)
    assert png_size(png) == (900, 500)


def test_cli_simulate_rejects_a_bad_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text("not json\n")
    assert main(["provision", "simulate", "--trace", str(trace), "--no-plot"]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert main(["provision", "simulate", "--trace", str(tmp_path / "missing"), "--no-plot"]) == 2
