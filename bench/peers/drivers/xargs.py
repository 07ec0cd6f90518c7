"""``xargs -P SLOTS -I{} sh -c {}`` over a file of shell lines: the floor for shell tasks.

    python -m bench.peers.drivers.xargs --workload shell

Shell and short workloads only (xargs has no notion of a Python call).
"""

from __future__ import annotations

from bench.peers.drivers.common import SHELL_WORKLOADS, parser, run
from bench.peers.drivers.shellfile import ShellFileSession

SYSTEM = "xargs"


def argv(slots: int) -> list[str]:
    return ["xargs", "-P", str(slots), "-I{}", "sh", "-c", "{}"]


def main() -> None:
    args = parser(__doc__.splitlines()[0], SHELL_WORKLOADS).parse_args()
    run(SYSTEM, args, lambda spec: ShellFileSession(SYSTEM, spec, argv))


if __name__ == "__main__":
    main()
