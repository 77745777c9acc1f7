"""The `make bench-sim-scale` plot: what a bigger simulated swarm reaches and holds, for one model.

One plot per model (a workload of that section). Left: held-out accuracy (mean and worst scored peer) against
the swarm's size for the same total samples (log scale), and the long run at the largest size, as training
stopped and after the finish. Right: the run's peak resident memory and the memory each peer added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gossipd.tools.figures import finish, pyplot, size_axes


def plotted(runs: list[dict[str, Any]], model: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model's same-samples runs by swarm size (the task's view where several were run), and its long runs."""
    # Per size the task files' own view (6) where it ran, else the smallest.
    mine = [r for r in runs if r["model"] == model and not r["long"]]
    same = sorted(mine, key=lambda r: (r["peers"], r["view"] != 6, r["view"]))
    by_size: dict[int, dict[str, Any]] = {}
    for run in same:
        by_size.setdefault(run["peers"], run)
    longs = [r for r in runs if r["model"] == model and r["long"]]
    return list(by_size.values()), longs


def plot(runs: list[dict[str, Any]], model: str, path: Path, *, title: str) -> list[str]:
    """Draws the model's plot to `path`; returns the legend's labels."""
    same, longs = plotted(runs, model)
    plt = pyplot()
    figure, (accuracy, memory) = plt.subplots(1, 2, figsize=(12, 4.2))
    sizes = [r["peers"] for r in same]
    accuracy.plot(sizes, [100 * r["mean_accuracy"] for r in same], marker="o", label="mean, same total samples")
    accuracy.plot(sizes, [100 * r["worst_accuracy"] for r in same], marker="v", label="worst, same total samples")
    for run in longs:
        label = f"{run['peers']:,} peers given {run['rounds']} rounds"
        if run.get("stopped_mean_accuracy") is not None:
            accuracy.plot(
                [run["peers"]], [100 * run["stopped_mean_accuracy"]], marker="s", markerfacecolor="white",
                color="tab:green", linestyle="none", label=f"{label}: as training stopped",
            )  # fmt: skip
        accuracy.plot(
            [run["peers"]], [100 * run["mean_accuracy"]], marker="s", color="tab:green", linestyle="none",
            label=f"{label}" + (f", after {run['finish_rounds']} finish rounds" if run.get("finish_rounds") else ""),
        )  # fmt: skip
    accuracy.set_ylabel("held-out accuracy (%)")
    memory.plot(sizes, [r["peak_mb"] / 1024 for r in same], marker="o", color="tab:purple", label="peak resident")
    memory.set_ylabel("peak resident memory (GB)")
    per_peer = memory.twinx()
    per_peer.plot(sizes, [r["mb_per_peer"] for r in same], marker="x", color="tab:grey", linestyle="--")
    per_peer.set_ylabel("MB per simulated peer (dashed)")
    size_axes([accuracy, memory], sizes, label="simulated peers")
    return finish(figure, path, title=title, legend_axis=accuracy, ncol=2, title_size=10)
