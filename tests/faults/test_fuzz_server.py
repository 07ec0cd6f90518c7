"""A short fuzz campaign against a live scheduler process (the long one is run by hand)."""

from __future__ import annotations

from tests.faults.fuzz_server import campaign, start


def test_fuzzed_inputs_never_crash_the_daemon() -> None:
    daemon, port = start()
    try:
        report = campaign(port, 250)
        assert daemon.proc.poll() is None  # the daemon is alive
    finally:
        daemon.stop()
    assert report["inputs"] == 250
    # Every input got an answer or a clean close; most are coded errors.
    assert any(key.startswith("error:") for key in report["outcomes"])
