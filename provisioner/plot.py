"""A PNG of one simulation: queue depth above; instances and running tasks below.

matplotlib is an optional dependency (``pip install 'taskmill[sim]'``), imported here
only, with the Agg backend: no display is needed.
"""

from __future__ import annotations

from pathlib import Path

from provisioner.simulate import SimResult

WIDTH_IN, HEIGHT_IN, DPI = 9.0, 5.0, 100  # 900 x 500 pixels


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plot(result: SimResult, path: Path, *, title: str = "") -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(
            "the plot needs matplotlib: pip install 'taskmill[sim]' (or --no-plot)"
        ) from exc

    s = result.samples
    t = [x.t for x in s]
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, sharex=True, figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI
    )
    top.fill_between(t, [x.queued for x in s], step="post", color="tab:orange", alpha=0.5)
    top.plot(t, [x.queued for x in s], drawstyle="steps-post", color="tab:orange", lw=1)
    top.set_ylabel("queued")

    middle.plot(t, [x.instances for x in s], drawstyle="steps-post", lw=1.5, label="billed")
    middle.plot(t, [x.serving for x in s], drawstyle="steps-post", lw=1, ls="--", label="serving")
    middle.set_ylabel("instances")
    middle.set_ylim(0, max(1, result.settings.policy.max_workers) * 1.15)
    middle.legend(loc="upper right", fontsize="x-small")

    slots = result.settings.policy.slots_per_worker
    bottom.plot(t, [x.running for x in s], drawstyle="steps-post", color="tab:green", lw=1)
    bottom.set_ylabel("running")
    bottom.set_ylim(0, max(1, result.settings.policy.max_workers * slots) * 1.15)
    bottom.set_xlabel("time (s)")
    for ax in (top, middle, bottom):
        ax.grid(alpha=0.3)

    r = result.report()
    fig.suptitle(
        (title + "\n" if title else "")
        + f"makespan {r['makespan_s']:g} s, {r['instance_seconds']:g} instance-s paid, "
        f"idle {100 * r['idle_fraction']:.0f}%",
        fontsize="medium",
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
