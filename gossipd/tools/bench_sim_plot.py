"""The `make bench-sim` plot: what each mixing configuration reached against what its exchanges sent.

One plot per split (a workload of the simulator section): mean peer accuracy against bytes per exchange
(log scale), each configuration a pair of markers joined by a line, as training stopped (hollow) and after
the finish (filled), with centralised training on the same samples as a line across. Peers alone send
nothing, so they have no place on the bytes axis: their accuracy is named in the corner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gossipd.tools.figures import legend_below, pyplot, save


def plotted(reports: list[dict[str, Any]], partition: str) -> list[dict[str, Any]]:
    """The split's mixed runs, in the table's order: those that exchanged and have both accuracies."""
    return [
        r for r in reports if r["partition"] == partition and r["exchanges"] and r["stopped_mean_accuracy"] is not None
    ]


def plot(reports: list[dict[str, Any]], partition: str, path: Path, *, title: str) -> list[str]:
    """Draws the split's plot to `path`; returns the labels of the configurations drawn, in legend order."""
    plt = pyplot()
    runs = plotted(reports, partition)
    split = [r for r in reports if r["partition"] == partition]
    centralised = next((r["centralised_accuracy"] for r in split if r["centralised_accuracy"] is not None), None)
    alone = next((r["mean_accuracy"] for r in split if r["algorithm"] == "local"), None)
    figure, axis = plt.subplots(figsize=(8, 4.8))
    palette = plt.get_cmap("tab10")
    lowest = min([100 * r["stopped_mean_accuracy"] for r in runs], default=90.0)
    for index, run in enumerate(runs):
        colour = palette(index % 10)
        x = run["bytes_per_exchange"] / 1e3
        stop, final = 100 * run["stopped_mean_accuracy"], 100 * run["mean_accuracy"]
        axis.plot([x, x], [stop, final], color=colour, linewidth=1.2)
        axis.plot([x], [stop], marker="o", markerfacecolor="white", color=colour, linestyle="none")
        axis.plot([x], [final], marker="o", color=colour, linestyle="none", label=run["label"])
    if centralised is not None:
        axis.axhline(100 * centralised, color="black", linewidth=0.8, linestyle="--", label="centralised")
        lowest = min(lowest, 100 * centralised)
    if alone is not None:
        axis.text(
            0.99, 0.02, f"peers alone: {100 * alone:.1f}% (no exchanges)", transform=axis.transAxes,
            ha="right", va="bottom", fontsize=8, color="grey",
        )  # fmt: skip
    top = max(
        [100 * r["mean_accuracy"] for r in runs] + ([100 * centralised] if centralised is not None else []),
        default=100.0,
    )
    axis.set_ylim(lowest - 0.3, top + 0.2)
    axis.set_xscale("log")
    axis.set_xlabel("bytes per exchange, both directions (KB, log scale)")
    axis.set_ylabel("test accuracy, mean peer (%)")
    axis.set_title(f"{title}\nhollow: as training stopped; filled: after the finish", fontsize=10)
    axis.grid(alpha=0.3)
    labels = legend_below(figure, axis, ncol=3)
    figure.tight_layout()
    save(figure, path)
    return labels
