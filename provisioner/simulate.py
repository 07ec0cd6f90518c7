"""Replay a workload through the autoscaler's policy, with a model of EC2 and workers.

The policy is :func:`provisioner.policy.decide` itself; only the world around it is
modelled, in fixed time steps:

- a task arrives in the request queue at its trace time; the policy sees
  ``ceil(tasks / tasks_per_message)`` messages (bundles), visible and in flight;
- a launched instance registers its worker ``boot_s`` later (pending until then);
- a worker runs up to ``slots_per_worker`` tasks at once, first come first served;
  a slot that frees up between two steps starts its next task at that very time, so
  results do not depend on the step for task durations shorter than it;
- the autoscaler ticks every ``interval_s``; a drain request is seen at the worker's
  next heartbeat (``heartbeat_s``); a drained worker, or one idle for ``worker_idle_s``
  (``taskmill worker -i``), exits and powers its instance off, which ends the bill;
- every instance is billed from launch to its end, at least ``min_billed_s`` (EC2
  bills Linux per second with a one-minute minimum). Instances still up when the work
  is done and the fleet is back at ``min_workers`` are billed up to that time.

Reported: makespan (first arrival to last completion), instance-seconds paid, idle
fraction (paid slot-seconds that ran no task: boot time, idle time, drain time), mean
queue wait, launches, and the peak fleet.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from protocol.bundles import WORKER_DRAINING, WORKER_RUNNING
from provisioner.policy import (
    InstanceView,
    Memory,
    Observation,
    PolicyConfig,
    WorkerView,
    decide,
    observation_to_dict,
    trace_header,
)


class TraceError(ValueError):
    """A workload trace that cannot be read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """``count`` tasks of ``duration`` seconds each, queued at time ``at``."""

    at: float
    count: int
    duration: float


