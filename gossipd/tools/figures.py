"""What every benchmark plot does the same way: its legend under the panels, and how it is saved.

The benchmark reports draw with matplotlib (the `plot` extra), imported only when a plot is drawn, on the
Agg backend (no display on the machines that run benchmarks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def legend_below(figure: Any, axis: Any, *, ncol: int) -> list[str]:
    """The axis's legend under the panels, in the figure's margin (the saved image grows to hold it), so
    that it hides no line; returns its labels."""
    handles, labels = axis.get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=9, frameon=False)
    return [str(label) for label in labels]


def size_axes(axes: Sequence[Any], sizes: Sequence[int], *, label: str) -> None:
    """X axes over swarm sizes that double (4, 8, 16; 8, 256, 1,024): log 2, a tick at each size, a grid."""
    for axis in axes:
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(sizes), [f"{s:,}" for s in sizes])
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)


def finish(
    figure: Any, path: Path, *, title: str, legend_axis: Any, ncol: int, title_size: float | None = None
) -> list[str]:
    """The common end of a multi-panel plot: its title, the panels laid out, the legend of `legend_axis` under
    them, saved to `path`; returns the legend's labels."""
    # No size given: matplotlib's own for figure titles (an explicit None would fall back to the text size).
    figure.suptitle(title, **({} if title_size is None else {"fontsize": title_size}))
    figure.tight_layout()
    labels = legend_below(figure, legend_axis, ncol=ncol)
    save(figure, path)
    return labels


def save(figure: Any, path: Path) -> None:
    """The figure as a PNG at `path` (its folder made), cropped to what was drawn, and closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90, bbox_inches="tight")
    pyplot().close(figure)
