"""Run the fault-injection suite as a script: ``python -m tests.faults``.

Each case ends with every accepted task finished exactly once or reported failed
with a reason:

- SIGKILL the scheduler mid-run, restart it on its state dir
  (tests/integration/test_crash_recovery.py);
- SIGKILL a local worker process (tests/integration/test_end_to_end.py);
- SIGKILL a remote worker daemon mid-bundle (tests/worker/test_daemon.py);
- AWS unreachable mid-run, then back (tests/faults/test_aws_outage.py);
- the state dir's disk fills up (tests/faults/test_disk_full.py);
- hostile input and load (tests/faults/test_fuzz_server.py, test_load.py).
"""

from __future__ import annotations

import sys

import pytest

CASES = [
    "tests/faults",
    "tests/integration/test_crash_recovery.py",
    "tests/integration/test_end_to_end.py::test_killed_worker_process_loses_nothing",
    "tests/worker/test_daemon.py::test_sigkill_mid_bundle_another_worker_finishes_it",
]

if __name__ == "__main__":
    sys.exit(pytest.main(["-q", *CASES, *sys.argv[1:]]))
