"""`make bench-sim`'s section and plots, rebuilt from a run's record (`--report-only`): one plot per split,
linked under that split's table, drawing the mixed configurations only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gossipd.tools.bench_sim_plot import plot, plotted
from tests.scripts import load_script


def run(label: str, algorithm: str, partition: str, stop: float | None, final: float, sent: float) -> dict[str, Any]:
    mixed = algorithm != "local"
    return {
        "label": label, "algorithm": algorithm, "partition": partition, "steps": 600, "steps_per_exchange": 2,
        "exchanges": 4800 if mixed else 0, "bytes_per_exchange": sent if mixed else 0.0,
        "compression_ratio": 914_762 / sent if mixed else 0.0, "stopped_mean_accuracy": stop,
        "mean_accuracy": final, "worst_accuracy": final - 0.002, "consensus_distance_end": 0.01,
        "wall_seconds": 200.0, "centralised_accuracy": 0.9887 if label == "plain" else None,
    }  # fmt: skip


def record() -> dict[str, Any]:
    reports = []
    for partition in ("iid", "dirichlet:0.5"):
        reports += [
            run("plain", "plain", partition, 0.9879, 0.9893, 914_762),
            run("PowerGossip r1", "powergossip", partition, 0.9759, 0.9847, 9_962),
            run("local only", "local", partition, None, 0.9190, 0),
        ]
    return {
        "measured": "2026-12-07", "machine": "a test machine", "wall_seconds": 1200.0, "workers": 2,
        "partitions": ["iid", "dirichlet:0.5"], "finish_rounds": 25, "full_data": True, "reports": reports,
        "mixing_cost": {
            "train_step_s": 0.014, "exchange_end_s_r1i1": 0.0012, "exchange_end_s_r1i2": 0.0019,
            "exchange_end_s_r2i1": 0.0017,
        },
    }  # fmt: skip


def test_a_plot_draws_the_mixed_configurations_of_its_split_only() -> None:
    reports = record()["reports"]
    assert [r["label"] for r in plotted(reports, "iid")] == ["plain", "PowerGossip r1"]
    assert all(r["partition"] == "dirichlet:0.5" for r in plotted(reports, "dirichlet:0.5"))


def test_the_section_links_one_plot_per_split_under_its_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    bench_sim = load_script("bench_sim")
    monkeypatch.setattr(bench_sim, "DOCS", tmp_path)
    text = bench_sim.report(record(), draw=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench-sim-dirichlet0.5.png", "bench-sim-iid.png"]
    lines = text.splitlines()
    iid_table = lines.index("**iid** — centralised (same samples, one model, batch 8×32): **0.9887**")
    iid_plot = lines.index("![accuracy against bytes per exchange, iid](docs/bench-sim-iid.png)")
    assert iid_table < iid_plot < lines.index(next(line for line in lines if line.startswith("**dirichlet:0.5**")))
    assert text.startswith("Measured 2026-12-07 on a test machine; `make bench-sim` (20 min, 2 runs in parallel")
    assert "600 rounds (one local step per peer per round; each peer starts an exchange every 2 steps" in text


def test_a_run_that_leaves_benchmarks_alone_draws_no_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench_sim = load_script("bench_sim")
    monkeypatch.setattr(bench_sim, "DOCS", tmp_path)
    text = bench_sim.report(record(), draw=False)
    assert "![accuracy against bytes per exchange, iid](docs/bench-sim-iid.png)" in text
    assert list(tmp_path.iterdir()) == []


def test_a_split_with_nothing_mixed_still_gets_its_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    alone = [r for r in record()["reports"] if r["algorithm"] == "local"]
    assert plot(alone, "iid", tmp_path / "p.png", title="iid") == []
    assert (tmp_path / "p.png").stat().st_size > 0
