"""`make bench-quality`'s verdict lines: the default (`auto`) is judged on every split beside the fixed
algorithms, and a miss at the stop or after the finish names the split."""

from __future__ import annotations

from typing import Any

from tests.scripts import load_script


def row(algorithm: str, stop: float, finish: float) -> dict[str, Any]:
    return {"algorithm": algorithm, "label": algorithm, "stop_gap_points": stop, "gap_points": finish}


LOCAL = row("local", -12.3, -12.3)  # training alone: a row of its own, never judged by the non-IID goal


def non_iid_lines(summaries: dict[str, list[dict[str, Any]]]) -> list[str]:
    return [line for line in load_script("bench_quality").verdicts(summaries) if line.startswith("- Non-IID")]


def test_the_default_is_judged_first_and_a_miss_at_the_stop_alone_fails_it() -> None:
    summaries = {
        "titanic": [row("auto", -2.2, 0.0), row("powergossip", -1.3, -0.6), row("plain", -1.1, -0.6), LOCAL],
        "mnist-mlp": [row("auto", -5.6, -0.6), row("powergossip", -6.4, -1.4), row("plain", -0.9, -0.3), LOCAL],
    }
    lines = non_iid_lines(summaries)
    assert [line.split(":")[0] for line in lines] == [
        "- Non-IID, auto (the default)",
        "- Non-IID, powergossip",
        "- Non-IID, plain",
    ]
    assert "**NOT met** (missed on mnist-mlp -5.60 / -0.60" in lines[0]
    assert "titanic" not in lines[0]
    assert "mnist-mlp -6.40 / -1.40" in lines[1]
    assert "**met** (every split)" in lines[2]


def test_an_algorithm_without_rows_gets_no_line() -> None:
    lines = non_iid_lines({"titanic": [row("plain", -0.5, -0.2), LOCAL]})
    assert len(lines) == 1 and lines[0].startswith("- Non-IID, plain")