def parse_trace(lines: Iterable[str], source: str = "trace") -> list[Arrival]:
    """JSON Lines: ``{"at": 0, "count": 100, "duration": 10}``; ``#`` lines are comments."""
    arrivals: list[Arrival] = []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            data = json.loads(text)
            arrival = Arrival(
                at=float(data["at"]), count=int(data["count"]), duration=float(data["duration"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TraceError(f"{source}:{n}: expected {{at, count, duration}}: {exc}") from None
        if arrival.at < 0 or arrival.count < 0 or arrival.duration < 0:
            raise TraceError(f"{source}:{n}: at, count and duration must be >= 0")
        arrivals.append(arrival)
    if not arrivals:
        raise TraceError(f"{source}: no arrivals")
    return sorted(arrivals, key=lambda a: a.at)


def load_trace(path: Path) -> list[Arrival]:
    try:
        with path.open(encoding="utf-8") as fh:
            return parse_trace(fh, str(path))
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror}") from None


def bursts(count: int, duration: float, *, bursts: int = 1, gap_s: float = 0.0) -> list[Arrival]:
    """``bursts`` bursts of ``count`` tasks, ``gap_s`` apart."""
    return [Arrival(at=i * gap_s, count=count, duration=duration) for i in range(bursts)]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimSettings:
    policy: PolicyConfig
    interval_s: float = 10.0  # the autoscaler's tick
    boot_s: float = 30.0  # launch to a registered worker
    heartbeat_s: float = 5.0  # a worker sees a drain request this long after it is set
    worker_idle_s: float = 0.0  # the worker's own idle exit; 0: never
    min_billed_s: float = 60.0
    step_s: float = 1.0
    max_time_s: float = 7 * 24 * 3600.0


@dataclass(slots=True)
class _Instance:
    id: str
    launched: float
    slots: list[float]  # per slot: when it is free
    registered: bool = False
    drain_seen_at: float | None = None  # when the worker notices its drain request
    drain: bool = False  # requested (the `drain` attribute)
    idle_since: float = 0.0
    ended: float | None = None

    def running(self, t: float) -> int:
        if not self.registered:
            return 0
        return sum(1 for free_at in self.slots if free_at > t)


@dataclass(slots=True)
class Sample:
    t: float
    queued: int
    running: int
    instances: int  # alive (billed)
    serving: int  # registered, not draining


@dataclass(slots=True)
class SimResult:
    settings: SimSettings
    tasks: int
    done: int
    makespan_s: float
    instance_seconds: float
    busy_slot_seconds: float
    idle_fraction: float
    mean_wait_s: float
    launches: int
    peak_instances: int
    complete: bool
    samples: list[Sample] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        p = self.settings.policy
        return {
            "tasks": self.tasks,
            "done": self.done,
            "complete": self.complete,
            "makespan_s": round(self.makespan_s, 1),
            "instance_seconds": round(self.instance_seconds, 1),
            "idle_fraction": round(self.idle_fraction, 3),
            "mean_wait_s": round(self.mean_wait_s, 1),
            "launches": self.launches,
            "peak_instances": self.peak_instances,
            "min_workers": p.min_workers,
            "max_workers": p.max_workers,
            "slots_per_worker": p.slots_per_worker,
            "target_backlog_per_slot": p.target_backlog_per_slot,
            "cooldown_s": p.cooldown_s,
            "interval_s": self.settings.interval_s,
            "boot_s": self.settings.boot_s,
            "worker_idle_s": self.settings.worker_idle_s,
        }


def _ticks(step: float, interval: float) -> Iterator[bool]:
    """For each step, whether the autoscaler ticks in it (every ``interval``)."""
    next_tick = 0.0
    t = 0.0
    while True:
        yield t >= next_tick - 1e-9
        if t >= next_tick - 1e-9:
            next_tick += interval
        t += step


def simulate(
    arrivals: list[Arrival], sim: SimSettings, *, record: TextIO | None = None
) -> SimResult:
    """Run the workload to completion (or ``max_time_s``); ``record`` gets a header line
    (the policy) then one JSON line per tick (observation and decision): the format of
    the autoscaler's ``--record`` and of the policy's trace tests."""
    policy = sim.policy
    if record is not None:
        record.write(json.dumps(trace_header(policy, simulated=True)) + "\n")
    pending = deque(sorted(arrivals, key=lambda a: a.at))
    queue: deque[tuple[float, float]] = deque()  # (queued at, duration)
    instances: dict[str, _Instance] = {}
    ended: list[_Instance] = []
    memory = Memory()
    samples: list[Sample] = []
    total = sum(a.count for a in arrivals)
    first = pending[0].at if pending else 0.0
    started = 0
    busy = 0.0
    waited = 0.0
    last_done = first
    launches = 0
    peak = 0
    serial = 0
    t = 0.0
    ticks = _ticks(sim.step_s, sim.interval_s)

    def end(inst: _Instance, at: float) -> None:
        inst.ended = at
        ended.append(instances.pop(inst.id))

    while True:
        while pending and pending[0].at <= t:
            a = pending.popleft()
            queue.extend((a.at, a.duration) for _ in range(a.count))

        for inst in list(instances.values()):
            if not inst.registered and t >= inst.launched + sim.boot_s:
                inst.registered = True
                inst.idle_since = inst.launched + sim.boot_s
            if not inst.registered:
                continue
            draining = inst.drain_seen_at is not None and t >= inst.drain_seen_at
            for i, free_at in enumerate(inst.slots):
                # Back-to-back: a slot freed between steps starts its next task right then.
                while free_at <= t and queue and not draining:
                    queued_at, duration = queue.popleft()
                    start = max(free_at, queued_at)
                    waited += start - queued_at
                    free_at = start + duration
                    busy += duration
                    started += 1
                    last_done = max(last_done, free_at)
                inst.slots[i] = free_at
            running = inst.running(t)
            if running:
                inst.idle_since = max(inst.slots)
            elif draining:
                end(inst, max(t, max(inst.slots)))
            elif sim.worker_idle_s > 0 and t - inst.idle_since >= sim.worker_idle_s:
                end(inst, inst.idle_since + sim.worker_idle_s)

        in_flight = sum(inst.running(t) for inst in instances.values())
        if next(ticks):
            # Messages as the policy sees them: tasks_per_message tasks per bundle.
            per = policy.tasks_per_message
            obs = Observation(
                now=t,
                visible=math.ceil(len(queue) / per),
                inflight=math.ceil(in_flight / per),
                instances=tuple(_view(inst, t) for inst in instances.values()),
            )
            decision = decide(obs, policy, memory)
            memory = decision.memory
            if record is not None:
                line = {"observation": observation_to_dict(obs), "decision": decision.summary()}
                record.write(json.dumps(line) + "\n")
            for iid in decision.terminate:
                if iid in instances:
                    end(instances[iid], t)
            for iid in decision.drain:
                if iid in instances:
                    instances[iid].drain = True
                    instances[iid].drain_seen_at = t + sim.heartbeat_s
            for _ in range(decision.launch):
                serial += 1
                iid = f"i-{serial:05d}"
                ready = t + sim.boot_s  # its slots are free from then on
                instances[iid] = _Instance(
                    id=iid, launched=t, slots=[ready] * policy.slots_per_worker
                )
                launches += 1
        peak = max(peak, len(instances))
        serving = sum(1 for i in instances.values() if i.registered and not i.drain)
        samples.append(Sample(t, len(queue), in_flight, len(instances), serving))

        finished = not pending and not queue and in_flight == 0 and started == total
        if finished and len(instances) <= policy.min_workers:
            break
        if t >= sim.max_time_s:
            break
        t += sim.step_s

    running_at_end = sum(i.running(t) for i in instances.values())
    for inst in list(instances.values()):
        end(inst, t)
    paid = sum(max(sim.min_billed_s, (i.ended or t) - i.launched) for i in ended)
    slot_seconds = paid * policy.slots_per_worker
    done = started - running_at_end
    complete = done == total
    return SimResult(
        settings=sim,
        tasks=total,
        done=done,
        makespan_s=max(0.0, last_done - first),
        instance_seconds=paid,
        busy_slot_seconds=busy,
        idle_fraction=1.0 - busy / slot_seconds if slot_seconds > 0 else 0.0,
        mean_wait_s=waited / started if started else 0.0,
        launches=launches,
        peak_instances=peak,
        complete=complete,
        samples=samples,
    )


def _view(inst: _Instance, t: float) -> InstanceView:
    if not inst.registered:
        return InstanceView(id=inst.id, state="pending", launched=inst.launched)
    draining = inst.drain_seen_at is not None and t >= inst.drain_seen_at
    running = inst.running(t)
    return InstanceView(
        id=inst.id,
        state="running",
        launched=inst.launched,
        worker=WorkerView(
            worker=f"w-{inst.id}",
            state=WORKER_DRAINING if draining else WORKER_RUNNING,
            slots=len(inst.slots),
            running=running,
            last_seen=t,
            drain=inst.drain,
            bundles=running,
        ),
    )
