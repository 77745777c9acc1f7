"""The `make bench-personal` plot: what a personal last layer gains and costs each peer, against the shared model.

One plot per split (a workload of that section), a row per personal run, one dot per peer (peer i holds the
same examples in every run, so each dot is a like-for-like difference) and a bar at the mean. Left: accuracy
on the peer's own label mix, personalised minus shared, with the goal at +2 points. Right: global test
accuracy with the personal layer replaced by the peers' average, minus the shared model's, goal at −1 point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gossipd.tools.figures import pyplot, save

OWN_GOAL = 2.0  # points: personalised ≥ shared + 2 on each peer's own labels
AVERAGED_GOAL = -1.0  # points: the averaged layer ≥ shared − 1 on the global test set


def differences(shared: dict[str, Any], personal: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Per peer, in points: own-labels gain, and the averaged layer's global accuracy against shared."""
    own = [100 * (p - s) for p, s in zip(personal["own_accuracies"], shared["own_accuracies"], strict=True)]
    averaged = [100 * (a - shared["mean_accuracy"]) for a in personal["averaged_personal_accuracies"]]
    return own, averaged


def plot(reports: list[dict[str, Any]], partition: str, path: Path, *, title: str) -> list[str]:
    """Draws the split's plot to `path`; returns the personal runs' labels, top to bottom."""
    plt = pyplot()
    split = [r for r in reports if r["partition"] == partition]
    shared = next(r for r in split if r["label"] == "shared")
    runs = [r for r in split if r["label"] != "shared"]
    labels = [f"{r['label']}, {r['personal_steps']} steps" for r in runs]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 0.55 * len(runs) + 1.9), sharey=True)
    for index, run in enumerate(runs):
        y = len(runs) - 1 - index
        for axis, values in zip((left, right), differences(shared, run), strict=True):
            axis.scatter(values, [y] * len(values), s=18, color="tab:blue", alpha=0.8)
            mean = sum(values) / len(values)
            axis.plot([mean, mean], [y - 0.2, y + 0.2], color="tab:blue")
    for axis, goal, what in (
        (left, OWN_GOAL, "own label mix: personalised − shared"),
        (right, AVERAGED_GOAL, "global, personal layer averaged − shared"),
    ):
        axis.axvline(0, color="black", linewidth=0.8)
        axis.axvline(goal, color="tab:green", linewidth=0.8, linestyle="--")
        axis.set_xlabel(f"{what} (points; goal {goal:+g}, dashed)", fontsize=9)
        axis.grid(axis="x", alpha=0.3)
    left.set_yticks(range(len(runs)), list(reversed(labels)), fontsize=9)
    left.set_ylim(-0.6, len(runs) - 0.4)
    figure.suptitle(f"{title}\ndots: peers (the same examples in every run), bars: their mean", fontsize=10)
    figure.tight_layout()
    save(figure, path)
    return labels
