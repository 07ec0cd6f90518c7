"""The pure scaling policy: rules one by one, then recorded traces replayed tick by tick."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from provisioner.policy import (
    InstanceView,
    Memory,
    Observation,
    PolicyConfig,
    WorkerView,
    decide,
    observation_from_dict,
    observation_to_dict,
    wanted_workers,
)

TRACES = Path(__file__).parent / "traces"
CFG = PolicyConfig(min_workers=0, max_workers=5, slots_per_worker=4, cooldown_s=60)


def worker(
    iid: str,
    *,
    running: int = 0,
    state: str = "running",
    seen: float = 1000.0,
    drain: bool = False,
    launched: float = 0.0,
) -> InstanceView:
    return InstanceView(
        id=iid,
        state="running",
        launched=launched,
        worker=WorkerView(
            worker=f"w-{iid}",
            state=state,
            slots=4,
            running=running,
            last_seen=seen,
            drain=drain,
            bundles=1 if running else 0,
        ),
    )


def booting(iid: str, launched: float = 990.0) -> InstanceView:
    return InstanceView(id=iid, state="pending", launched=launched)


def obs(visible: int, inflight: int, *instances: InstanceView, now: float = 1000.0) -> Observation:
    return Observation(now=now, visible=visible, inflight=inflight, instances=instances)


def test_no_instance_while_the_queue_is_empty() -> None:
    d = decide(obs(0, 0), CFG)
    assert (d.wanted, d.launch, d.drain, d.terminate) == (0, 0, (), ())
    assert "queue empty" in d.why


def test_one_instance_as_soon_as_there_is_work() -> None:
    d = decide(obs(1, 0), CFG)
    assert (d.wanted, d.launch) == (1, 1)
    assert d.memory.last_launch == 1000.0


def test_more_while_backlog_per_slot_is_above_target_up_to_max() -> None:
    assert wanted_workers(8, 0, CFG)[0] == 2  # 8 tasks / 4 slots
    assert wanted_workers(9, 0, CFG)[0] == 3
    assert wanted_workers(1000, 50, CFG)[0] == CFG.max_workers
    relaxed = PolicyConfig(max_workers=5, slots_per_worker=4, target_backlog_per_slot=4)
    assert wanted_workers(32, 0, relaxed)[0] == 2  # 32 tasks / (4 slots x 4 per slot)


def test_never_more_workers_than_messages() -> None:
    # A bundle is claimed by one worker: 2 messages of 500 tasks each keep at most 2 busy.
    bundled = PolicyConfig(max_workers=10, slots_per_worker=4, tasks_per_message=500)
    wanted, why = wanted_workers(2, 0, bundled)
    assert wanted == 2 and "messages" in why


def test_min_workers_are_kept_even_when_idle() -> None:
    cfg = PolicyConfig(min_workers=2, max_workers=5, cooldown_s=0)
    d = decide(obs(0, 0, worker("a"), worker("b"), worker("c")), cfg)
    assert d.wanted == 2 and len(d.drain) == 1


def test_pending_instances_are_counted_no_double_launch() -> None:
    first = decide(obs(12, 0), CFG)
    assert first.launch == 3
    # Next tick: same backlog, the three are still booting -> nothing more.
    again = decide(obs(12, 0, booting("i1"), booting("i2"), booting("i3")), CFG, first.memory)
    assert (again.booting, again.launch) == (3, 0)
    # Backlog grows: only the difference is launched.
    more = decide(obs(20, 0, booting("i1"), booting("i2"), booting("i3")), CFG, again.memory)
    assert more.launch == 2


def test_max_counts_retiring_instances() -> None:
    cfg = PolicyConfig(max_workers=3, slots_per_worker=1)
    d = decide(obs(10, 0, worker("a", running=1), worker("b", state="draining")), cfg)
    assert d.launch == 1  # 2 alive of max 3
    assert "capped" in d.why


def test_scale_in_only_idle_workers_after_cooldown() -> None:
    fleet = (worker("busy", running=3), worker("idle1"), worker("idle2"))
    memory = Memory(last_launch=0.0)
    d1 = decide(obs(0, 1, *fleet, now=1000.0), CFG, memory)
    assert d1.wanted == 1 and d1.drain == ()  # idle clocks start now
    assert set(d1.memory.idle_since) == {"idle1", "idle2"}
    d2 = decide(obs(0, 1, *fleet, now=1030.0), CFG, d1.memory)
    assert d2.drain == ()  # idle for 30 s < cooldown
    d3 = decide(obs(0, 1, *fleet, now=1060.0), CFG, d2.memory)
    assert set(d3.drain) == {"idle1", "idle2"}
    assert "busy" not in d3.drain and d3.terminate == ()
    assert d3.reasons["idle1"] == "idle for 60s"


def test_no_scale_in_right_after_a_launch() -> None:
    memory = Memory(last_launch=990.0, idle_since={"a": 0.0, "b": 0.0})
    d = decide(obs(0, 0, worker("a"), worker("b")), CFG, memory)
    assert d.drain == () and "last launch" in d.why


def test_a_busy_worker_is_never_drained_or_terminated() -> None:
    # Empty queue, long past cooldown, yet the only worker reports a running task.
    memory = Memory(last_launch=0.0)
    for state in ("running", "draining", "stopped"):
        d = decide(obs(0, 0, worker("a", running=1, state=state)), CFG, memory)
        assert d.drain == () and d.terminate == (), state


def test_stopped_workers_are_terminated() -> None:
    d = decide(obs(0, 0, worker("a", state="stopped")), CFG)
    assert d.terminate == ("a",) and "stopped" in d.reasons["a"]


def test_draining_workers_are_not_counted_and_wait() -> None:
    d = decide(obs(4, 0, worker("a", drain=True)), CFG)
    assert (d.serving, d.retiring, d.launch, d.terminate) == (0, 1, 1, ())


def test_stale_and_never_registered_instances_are_terminated() -> None:
    cfg = PolicyConfig(max_workers=5, stale_after_s=600, boot_timeout_s=900)
    stale = worker("dead", running=2, seen=0.0)  # silent for 1000 s: its lease ran out
    lost = booting("lost", launched=0.0)  # launched 1000 s ago, never registered
    fresh = booting("new", launched=900.0)
    d = decide(obs(0, 0, stale, lost, fresh), cfg)
    assert set(d.terminate) == {"dead", "lost"}
    assert d.booting == 1
    no_stale = PolicyConfig(max_workers=5, stale_after_s=0)
    assert decide(obs(0, 0, stale), no_stale).terminate == ()


def test_instances_not_alive_in_ec2_are_ignored() -> None:
    gone = InstanceView(id="x", state="shutting-down", launched=0.0)
    d = decide(obs(4, 0, gone), CFG)
    assert (d.booting, d.launch, d.terminate) == (0, 1, ())


def test_decide_is_pure() -> None:
    o = obs(9, 3, worker("a", running=2), worker("b"), booting("c"))
    m = Memory(last_launch=10.0, idle_since={"b": 100.0})
    assert decide(o, CFG, m) == decide(o, CFG, m)
    assert m.idle_since == {"b": 100.0}  # the memory given is not mutated


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        PolicyConfig(min_workers=3, max_workers=2)
    with pytest.raises(ValueError, match="target_backlog_per_slot"):
        PolicyConfig(target_backlog_per_slot=0)


def test_observation_round_trips_through_json() -> None:
    o = obs(3, 1, worker("a", running=1, drain=True), booting("b"))
    assert observation_from_dict(json.loads(json.dumps(observation_to_dict(o)))) == o


# --- recorded traces -----------------------------------------------------------------------


def _trace(name: str) -> tuple[PolicyConfig, list[dict[str, Any]]]:
    lines = (TRACES / name).read_text().splitlines()
    header = json.loads(lines[0])
    return PolicyConfig(**header["policy"]), [json.loads(x) for x in lines[1:] if x.strip()]


@pytest.mark.parametrize("name", sorted(p.name for p in TRACES.glob("*.jsonl")))
def test_recorded_trace_replays_to_the_same_decisions_and_keeps_the_rules(name: str) -> None:
    """Each trace line is one tick's observation and the decision made then. Replaying
    must give the same decision (a change of behaviour shows up here), and every
    decision must keep the policy's promises, checked independently of its code."""
    cfg, ticks = _trace(name)
    assert len(ticks) >= 10
    memory = Memory()
    launched_any = drained_any = False
    for n, tick in enumerate(ticks):
        o = observation_from_dict(tick["observation"])
        d = decide(o, cfg, memory)
        memory = d.memory
        assert d.summary() == tick["decision"], f"{name} tick {n}"

        messages = o.visible + o.inflight
        by_id = {i.id: i for i in o.instances}
        unregistered = sum(1 for i in o.instances if i.worker is None)
        alive = len(o.instances)
        # No instance for an empty queue beyond min; one as soon as there is work.
        if messages == 0:
            assert d.launch == 0 or alive < cfg.min_workers
        if messages > 0 and alive == 0:
            assert d.launch >= 1
        # Never past max; never launch while booting instances already cover the need.
        assert alive + d.launch <= cfg.max_workers
        if unregistered >= d.wanted:
            assert d.launch == 0
        # Never drain or terminate a live worker with running tasks.
        for iid in (*d.drain, *d.terminate):
            w = by_id[iid].worker
            if w is not None and o.now - w.last_seen < cfg.stale_after_s:
                assert w.running == 0 and w.bundles == 0, f"{name} tick {n}: {iid}"
        launched_any |= d.launch > 0
        drained_any |= bool(d.drain)
    assert launched_any and drained_any  # the trace exercises both directions
    last = observation_from_dict(ticks[-1]["observation"])
    assert last.visible == last.inflight == 0
