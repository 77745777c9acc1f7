"""The bench-wan report from recorded runs: medians with misses, the busiest link, verdicts per link speed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gossipd.tools.bench_wan_report import plot, report, rows, verdict

TEN = 10_000_000


def run(
    system: str, seconds: float | None, *, repeat: int = 0, rate: int = TEN, use: float = 0.5, together: bool = True
) -> dict[str, Any]:
    hit = None if seconds is None else {"seconds": seconds, "bytes": 1e6}
    return {
        "system": system,
        "together": together,
        "model": "cnn",
        "split": "iid",
        "repeat": repeat,
        "rate": rate,
        "reached": {"mean_97": hit, "mean_98": hit, "worst_98": hit},
        "total_bytes": 5e6,
        "final_accuracy": 0.985,
        "links": [
            {"host": "p0", "up_use": use, "down_use": use / 2},
            {"host": "p1", "up_use": None, "down_use": 0.1},
        ],
        "curve": [[1.0, 0.95, 0.94, 0.0], [2.0, 0.985, 0.98, 1e6]],
    }


def test_medians_count_a_miss_as_slowest_and_most_misses_as_not_reached() -> None:
    results = [
        run("gossipd-powergossip-f16-paced", 30, repeat=0),
        run("gossipd-powergossip-f16-paced", None, repeat=1),
        run("gossipd-powergossip-f16-paced", 40, repeat=2),
        run("hivemind", None, repeat=0),
        run("hivemind", None, repeat=1),
        run("hivemind", 90, repeat=2),
    ]
    found = {r["system"]: r for r in rows(results, "cnn", TEN)}
    assert found["gossipd-powergossip-f16-paced"]["mean_98"] == 40
    assert found["hivemind"]["mean_98"] is None
    assert found["hivemind"]["busiest_link"] == 0.5


@pytest.mark.parametrize(
    ("ours", "theirs", "rate", "expected"),
    [
        (30.0, 90.0, TEN, "0.33×, met"),
        (60.0, 90.0, TEN, "0.67×, not met"),
        (60.0, 90.0, 100_000_000, "0.67×, met"),
        (None, 90.0, TEN, "not met**, no gossipd setting reached 98%"),
        (30.0, None, TEN, "neither rival reached 98%: **not judged"),
    ],
)
def test_one_verdict_per_speed(ours: float | None, theirs: float | None, rate: int, expected: str) -> None:
    results = [run("gossipd-plain-paced", ours, rate=rate), run("flower", theirs, rate=rate)]
    line = verdict(rows(results, "cnn", rate), rate)
    assert expected in line
    assert line.count("\n") == 0


def test_the_verdict_takes_each_rival_at_its_faster_setting() -> None:
    results = [
        run("gossipd-auto-paced", 60),
        run("flower", 200),
        run("flower-quarter", 100),
        run("hivemind", None),
        run("hivemind-tb2048", 150),
    ]
    found = rows(results, "cnn", TEN)
    assert [r["system"] for r in found] == [
        "gossipd-auto-paced",
        "hivemind",
        "hivemind-tb2048",
        "flower",
        "flower-quarter",
    ]
    line = verdict(found, TEN)
    assert "against Flower FedAvg (deployment runtime, ¼ epoch per round) 100 s: **0.60×, not met**" in line


def test_report_has_a_table_and_verdict_per_speed(tmp_path: Path) -> None:
    results = [run("gossipd-plain-paced", 20), run("hivemind", 80), run("gossipd-plain-paced", 15, rate=100_000_000)]
    text = report(results, {"cnn": "docs/bench-wan-cnn.png"})
    assert text.count("### cnn, every link 10mbit and 100mbit up and down") == 1
    assert text.count("- Time to 98%") == 2
    assert (
        "| gossipd, plain gossip, step-paced | 1/1 | 20 (20) | 5.0, 50% | 98.50 | 15 (15) | 5.0, 50% | 98.50 |" in text
    )
    assert (
        "| hivemind (Optimizer, local updates, average every 100 steps) | 1 | 80 (80) | 5.0, 50% | 98.50 | — | — | — |"
        in text
    )
    path = tmp_path / "plot.png"
    plot(results, "cnn", path)
    assert path.stat().st_size > 0


def test_a_gossipd_row_with_a_run_whose_peer_0_started_early_is_marked_and_explained() -> None:
    results = [
        run("gossipd-auto-paced", 30),
        run("gossipd-auto-paced", 32, rate=100_000_000),
        run("gossipd-plain-paced", 40, together=False),
        run("gossipd-plain-paced", 42, repeat=1),
        run("hivemind", 80, together=False),  # the rivals' peers always started together
    ]
    text = report(results, {})
    assert "| gossipd, plain gossip, step-paced ‡ | 2 | 41 (41) |" in text  # one early run marks its row
    assert "| gossipd, auto (the default), step-paced |" in text
    assert "hivemind (Optimizer, local updates, average every 100 steps) |" in text and "every 100 steps) ‡" not in text
    assert text.count("‡ Runs from before 2026-12-05") == 1
    together = report([run("gossipd-auto-paced", 30), run("hivemind", 80, together=False)], {})
    assert "‡" not in together


def test_a_system_outside_the_report_such_as_an_experiments_comes_last_by_name() -> None:
    results = [run("gossipd-zz-experiment", 30), run("hivemind", 80), run("gossipd-aa-experiment", 40)]
    assert [row["system"] for row in rows(results, "cnn", TEN)] == [
        "hivemind",
        "gossipd-aa-experiment",
        "gossipd-zz-experiment",
    ]
    assert "gossipd-zz-experiment" in report(results, {})


def test_the_verdict_judges_the_default_where_it_ran_even_when_a_fixed_setting_was_faster() -> None:
    results = [run("gossipd-auto-paced", 60), run("gossipd-plain-paced", 30), run("flower", 100)]
    line = verdict(rows(results, "cnn", TEN), TEN)
    assert "0.60×, not met" in line and "auto" in line
    missed = [run("gossipd-auto-paced", None), run("gossipd-plain-paced", 30), run("flower", 100)]
    assert "**not met**, gossipd's default did not reach 98%" in verdict(rows(missed, "cnn", TEN), TEN)
