"""The `make bench-quality` plot: how far each configuration of a workload ends from centralised training.

One plot per workload: a row per configuration, its accuracy gap to centralised training (points, each seed
against that seed's centralised run) as training stopped (hollow) and after the finish (filled), one dot per
seed and a bar at the mean, with the issue's bars (3 points at the stop, 1 after the finish) drawn across.
The seeds' spread is the point: a mean within a bar says little where the seeds straddle it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gossipd.tools.figures import pyplot, save


def plotted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The workload's configurations with per-seed gaps, in the table's order (centralised is the zero)."""
    return [r for r in rows if r["algorithm"] != "centralised" and r.get("gap_points_by_seed")]


def plot(rows: list[dict[str, Any]], path: Path, *, title: str, stop_points: float, finish_points: float) -> list[str]:
    """Draws the workload's plot to `path`; returns the configurations' labels, top to bottom."""
    plt = pyplot()
    drawn = plotted(rows)
    figure, axis = plt.subplots(figsize=(8, 0.6 * len(drawn) + 1.8))
    offset = 0.15  # the stop's dots above the row's line, the finish's below
    # The scale is the mixed configurations' (and the bars'): peers alone may end tens of points behind, which
    # would squash every other row into a line; where they do, their row names their mean instead.
    shown = [-stop_points - 0.5, 0.5]
    for row in drawn:
        if row["algorithm"] != "local":
            shown += [*row["stop_gap_points_by_seed"], *row["gap_points_by_seed"]]
    left, right = min(shown) - 0.5, max(shown) + 0.5
    for index, row in enumerate(drawn):
        y = len(drawn) - 1 - index
        mixed = row["algorithm"] != "local"
        stops, finals = row["stop_gap_points_by_seed"], row["gap_points_by_seed"]
        if not mixed and min(finals) < left:
            axis.text(left, y, f"  mean {row['gap_points']:+.1f} points, off the scale", va="center", fontsize=8)
            continue
        if mixed:
            axis.scatter(stops, [y + offset] * len(stops), s=18, facecolors="none", edgecolors="tab:orange", alpha=0.8)
            axis.plot([row["stop_gap_points"]] * 2, [y + offset - 0.12, y + offset + 0.12], color="tab:orange")
        axis.scatter(finals, [y - offset] * len(finals), s=18, color="tab:blue", alpha=0.8)
        axis.plot([row["gap_points"]] * 2, [y - offset - 0.12, y - offset + 0.12], color="tab:blue")
    axis.axvline(0, color="black", linewidth=0.8)
    axis.axvline(-stop_points, color="tab:orange", linewidth=0.8, linestyle="--")
    axis.axvline(-finish_points, color="tab:blue", linewidth=0.8, linestyle="--")
    axis.set_yticks(range(len(drawn)), [r["label"] for r in reversed(drawn)], fontsize=9)
    axis.set_ylim(-0.6, len(drawn) - 0.4)
    axis.set_xlim(left, right)
    axis.set_xlabel("accuracy against centralised training (points; dots: seeds, bars: their mean)")
    axis.set_title(
        f"{title}\nhollow: as training stopped (bar at −{stop_points:g}); "
        f"filled: after the finish (bar at −{finish_points:g})",
        fontsize=10,
    )
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    save(figure, path)
    return [str(r["label"]) for r in drawn]
