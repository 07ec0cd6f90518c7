"""Fairness and priority: pure FairQueue, no sockets."""

from __future__ import annotations

from scheduler.queues import FairQueue


def test_priority_then_fifo_within_a_user() -> None:
    q: FairQueue[str] = FairQueue()
    for name, prio in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 9)]:
        q.push("u", prio, name)
    assert [q.pop() for _ in range(5)] == ["e", "b", "d", "a", "c"]
    assert q.pop() is None


def test_user_with_fewest_running_goes_first() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(4):
        q.push("heavy", 0, f"h{i}")
    q.push("light", 0, "l0")
    q.push("light", 0, "l1")
    order = [q.pop() for _ in range(6)]
    # heavy and light alternate while both have work
    assert order[:4] in (["h0", "l0", "h1", "l1"], ["l0", "h0", "l1", "h1"])
    assert q.running("heavy") == 4 and q.running("light") == 2
    q.finished("light", 2)
    assert q.running("light") == 0


def test_running_counts_steer_new_work() -> None:
    q: FairQueue[str] = FairQueue()
    q.push("a", 0, "a0")
    assert q.pop() == "a0"  # a now has one running
    q.push("a", 100, "a1")
    q.push("b", 0, "b0")
    assert q.pop() == "b0"  # fewest running beats a's higher priority


def test_priority_band() -> None:
    q: FairQueue[str] = FairQueue()
    q.push("u", 5, "low")
    q.push("u", 150, "high")
    assert q.pop(min_p=0, max_p=9) == "low"
    assert q.pop(min_p=0, max_p=9) is None
    assert q.pop(min_p=100, max_p=1000) == "high"


def test_pop_many_single_user_fast_path_keeps_order() -> None:
    q: FairQueue[int] = FairQueue()
    for i in range(10):
        q.push("u", i % 2, i)
    assert q.pop_many(4) == [1, 3, 5, 7]
    assert len(q) == 6 and q.running("u") == 4


def test_remove_and_push_front() -> None:
    q: FairQueue[str] = FairQueue()
    q.push("u", 0, "a")
    q.push("u", 0, "b")
    assert q.remove("u", 0, "a")
    assert not q.remove("u", 0, "a")
    got = q.pop()
    assert got == "b"
    q.finished("u")
    q.push("u", 0, "c")
    q.push_front("u", 0, "b")
    assert q.pop_many(2) == ["b", "c"]


def test_quota_room() -> None:
    q: FairQueue[int] = FairQueue(max_queued_per_user=3)
    q.push("u", 0, 1)
    assert q.room_for("u") == 2
    assert q.room_for("other") == 3
