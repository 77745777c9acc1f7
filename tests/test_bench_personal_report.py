"""`make bench-personal`'s section rebuilt from a run's record (`--report-only`): per peer differences against
the shared run (peer i holds the same examples in both), and one plot per split under the table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gossipd.tools.bench_personal_plot import differences
from tests.scripts import REPO, load_script


def run(partition: str, label: str, steps: int, own: list[float], averaged: list[float]) -> dict[str, Any]:
    return {
        "partition": partition, "label": label, "personal_steps": steps, "mean_accuracy": 0.95,
        "own_accuracies": own, "own_accuracy": sum(own) / len(own), "worst_own_accuracy": min(own),
        "averaged_personal_accuracies": averaged, "averaged_personal_accuracy": sum(averaged) / max(1, len(averaged)),
    }  # fmt: skip


def reports() -> list[dict[str, Any]]:
    out = []
    for partition in ("dirichlet:0.1", "shards:2"):
        out += [
            run(partition, "shared", 0, [0.95, 0.90], []),
            run(partition, "personal local", 200, [0.98, 0.91], [0.94, 0.94]),
        ]
    return out


def test_differences_are_per_peer_and_in_points() -> None:
    shared, personal = reports()[:2]
    own, averaged = differences(shared, personal)
    assert own == pytest.approx([3.0, 1.0])
    assert averaged == pytest.approx([-1.0, -1.0])


def test_the_section_links_one_plot_per_split_under_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(REPO / "scripts"))  # it imports bench_sim beside it, as `make` runs it
    bench_personal = load_script("bench_personal")
    monkeypatch.setattr(bench_personal, "DOCS", tmp_path)
    record = {
        "measured": "2026-12-07", "machine": "a test machine", "wall_seconds": 600.0, "rounds": 300,
        "finish_rounds": 25, "full_data": True, "reports": reports(),
    }  # fmt: skip
    lines = bench_personal.report(record, draw=True).splitlines()
    assert lines[0].startswith("Measured 2026-12-07 on a test machine; `make bench-personal` (10 min)")
    images = [i for i, line in enumerate(lines) if line.startswith("![")]
    assert len(images) == 2
    assert max(i for i, line in enumerate(lines) if line.startswith("|")) < images[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bench-personal-dirichlet0.1.png",
        "bench-personal-shards2.png",
    ]
    assert any("dirichlet:0.1 personal local, 200 steps: met (+1.0)" in line for line in lines) is False
    assert any("dirichlet:0.1 personal local, 200 steps: NOT met (+1.0)" in line for line in lines)
