"""Fuzz a live scheduler daemon over TCP: any input gets a coded error or a reply,
never a crash or a half-open connection.

Run by hand for a long campaign (the figure goes to docs/security.md):

    python -m tests.faults.fuzz_server --examples 20000

The test suite runs the same driver with a few hundred examples.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

from hypothesis import HealthCheck, given, settings

from protocol.errors import FrameError
from protocol.framing import BlockingFrameSocket
from tests.fuzzing import raw_frames
from tests.procs import Daemon, start_scheduler

REPLY_TIMEOUT_S = 10.0


def one_input(port: int, frame: bytes) -> str:
    """Send ``frame`` on a fresh connection; classify what the server did."""
    with socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT_S) as sock:
        sock.sendall(frame)
        sock.shutdown(socket.SHUT_WR)  # end of input: the server must answer or close
        conn = BlockingFrameSocket(sock)
        outcomes = []
        try:
            while (msg := conn.recv()) is not None:
                assert isinstance(msg, dict) and isinstance(msg.get("op"), str), msg
                outcomes.append("error:" + msg["code"] if msg["op"] == "error" else "reply")
        except FrameError as exc:  # pragma: no cover - the server never sends half frames
            raise AssertionError(f"server sent a broken frame: {exc}") from exc
        except TimeoutError as exc:
            raise AssertionError(f"no reply and no close for {frame[:60]!r}") from exc
        return ",".join(outcomes) or "closed"


def still_serving(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT_S) as sock:
        conn = BlockingFrameSocket(sock)
        conn.send({"op": "ping", "rid": 1})
        reply = conn.recv()
        assert isinstance(reply, dict) and reply.get("op") == "ping", reply


def campaign(port: int, examples: int) -> dict[str, Any]:
    seen: dict[str, int] = {}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(raw_frames)
    def run(frame: bytes) -> None:
        outcome = one_input(port, frame)
        seen[outcome] = seen.get(outcome, 0) + 1

    t0 = time.perf_counter()
    run()
    still_serving(port)
    return {"inputs": sum(seen.values()), "outcomes": seen, "seconds": time.perf_counter() - t0}


def start(extra_env: dict[str, str] | None = None) -> tuple[Daemon, int]:
    env = {**os.environ, "TASKMILL_STATE_DIR": "none", **(extra_env or {})}
    return start_scheduler("-s", "0", "-lw", "1", env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=20_000)
    args = parser.parse_args()
    daemon, port = start()
    try:
        report = campaign(port, args.examples)
        assert daemon.proc.poll() is None, "the scheduler died"
    finally:
        daemon.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
