"""`make bench-quality`'s section rebuilt from a run's record (`--report-only`): the table, then one plot per
workload, each drawing every configuration's seeds on a scale that peers alone far behind do not squash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gossipd.tools.bench_quality_plot import plot, plotted
from tests.scripts import load_script


def summary(label: str, algorithm: str, stops: list[float], finals: list[float]) -> dict[str, Any]:
    return {
        "label": label, "algorithm": algorithm, "link_mbit": None, "seeds": len(finals),
        "stop_accuracy": 0.9 + stops[0] / 100, "accuracy": 0.9 + finals[0] / 100, "worst_accuracy": 0.85,
        "stop_gap_points": sum(stops) / len(stops), "gap_points": sum(finals) / len(finals),
        "stop_gap_points_by_seed": stops, "gap_points_by_seed": finals, "stop_loss": 1.0, "loss": 1.0,
        "loss_gap_percent": 1.0, "stop_loss_gap_percent": 1.0, "bytes_per_exchange": 1000.0,
        "compression_ratio": 10.0, "consensus_distance": 0.0, "wall_seconds": 1.0,
    }  # fmt: skip


CENTRALISED = {"label": "centralised (one model, all shards)", "algorithm": "centralised", "seeds": 2,
               "accuracy": 0.98, "loss": 0.1}  # fmt: skip
ROWS = [
    summary("task's own: auto", "auto", [-2.0, -1.0], [-0.5, -0.3]),
    summary("plain", "plain", [-1.5, -1.0], [-0.4, -0.2]),
    summary("local only", "local", [-50.0, -48.0], [-50.0, -48.0]),
    CENTRALISED,
]


def test_every_configuration_gets_a_row_and_centralised_is_the_zero() -> None:
    assert [r["label"] for r in plotted(ROWS)] == ["task's own: auto", "plain", "local only"]


def test_a_plot_is_drawn_even_with_peers_alone_off_its_scale(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    labels = plot(ROWS, tmp_path / "q.png", title="mnist-mlp", stop_points=3.0, finish_points=1.0)
    assert labels == ["task's own: auto", "plain", "local only"]
    assert (tmp_path / "q.png").stat().st_size > 0


def test_the_section_links_one_plot_per_workload_under_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    bench_quality = load_script("bench_quality")
    monkeypatch.setattr(bench_quality, "DOCS", tmp_path)
    size = {"task": "mnist-mlp.toml", "dataset": "mnist", "needs": "x", "peers": 8, "rounds": 1000, "seeds": 2}
    record = {
        "measured": "2026-12-07", "machine": "a test machine", "workers": 2, "finish_rounds": 25,
        "wall_seconds": 600.0, "cpu_seconds": 1200.0, "daemons": {}, "reports": [],
        "sizes": {
            "mnist-mlp": {"name": "mnist-mlp", "partition": "dirichlet:0.1", **size},
            "titanic": {"name": "titanic", "partition": "dirichlet:0.5", **size},
        },
        "summaries": {"mnist-mlp": ROWS, "titanic": ROWS},
    }  # fmt: skip
    lines = bench_quality.report(record, draw=True).splitlines()
    assert lines[0].startswith("Measured 2026-12-07 on a test machine; `make bench-quality` (10 min, 20 CPU-minutes")
    images = [i for i, line in enumerate(lines) if line.startswith("![")]
    assert [lines[i].rsplit("/", 1)[1] for i in images] == [
        "bench-quality-mnist-mlp.png)",
        "bench-quality-titanic.png)",
    ]
    last_row = max(i for i, line in enumerate(lines) if line.startswith("|"))
    assert last_row < images[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench-quality-mnist-mlp.png", "bench-quality-titanic.png"]
