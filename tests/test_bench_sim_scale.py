"""`make bench-sim-scale`'s table: the long run reports the copies as training stopped and after the finish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gossipd.tools.bench_sim_scale_plot import plot, plotted
from tests.scripts import load_script


def _run(peers: int, *, long: bool, finish: int = 0) -> dict[str, Any]:
    return {
        "model": "cnn",
        "peers": peers,
        "view": 6,
        "rounds": 64 if long else 8,
        "seconds_per_round": 12.5,
        "mb_per_peer": 4.2,
        "peak_mb": 4649.0,
        "mean_accuracy": 0.9375,
        "worst_accuracy": 0.9375,
        "consensus_start": 0.055,
        "consensus_end": 0.0016,
        "finish_rounds": finish,
        "stopped_mean_accuracy": 0.9158 if finish else None,
        "consensus_stop": 0.953,
        "resident_built_mb": 825.0,
        "long": long,
    }


def test_the_long_run_has_a_line_of_its_own_with_both_ends_of_the_finish() -> None:
    module = load_script("bench_sim_scale")
    text = module.table([_run(1024, long=False), _run(1024, long=True, finish=25)], 1)
    rows = [line for line in text.splitlines() if line.startswith("| cnn")]
    assert len(rows) == 1 and "| 8 |" in rows[0]  # the long run is not a row of the same-samples table
    assert (
        "- Long run, cnn: 1,024 peers × 64 rounds (view 6), then 25 finish rounds: 91.58% mean as training "
        "stopped, 93.75% after the finish (worst 93.75%); consensus 0.055 → 0.953 as training stopped → 0.0016 "
        "after the finish." in text
    )


def test_a_long_run_without_a_finish_says_where_it_ended() -> None:
    module = load_script("bench_sim_scale")
    line = module.long_line(_run(1024, long=True))
    assert (
        line == "- Long run, cnn: 1,024 peers × 64 rounds (view 6): 93.75% mean, worst 93.75%; consensus 0.055 → 0.002."
    )


def test_the_plot_takes_one_view_per_size_in_order_and_the_long_run_apart(tmp_path: Path) -> None:
    runs = [
        _run(1024, long=False),
        {**_run(8, long=False), "view": 4},
        {**_run(8, long=False), "view": 6},
        _run(1024, long=True, finish=25),
        {**_run(8, long=False), "model": "mlp"},
    ]
    same, longs = plotted(runs, "cnn")
    assert [(r["peers"], r["view"]) for r in same] == [(8, 6), (1024, 6)]  # the task's own view where it ran
    assert [r["rounds"] for r in longs] == [64]
    pytest.importorskip("matplotlib")
    labels = plot(runs, "cnn", tmp_path / "scale.png", title="cnn")
    assert labels[:2] == ["mean, same total samples", "worst, same total samples"]
    assert "1,024 peers given 64 rounds: as training stopped" in labels
    assert (tmp_path / "scale.png").stat().st_size > 0
