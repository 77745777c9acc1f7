"""`make bench-scale`'s report: its table, one verdict per goal (judged from the record, never assumed), and
its plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gossipd.tools.bench_scale_report import plot, table, verdicts


def _swarm(peers: int, resident: float, traffic: float | None) -> dict[str, Any]:
    return {
        "peers": peers,
        "resident_mb": [resident, resident + 7],
        "peak_mb": [369.0, 370.0],
        "startup_s": [3.0, 6.0],
        "view_full": peers,
        "other_traffic_bps": None if traffic is None else [traffic, traffic * 1.5],
        "exchange_bps": [0.0, 0.0] if peers != 16 or traffic is None else [2_300_000.0, 4_800_000.0],
    }


def _record(*, startup: float = 2.1, resident: float = 324.0, traffic: float | None = 1600.0) -> dict[str, Any]:
    return {
        "machine": "Test CPU, 2 cores",
        "date": "2026-12-07",
        "duration_s": 60.0,
        "settle_s": 45.0,
        "alone": {"startup_s": startup, "startup_runs": [startup, startup + 0.2, startup - 0.1], "resident_mb": 362.0},
        "quiet": {
            "16": _swarm(16, resident, traffic),
            "4": _swarm(4, 340.0, None if traffic is None else 1040.0),
            "8": _swarm(8, 325.0, None if traffic is None else 1190.0),
        },
        "mixing": {
            "summary": _swarm(16, 348.0, None if traffic is None else 2650.0),
            "consensus_distance": {"0.0": 0.9, "60.0": 0.05},
        },
    }


def test_the_table_orders_the_idle_swarms_by_size_and_puts_the_mixing_one_last() -> None:
    text = table(_record())
    rows = [line for line in text.splitlines() if line.startswith(("| 4 ", "| 8 ", "| 16 "))]
    assert [row.split(" | ")[0] for row in rows] == ["| 4", "| 8", "| 16", "| 16"]
    assert rows[-1].startswith("| 16 | the task's")
    assert "| 324 (331) | 369 (370) | 16/16 | 1.60 (2.40) |" in rows[2]
    assert "2.1 s from launch to `training` (median of 2.1, 2.3, 2.0 s), 362 MB resident." in text
    assert "first and last poll): 0.9 → 0.05." in text
    assert (
        "The 16 mixing daemons moved a median 2,300 KB/s of exchange payload each (in + out; largest 4,800); the "
        "median of their other TCP bytes is 0.1% of that, the exchanges' own framing included." in text
    )


def test_each_goal_is_judged_from_the_record() -> None:
    met = verdicts(_record())
    assert met == [
        "- **Startup ≤ 10 s: met** (2.1 s alone, median of 3).",
        "- **Memory ≤ 400 MB per daemon: met** (largest daemon of any swarm 355 MB; at 16, medians: 324 MB idle "
        "and 348 MB mixing).",
        "- **Discovery ≤ 2 KB/s per peer at 16: met** (1.60 KB/s, median daemon of 16 idle; busiest 2.40).",
    ]
    missed = verdicts(_record(startup=12.5, resident=398.0, traffic=2100.0))
    assert missed[0].startswith("- **Startup ≤ 10 s: NOT met** (12.5 s")
    # The median is under the goal, but one daemon is over it: every daemon counts.
    assert missed[1].startswith("- **Memory ≤ 400 MB per daemon: NOT met** (largest daemon of any swarm 405 MB")
    assert missed[2].startswith("- **Discovery ≤ 2 KB/s per peer at 16: NOT met** (2.10 KB/s")


def test_traffic_not_measured_is_not_judged() -> None:
    record = _record(traffic=None)
    assert verdicts(record)[2] == "- Discovery ≤ 2 KB/s per peer at 16: not judged, not measured (no `ss`)."
    assert "| 16 | none | 324 (331) | 369 (370) | 16/16 | — |" in table(record)


def test_the_plot_is_drawn_with_a_legend_for_every_series(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "scale.png"
    labels = plot(_record(), path, title="test")
    assert path.stat().st_size > 0
    assert labels == [
        "idle swarm: median daemon",
        "idle swarm: largest daemon",
        "mixing swarm: median daemon",
        "mixing swarm: largest daemon",
        "goal",
    ]
