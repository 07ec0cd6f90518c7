"""Histogram, sampler and health rules: pure, no sockets."""

from __future__ import annotations

from scheduler.telemetry import Histogram, Sample, Sampler, health_problems


def test_histogram_is_cumulative() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        hist.observe(value)
    assert hist.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert hist.count == 4 and abs(hist.sum - 2.65) < 1e-9


def test_sampler_series_and_progress() -> None:
    sampler = Sampler(keep=3)
    sampler.add(Sample(t=0, submitted=10, finished=0, queued=0, running=0))
    sampler.add(Sample(t=1, submitted=10, finished=0, queued=10, running=2))  # work appears
    assert sampler.last_progress == 1
    sampler.add(Sample(t=2, submitted=10, finished=4, queued=6, running=2))
    sampler.add(Sample(t=3, submitted=10, finished=4, queued=6, running=2))
    assert len(sampler.samples) == 3  # only `keep` samples are kept
    assert sampler.last_progress == 2
    assert [p["throughput"] for p in sampler.series()] == [0.0, 4.0, 0.0]
    assert sampler.throughput(60) == 2.0


def problems(**overrides: object) -> list[str]:
    args: dict[str, object] = {
        "now": 100.0,
        "workers": 1,
        "remote": False,
        "fleet_slots": 0,
        "queued": 0,
        "last_progress": None,
        "stuck_after_s": 60.0,
        "aws_error": None,
    }
    args.update(overrides)
    return health_problems(**args)  # type: ignore[arg-type]


def test_health_rules() -> None:
    assert problems(workers=2, queued=5, last_progress=90.0) == []
    [no_workers] = problems(workers=0)
    assert "no workers" in no_workers
    [stuck] = problems(queued=5, last_progress=10.0)
    assert "stuck" in stuck and "5 tasks queued" in stuck and "90 s" in stuck
    [aws] = problems(workers=0, remote=True, fleet_slots=4, aws_error="cannot reach AWS")
    assert aws == "AWS is unreachable: cannot reach AWS"
