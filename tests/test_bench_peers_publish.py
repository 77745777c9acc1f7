"""`make bench-peers` redraws the plots BENCHMARKS.md links only when it rewrites the section: a run kept out of
it (--no-write) leaves the published plots as they are."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import REPO, load_script

RECORDED = REPO / "docs" / "bench-peers" / "gossipd-auto-paced-cnn-iid-0.json"


@pytest.fixture
def bench_peers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    if not RECORDED.exists():
        pytest.skip(f"{RECORDED} is not in this checkout")
    module = load_script("bench_peers")
    results = tmp_path / "docs" / "bench-peers"
    results.mkdir(parents=True)
    shutil.copy(RECORDED, results)
    monkeypatch.setattr(module, "REPO", tmp_path)
    monkeypatch.setattr(module, "DOCS", tmp_path / "docs")
    monkeypatch.setattr(module, "RESULTS", results)
    return module


def test_a_published_run_kept_out_of_benchmarks_draws_no_plot(bench_peers: ModuleType, tmp_path: Path) -> None:
    bench_peers.publish(bench_peers.RESULTS, write=False)
    assert list((tmp_path / "docs").glob("*.png")) == []
    assert not (tmp_path / "BENCHMARKS.md").exists()


def test_the_report_links_and_draws_the_plot_of_each_workload(bench_peers: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    text, _history = bench_peers.write_report(bench_peers.RESULTS, draw=True)
    assert "![accuracy against time and bytes, cnn, iid](docs/bench-peers-cnn-iid.png)" in text
    assert [p.name for p in (tmp_path / "docs").glob("*.png")] == ["bench-peers-cnn-iid.png"]
