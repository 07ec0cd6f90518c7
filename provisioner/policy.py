"""The autoscaler's policy: a pure function from one observation to one decision.

No I/O, no clock, no randomness: the daemon (:mod:`provisioner.autoscaler`) and the
simulator (:mod:`provisioner.simulate`) feed it the same :class:`Observation` and
act on the same :class:`Decision`, so what the simulation shows is what the daemon
does, and recorded traces replay exactly in unit tests.

The rules, in order:

1. **Classify** every instance that carries our fleet tag and is ``pending`` or
   ``running`` in EC2:

   - *booting*: no worker item yet and younger than ``boot_timeout_s``. Counted as
     capacity: this is what stops a second launch for the same backlog;
   - *serving*: its worker is ``running`` and not asked to drain. Counted;
   - *retiring*: its worker is ``draining`` or has ``drain`` set. Not counted (it
     is going away) but it still occupies a place under ``max_workers``;
   - *done*: its worker reported ``stopped`` (drained, or exited after its idle
     timeout), its worker stopped heartbeating for ``stale_after_s`` (dead: the
     bundle lease ran out long ago and another worker owns its work), or it never
     registered within ``boot_timeout_s``. Terminated -- unless its worker reports
     running tasks and is not stale: a live worker with running tasks is never
     terminated, whatever else it says.

2. **Wanted fleet**: ``min_workers`` while the queue (visible + in flight) is
   empty; otherwise ``ceil(tasks / (slots_per_worker * target_backlog_per_slot))``
   where ``tasks = messages * tasks_per_message``, at least one, at most one per
   message (a bundle is claimed by one worker, so a worker without a message of its
   own cannot help), clamped to ``[min_workers, max_workers]``.

3. **Scale out** by ``wanted - (booting + serving)``, never past ``max_workers``
   instances alive (retiring ones included).

4. **Scale in** by ``(booting + serving) - wanted``, only ``cooldown_s`` after the
   last launch, and only by draining *serving workers that have reported zero
   running tasks and held no bundle for at least* ``cooldown_s``, longest idle first. Booting
   instances are never drained: they register, then idle out like any other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.bundles import WORKER_DRAINING, WORKER_RUNNING, WORKER_STOPPED

EC2_ALIVE = ("pending", "running")

# instance classes
BOOTING = "booting"
SERVING = "serving"
RETIRING = "retiring"
DONE = "done"


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    min_workers: int = 0
    max_workers: int = 10
    slots_per_worker: int = 4  # the provisioner starts every worker with -t this
    target_backlog_per_slot: float = 1.0  # queued + running tasks per slot we aim for
    tasks_per_message: float = 1.0  # how many tasks one queued message stands for
    cooldown_s: float = 60.0  # idle time before retirement, and quiet time after a launch
    boot_timeout_s: float = 900.0  # an instance with no worker after this is broken
    stale_after_s: float = 600.0  # no worker heartbeat for this long: dead (0 = never)

    def __post_init__(self) -> None:
        if self.min_workers < 0:
            raise ValueError(f"min_workers must be >= 0, got {self.min_workers}")
        if self.max_workers < max(1, self.min_workers):
            raise ValueError(
                f"max_workers must be >= 1 and >= min_workers ({self.min_workers}), "
                f"got {self.max_workers}"
            )
        if self.slots_per_worker < 1:
            raise ValueError(f"slots_per_worker must be >= 1, got {self.slots_per_worker}")
        for name in ("target_backlog_per_slot", "tasks_per_message"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("cooldown_s", "boot_timeout_s", "stale_after_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerView:
    """A workers-table item, as the policy needs it."""

    worker: str
    state: str  # running | draining | stopped
    slots: int
    running: int  # tasks running now
    last_seen: float
    drain: bool = False
    bundles: int = 0  # bundles held (claimed, maybe with tasks not started yet)

    @property
    def busy(self) -> bool:
        return self.running > 0 or self.bundles > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceView:
    """One of our EC2 instances and the worker registered from it, if any."""

    id: str
    state: str  # EC2 state: pending | running
    launched: float
    worker: WorkerView | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    now: float
    visible: int  # ApproximateNumberOfMessages
    inflight: int  # ApproximateNumberOfMessagesNotVisible
    instances: tuple[InstanceView, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Memory:
    """What the policy carries from one tick to the next (returned in each decision)."""

    last_launch: float = -math.inf
    idle_since: Mapping[str, float] = field(default_factory=dict)  # instance id -> time


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    wanted: int
    booting: int
    serving: int
    retiring: int
    busy: int  # serving workers with running tasks or held bundles
    launch: int
    drain: tuple[str, ...]  # instance ids whose worker is asked to drain
    terminate: tuple[str, ...]  # instance ids to terminate
    reasons: Mapping[str, str]  # instance id -> why it is drained or terminated
    why: str  # one line: why this fleet size
    memory: Memory

    @property
    def idle(self) -> bool:
        """Nothing to do this tick."""
        return not (self.launch or self.drain or self.terminate)

    def summary(self) -> dict[str, Any]:
        """The decision as log fields."""
        return {
            "wanted": self.wanted,
            "booting": self.booting,
            "serving": self.serving,
            "busy": self.busy,
            "retiring": self.retiring,
            "launch": self.launch,
            "drain": list(self.drain),
            "terminate": list(self.terminate),
            "reasons": dict(self.reasons),
            "why": self.why,
        }


def classify(inst: InstanceView, now: float, cfg: PolicyConfig) -> tuple[str, str]:
    """(class, reason) of one instance; see the module docstring."""
    w = inst.worker
    if w is None:
        if now - inst.launched >= cfg.boot_timeout_s:
            return DONE, f"no worker registered {cfg.boot_timeout_s:g}s after launch"
        return BOOTING, "booting"
    stale = cfg.stale_after_s > 0 and now - w.last_seen >= cfg.stale_after_s
    if stale:
        return DONE, f"worker {w.worker} silent for {now - w.last_seen:.0f}s"
    if w.busy and w.state != WORKER_RUNNING:
        # A live worker that still reports running tasks is never terminated, even if it
        # says stopped: wait for a consistent report (or for it to go stale).
        return RETIRING, f"worker {w.worker} {w.state} with {w.running} running"
    if w.state == WORKER_STOPPED:
        return DONE, f"worker {w.worker} stopped"
    if w.state == WORKER_DRAINING or w.drain:
        return RETIRING, f"worker {w.worker} draining"
    if w.state == WORKER_RUNNING:
        return SERVING, "serving"
    return RETIRING, f"worker {w.worker} in unknown state {w.state!r}"


def wanted_workers(visible: int, inflight: int, cfg: PolicyConfig) -> tuple[int, str]:
    """The fleet size for this queue depth, and why."""
    messages = max(0, visible) + max(0, inflight)
    if messages == 0:
        return cfg.min_workers, f"queue empty: min_workers={cfg.min_workers}"
    tasks = messages * cfg.tasks_per_message
    per_worker = cfg.slots_per_worker * cfg.target_backlog_per_slot
    by_backlog = math.ceil(tasks / per_worker - 1e-9)
    wanted = max(1, cfg.min_workers, min(by_backlog, messages))
    wanted = min(wanted, cfg.max_workers)
    why = (
        f"{messages} messages ~ {tasks:g} tasks / ({cfg.slots_per_worker} slots x "
        f"{cfg.target_backlog_per_slot:g} per slot) -> {by_backlog}, "
        f"<= messages, in [{cfg.min_workers}, {cfg.max_workers}] -> {wanted}"
    )
    return wanted, why


def decide(obs: Observation, cfg: PolicyConfig, memory: Memory | None = None) -> Decision:
    """What to launch, drain and terminate now. Pure: same inputs, same decision."""
    memory = memory or Memory()
    now = obs.now
    booting: list[InstanceView] = []
    serving: list[InstanceView] = []
    retiring: list[InstanceView] = []
    terminate: list[str] = []
    reasons: dict[str, str] = {}
    for inst in sorted(obs.instances, key=lambda i: i.id):
        if inst.state not in EC2_ALIVE:
            continue
        cls, reason = classify(inst, now, cfg)
        if cls == BOOTING:
            booting.append(inst)
        elif cls == SERVING:
            serving.append(inst)
        elif cls == RETIRING:
            retiring.append(inst)
        else:
            terminate.append(inst.id)
            reasons[inst.id] = reason

    # Idle clocks: a serving worker's idle time starts at the first tick it reports 0.
    idle_since: dict[str, float] = {}
    for inst in serving:
        assert inst.worker is not None  # serving implies a worker
        if not inst.worker.busy:
            idle_since[inst.id] = memory.idle_since.get(inst.id, now)
    busy = sum(1 for inst in serving if inst.id not in idle_since)

    wanted, why = wanted_workers(obs.visible, obs.inflight, cfg)
    active = len(booting) + len(serving)
    alive = active + len(retiring)

    launch = 0
    drain: list[str] = []
    last_launch = memory.last_launch
    if wanted > active:
        launch = max(0, min(wanted - active, cfg.max_workers - alive))
        if launch < wanted - active:
            why += f"; capped: {alive} alive of max {cfg.max_workers}"
        if launch:
            last_launch = now
    elif wanted < active:
        since_launch = now - memory.last_launch
        if since_launch < cfg.cooldown_s:
            why += f"; scale-in waits: last launch {since_launch:.0f}s ago"
        else:
            candidates = sorted(
                (
                    (t, inst.id)
                    for inst in serving
                    if (t := idle_since.get(inst.id)) is not None and now - t >= cfg.cooldown_s
                ),
            )
            for t, iid in candidates[: active - wanted]:
                drain.append(iid)
                reasons[iid] = f"idle for {now - t:.0f}s"
            if len(drain) < active - wanted:
                why += f"; {active - wanted - len(drain)} more excess but not idle long enough"
    for iid in drain:
        idle_since.pop(iid, None)

    return Decision(
        wanted=wanted,
        booting=len(booting),
        serving=len(serving),
        retiring=len(retiring),
        busy=busy,
        launch=launch,
        drain=tuple(drain),
        terminate=tuple(terminate),
        reasons=reasons,
        why=why,
        memory=Memory(last_launch=last_launch, idle_since=idle_since),
    )


# --- traces: observations as JSON, for recording and replaying --------------------------


def trace_header(cfg: PolicyConfig, **extra: Any) -> dict[str, Any]:
    """The first line of a recorded trace: the policy that made its decisions."""
    return {"policy": dataclasses.asdict(cfg), **extra}


def observation_to_dict(obs: Observation) -> dict[str, Any]:
    return {
        "now": obs.now,
        "visible": obs.visible,
        "inflight": obs.inflight,
        "instances": [
            {
                "id": i.id,
                "state": i.state,
                "launched": i.launched,
                "worker": None
                if i.worker is None
                else {
                    "worker": i.worker.worker,
                    "state": i.worker.state,
                    "slots": i.worker.slots,
                    "running": i.worker.running,
                    "last_seen": i.worker.last_seen,
                    "drain": i.worker.drain,
                    "bundles": i.worker.bundles,
                },
            }
            for i in obs.instances
        ],
    }


def observation_from_dict(data: Mapping[str, Any]) -> Observation:
    instances = []
    for i in data.get("instances", ()):
        w = i.get("worker")
        worker = None
        if w is not None:
            worker = WorkerView(
                worker=str(w["worker"]),
                state=str(w["state"]),
                slots=int(w["slots"]),
                running=int(w["running"]),
                last_seen=float(w["last_seen"]),
                drain=bool(w.get("drain", False)),
                bundles=int(w.get("bundles", 0)),
            )
        instances.append(
            InstanceView(
                id=str(i["id"]), state=str(i["state"]), launched=float(i["launched"]), worker=worker
            )
        )
    return Observation(
        now=float(data["now"]),
        visible=int(data["visible"]),
        inflight=int(data["inflight"]),
        instances=tuple(instances),
    )
