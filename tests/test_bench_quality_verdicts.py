"""`make bench-quality`'s verdict lines: the default (`auto`) is judged on every split beside the fixed
algorithms, and a miss at the stop or after the finish names the split."""

from __future__ import annotations

from typing import Any

from tests.scripts import load_script


def row(algorithm: str, stop: float, finish: float, link_mbit: float | None = None) -> dict[str, Any]:
    return {
        "algorithm": algorithm, "label": algorithm, "stop_gap_points": stop, "gap_points": finish,
        "link_mbit": link_mbit,
    }  # fmt: skip


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


def test_the_default_on_slow_links_is_judged_on_a_line_of_its_own() -> None:
    slow = load_script("bench_quality").LINK_MBIT
    summaries = {
        "titanic": [row("auto", -1.2, -0.3), row("auto", -1.5, -0.4, link_mbit=slow), LOCAL],
        "mnist-mlp": [row("auto", -2.2, -0.5), row("auto", -12.8, -1.9, link_mbit=slow), LOCAL],
    }
    lines = non_iid_lines(summaries)
    assert [line.split(":")[0] for line in lines] == [
        "- Non-IID, auto (the default)",
        f"- Non-IID, auto (the default) on {slow:g} Mbit/s links (modelled)",
    ]
    assert "**met** (every split)" in lines[0]
    assert "**NOT met** (missed on mnist-mlp -12.80 / -1.90 (stop / finish))" in lines[1]


def test_only_an_auto_task_runs_again_on_slow_links() -> None:
    bench = load_script("bench_quality")
    auto = bench.configurations("auto", {})
    assert [(c.algorithm, c.link_mbit) for c in auto] == [
        ("auto", None), ("auto", bench.LINK_MBIT), ("powergossip", None), ("plain", None), ("local", None),
    ]  # fmt: skip
    assert len({c.label for c in auto}) == len(auto)  # rows and run files are told apart by label and link
    fixed = bench.configurations("powergossip", {"rank": 2, "iterations": 2})
    assert all(c.link_mbit is None for c in fixed) and [c.algorithm for c in fixed] == ["powergossip", "plain", "local"]


def test_an_algorithm_without_rows_gets_no_line() -> None:
    lines = non_iid_lines({"titanic": [row("plain", -0.5, -0.2), LOCAL]})
    assert len(lines) == 1 and lines[0].startswith("- Non-IID, plain")


def test_a_row_over_several_seeds_shows_each_seeds_spread_at_the_stop_and_after_the_finish() -> None:
    bench = load_script("bench_quality")
    workload = bench.Workload(
        name="mnist-mlp", task="t", dataset="d", needs="n", peers=8, partition="dirichlet:0.1", rounds=10, seeds=3
    )

    def report(algorithm: str, seed: int, stopped: float, final: float, central: float | None = None) -> dict[str, Any]:
        return {
            "workload": "mnist-mlp", "label": algorithm, "algorithm": algorithm, "seed": seed,
            "stopped_mean_accuracy": stopped, "mean_accuracy": final, "worst_accuracy": final,
            "mean_loss": 0.1, "stopped_mean_loss": 0.1, "centralised_accuracy": central, "centralised_loss": 0.1,
            "bytes_per_exchange": 1.0, "compression_ratio": 1.0, "consensus_distance_end": 0.0, "wall_seconds": 1.0,
        }  # fmt: skip

    reports = [
        *(report("local", seed, 0.5, 0.5, central=0.98) for seed in range(3)),
        report("auto", 0, 0.95, 0.97),
        report("auto", 1, 0.96, 0.975),
        report("auto", 2, 0.94, 0.98),
    ]
    rows = bench.summarise(reports, "mnist-mlp")
    lines = bench.table(workload, rows)
    auto_line = next(line for line in lines if "| auto |" in line)
    local_line = next(line for line in lines if "| local |" in line)
    assert "mean of 3 seeds" in lines[0]
    assert "(seeds: stop -4.0 … -2.0, finish -1.0 … +0.0)" in auto_line
    assert "(seeds -48.0 … -48.0)" in local_line  # training alone has no stop of its own
