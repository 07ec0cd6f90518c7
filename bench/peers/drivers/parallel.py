"""GNU ``parallel --will-cite -j SLOTS`` over a file of shell lines.

    python -m bench.peers.drivers.parallel --workload shell

GNU parallel runs each input line through the shell, like ``xargs ... sh -c``, but
is a Perl program with its own per-job bookkeeping. Shell and short workloads only.
"""

from __future__ import annotations

from bench.peers.drivers.common import SHELL_WORKLOADS, parser, run
from bench.peers.drivers.shellfile import ShellFileSession

SYSTEM = "parallel"


def argv(slots: int) -> list[str]:
    return ["parallel", "--will-cite", "-j", str(slots)]


def main() -> None:
    args = parser(__doc__.splitlines()[0], SHELL_WORKLOADS).parse_args()
    run(SYSTEM, args, lambda spec: ShellFileSession(SYSTEM, spec, argv))


if __name__ == "__main__":
    main()
