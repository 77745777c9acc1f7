"""What `make bench-peers` reports is computed, not typed in: the figures follow from synthetic runs here, and
BENCHMARKS.md's section and docs/bench-peers/HISTORY.md follow from the runs recorded in docs/bench-peers/."""

import json
import math
from pathlib import Path
from typing import Any

import pytest

from gossipd.tools.bench_peers_report import (
    CURRENT,
    GOALS,
    LABELS,
    MAX_PLOT_LINES,
    aggregate,
    best_rivals,
    bytes_at,
    goals,
    history_report,
    is_current,
    plot,
    plotted,
    report,
    split_history,
    summarise,
    swarm_curve,
    table,
    verdicts,
)

REPO = Path(__file__).resolve().parents[1]
RECORDED = REPO / "docs" / "bench-peers"


def run(system: str, repeat: int = 0) -> dict[str, Any]:
    return {"system": system, "model": "cnn", "split": "iid", "repeat": repeat, "steps": 100}


def points(accuracies: dict[int, list[tuple[float, int, float]]]) -> list[dict[str, Any]]:
    """{peer: [(seconds, samples, accuracy)]} → snapshot points."""
    return [
        {"peer": peer, "seconds": seconds, "samples": samples, "accuracy": accuracy}
        for peer, series in accuracies.items()
        for seconds, samples, accuracy in series
    ]


BYTES = [[0.0, 0], [1.0, 1000], [2.0, 5000], [3.0, 9000], [4.0, 20000]]


def test_bytes_at_takes_the_last_sample_not_after() -> None:
    assert bytes_at(BYTES, 2.5) == 5000
    assert bytes_at(BYTES, 0.5) == 0
    assert bytes_at(BYTES, 10) == 20000


def test_targets_wait_for_every_peer_and_worst_lags_mean() -> None:
    summary = summarise(
        run("gossipd-plain"),
        points(
            {
                0: [(0.5, 0, 0.1), (1.5, 1600, 0.975), (3.5, 3200, 0.985)],
                1: [(0.6, 0, 0.1), (2.2, 1600, 0.979), (3.2, 3200, 0.981)],
            }
        ),
        BYTES,
        [{"max_rss_mb": 300.0}, {"max_rss_mb": 310.0}],
    )
    reached = summary["reached"]
    # mean first ≥ 0.97 when peer 1's 0.979 lands at 2.2 s (peer 0 already 0.975)
    assert reached["mean_97"] == {"seconds": 2.2, "bytes": 5000}
    assert reached["worst_97"]["seconds"] == 2.2
    # mean (0.975+0.981)/2 < 0.98 at 3.2 s; reaches it at 3.5 s with (0.985+0.981)/2
    assert reached["mean_98"] == {"seconds": 3.5, "bytes": 9000}
    assert reached["worst_98"]["seconds"] == 3.5
    assert summary["final_accuracy"] == pytest.approx((0.985 + 0.981) / 2)
    assert summary["final_worst"] == pytest.approx(0.981)
    assert summary["peak_rss_mb"] == 310.0
    assert summary["total_bytes"] == 20000


def test_steps_to_98_are_the_mean_peers_local_steps_when_the_mean_peer_first_reaches_it() -> None:
    series: dict[int, list[tuple[float, int, float]]] = {
        0: [(1.0, 0, 0.1), (2.0, 1600, 0.975), (4.0, 4800, 0.985)],
        1: [(1.5, 0, 0.1), (3.0, 3200, 0.981)],
    }
    curve, steps = swarm_curve(points(series), BYTES)
    # From 1.5 s, when both peers have a snapshot: each peer's newest samples / 32, averaged.
    assert [c[0] for c in curve] == [1.5, 2.0, 3.0, 4.0]
    assert steps == [0.0, 25.0, 75.0, 125.0]
    summary = summarise(run("hivemind"), points(series), BYTES, [])
    # At 3 s the mean is (0.975 + 0.981) / 2 < 0.98; at 4 s peer 0 is at 150 steps and peer 1 at 100.
    assert summary["reached"]["mean_98"]["seconds"] == 4.0
    assert summary["steps_98"] == 125.0
    short = summarise(run("hivemind"), points({0: [(1.0, 3200, 0.975)], 1: [(1.0, 3200, 0.995)]}), BYTES, [])
    assert short["steps_98"] == 100.0  # the mean, not the worst, peer
    never = summarise(run("hivemind"), points({0: [(1.0, 3200, 0.97)], 1: [(1.0, 3200, 0.979)]}), BYTES, [])
    assert never["steps_98"] is None


def test_final_accuracy_ignores_snapshots_past_the_sample_budget() -> None:
    summary = summarise(run("alone"), points({0: [(1, 3200, 0.9), (2, 6400, 0.99)]}), BYTES, [])
    assert summary["final_accuracy"] == pytest.approx(0.9)  # budget is 100 steps × 32 samples
    assert summary["reached"]["mean_98"]["seconds"] == 2


def test_a_finished_peer_is_scored_on_its_last_snapshot_at_the_budget_and_the_first_is_kept_apart() -> None:
    # Peer 0 stopped at the budget (3,200 samples) at 2 s and finished at 3 s; peer 1 has one snapshot there.
    series: dict[int, list[tuple[float, int, float]]] = {
        0: [(1, 1600, 0.9), (2, 3200, 0.95), (3, 3200, 0.99)],
        1: [(1, 1600, 0.9), (2.5, 3200, 0.97)],
    }
    summary = summarise(run("gossipd-plain"), points(series), BYTES, [])
    assert summary["final_accuracy"] == pytest.approx((0.99 + 0.97) / 2)
    assert summary["stopped_accuracy"] == pytest.approx((0.95 + 0.97) / 2)


def test_median_counts_a_repeat_that_never_arrived_as_infinitely_slow() -> None:
    def result(seconds: float | None, repeat: int) -> dict[str, Any]:
        hit = None if seconds is None else {"seconds": seconds, "bytes": 10 * seconds}
        reached = {key: hit for key in ("mean_97", "worst_97", "mean_98", "worst_98")}
        base = {"final_accuracy": 0.98, "final_worst": 0.97, "total_bytes": 5, "peak_rss_mb": 1.0}
        return {**run("hivemind", repeat), **base, "reached": reached, "curve": []}

    (row,) = aggregate([result(30, 0), result(None, 1), result(10, 2)])
    assert row.seconds["mean_98"] == 30 and row.bytes["mean_98"] == 300
    (row,) = aggregate([result(None, 0), result(None, 1), result(10, 2)])
    assert math.isinf(row.seconds["mean_98"])


def test_steps_to_98_are_the_median_over_repeats_and_absent_from_rows_of_older_runs() -> None:
    def result(steps: float | None, repeat: int) -> dict[str, Any]:
        return {**synthetic("hivemind", 30, 1e6, 0.985), "repeat": repeat, "steps_98": steps}

    (row,) = aggregate([result(125.0, 0), result(None, 1), result(90.0, 2)])
    assert row.steps_98 == 125.0  # the repeat that never reached 98% counts as infinitely many steps
    (row,) = aggregate([result(None, 0), result(None, 1), result(90.0, 2)])
    assert row.steps_98 is not None and math.isinf(row.steps_98)
    assert "| 30 | 30 | 30 | not reached | 1.00 |" in table([row])[2]
    # Older runs did not record the figure: nothing recomputed, the row shows a dash, even beside a newer run.
    older = synthetic("hivemind", 30, 1e6, 0.985)
    (row,) = aggregate([older, result(90.0, 1)])
    assert row.steps_98 is None
    lines = table([row, *aggregate([{**result(1407.4, 0), "system": "flower"}])])
    assert "| s to 98% (worst peer) | local steps to 98% | MB to 98% |" in lines[0]
    assert "| 30 | 30 | 30 | — | 1.00 |" in lines[2]
    assert "| 30 | 30 | 30 | 1,407 | 1.00 |" in lines[3]


def synthetic(system: str, seconds: float | None, sent: float, final: float) -> dict[str, Any]:
    hit = None if seconds is None else {"seconds": seconds, "bytes": sent}
    reached = {key: hit for key in ("mean_97", "worst_97", "mean_98", "worst_98")}
    return {
        **run(system),
        "reached": reached,
        "final_accuracy": final,
        "final_worst": final - 0.001,
        "total_bytes": sent * 2,
        "peak_rss_mb": 400.0,
        "curve": [(1.0, 0.5, 0.4, 0.0), (seconds or 50.0, final, final - 0.001, sent)],
    }


def test_history_goal_verdicts_follow_the_figures() -> None:
    rows = aggregate(
        [
            synthetic("gossipd-plain", 40, 500e6, 0.985),
            synthetic("gossipd-powergossip", 60, 5e6, 0.983),
            synthetic("hivemind", 100, 50e6, 0.982),
            synthetic("flower", 80, 400e6, 0.984),
        ]
    )
    lines = goals(rows)
    assert "0.50×" in lines[0] and "met)" in lines[0]  # 40 s against Flower's 80 s
    assert "100.0× fewer" in lines[1] and "met)" in lines[1]
    # Flower is judged by its network share: a third of its loopback bytes.
    assert "about 133 MB of it over the network" in lines[2] and "26.7× fewer" in lines[2]
    assert "**0.20 points behind**" in lines[3] and "(goal ≤ 0.3 behind, met)" in lines[3]

    rows = aggregate(
        [
            synthetic("gossipd-plain", None, 500e6, 0.975),
            synthetic("gossipd-powergossip", 200, 50e6, 0.97),
            synthetic("flower", 100, 30e6, 0.984),
        ]
    )
    lines = goals(rows)
    assert "2.00×" in lines[0] and "not met" in lines[0]
    assert "plain gossip did not reach 98%" in lines[1] and "not comparable" in lines[1]
    assert "5.0× more" in lines[2] and "not met" in lines[2]
    assert "not met" in lines[3]


def test_a_powergossip_row_is_judged_only_against_plain_gossip_from_the_same_era() -> None:
    old_plain = synthetic("gossipd-plain", 40, 500e6, 0.985)
    new_power = {**synthetic("gossipd-powergossip", 60, 5e6, 0.983), "finish": True}
    lines = goals(aggregate([old_plain, new_power, synthetic("flower", 80, 400e6, 0.984)]))
    assert len(lines) == 1 and lines[0].startswith("- Time to 98%")  # no verdict across the † line
    lines = goals(aggregate([{**old_plain, "finish": True}, new_power]))
    assert "100.0× fewer" in lines[0] and "**0.20 points behind**" in lines[1]


def test_a_step_paced_powergossip_is_judged_against_step_paced_plain_gossip() -> None:
    rows = aggregate(
        [
            synthetic("gossipd-plain", 40, 500e6, 0.985),
            synthetic("gossipd-plain-paced", 20, 800e6, 0.981),
            synthetic("gossipd-powergossip-paced", 50, 40e6, 0.979),
            synthetic("flower", 80, 400e6, 0.984),
        ]
    )
    lines = goals(rows)
    assert "best gossipd (gossipd, plain gossip, step-paced) 20 s" in lines[0]
    assert "against gossipd, plain gossip, step-paced 800 MB: **20.0× fewer**" in lines[1]
    assert "against plain gossip, step-paced 98.10%: **0.20 points behind**" in lines[3]


def test_when_nobody_reaches_98_the_time_line_compares_97_instead() -> None:
    def only_97(system: str, seconds: float) -> dict[str, Any]:
        result = synthetic(system, seconds, 1e6, 0.975)
        result["reached"] = {**result["reached"], "mean_98": None, "worst_98": None}
        return result

    lines = goals(aggregate([only_97("gossipd-plain", 16), only_97("gossipd-choco", 15), only_97("flower", 60)]))
    assert "goal not judged" in lines[0]
    assert (
        "(gossipd, Choco sign, one scale per tensor) 15 s against "
        "Flower FedAvg (deployment runtime, one epoch per round) 60 s: **0.25×**" in lines[0]
    )


def test_report_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = [synthetic("gossipd-plain", 40, 500e6, 0.985), synthetic("ddp", 20, 0.0, 0.99)]
    text = report(results, header=["head"], plots={("cnn", "iid"): "docs/x.png"})
    assert text.startswith("head\n")
    assert "### CNN, iid split (one run each)" in text
    # A gossipd run from before the training budget is marked, and the mark explained.
    assert "| gossipd, plain gossip † | 1 | 40 | 40 | 40 | — | 500 | 98.50 / 98.40 | 1,000 | 400 |" in text
    assert "| torch DDP all-reduce (gloo) | 1 |" in text and text.count("†") == 2
    finished = report([{**results[0], "finish": True, "together": True}, results[1]], header=["head"], plots={})
    assert "| gossipd, plain gossip | 1 |" in finished and "†" not in finished and "‡" not in finished
    # A finished run whose peer 0 started early is marked too, and kept apart from one started together.
    early = report(
        [{**results[0], "finish": True}, {**results[0], "finish": True, "together": True}, results[1]],
        header=["head"],
        plots={},
    )
    assert "| gossipd, plain gossip ‡ | 1 |" in early and "| gossipd, plain gossip | 1 |" in early
    assert early.count("‡") == 2  # the row and the note
    assert "![accuracy against time and bytes, cnn, iid](docs/x.png)" in text
    plot(results, "cnn", "iid", tmp_path / "p.png")
    repeated = [*results, {**results[0], "repeat": 1}, {**results[0], "repeat": 2}]
    mixed = report(repeated, header=["head"], plots={})
    assert "### CNN, iid split (each figure the median of the runs counted in its row)" in mixed
    assert "| gossipd, plain gossip † | 3 |" in mixed and "| torch DDP all-reduce (gloo) | 1 |" in mixed
    same = report([*repeated, {**results[1], "repeat": 1}, {**results[1], "repeat": 2}], header=["h"], plots={})
    assert "### CNN, iid split (median of 3 runs each)" in same
    assert (tmp_path / "p.png").stat().st_size > 1000


# -- what BENCHMARKS.md keeps: the current runs, one verdict line per goal, plots of at most 7 lines ----------


def test_current_runs_are_rivals_references_and_the_current_gossipd_settings_run_by_the_current_code() -> None:
    finished = {"finish": True, "together": True}
    current = [
        run("hivemind"),
        run("flower"),
        run("ddp"),
        run("centralised"),
        run("alone"),
        {**run("gossipd-plain-paced"), **finished},
        {**run("gossipd-powergossip-f16-paced"), **finished},
        {**run("gossipd-powergossip-2it-f16-paced"), **finished},
    ]
    history = [
        run("gossipd-plain-paced"),  # † from before the training budget: it never finished
        run("gossipd-powergossip-f16-paced"),
        {**run("gossipd-plain"), **finished},  # time-paced: a superseded setting, finished or not
        {**run("gossipd-powergossip-paced"), **finished},  # float32
        {**run("gossipd-choco-paced"), **finished},
        {**run("gossipd-powergossip-r2"), **finished},
        {**run("gossipd-powergossip-f16-paced"), **finished, "gossip_extra": "rank = 2"},  # an experiment
        {**run("gossipd-auto-paced"), "finish": True},  # ‡ peer 0 started early (before 2026-12-05)
        {**run("gossipd-auto-paced"), **finished, "superseded": "rerun on one machine"},  # replaced by a rerun
        {**run("hivemind"), "superseded": "rerun on one machine"},
    ]
    assert all(is_current(r) for r in current)
    assert not any(is_current(r) for r in history)
    assert split_history([*history, *current]) == (current, history)


def test_the_recorded_runs_lie_where_the_rule_puts_them() -> None:
    """docs/bench-peers/ holds the current runs, docs/bench-peers/history/ the others."""
    here = [json.loads(path.read_text()) for path in sorted(RECORDED.glob("*.json"))]
    older = [json.loads(path.read_text()) for path in sorted((RECORDED / "history").glob("*.json"))]
    assert here and older
    assert [r["run"] for r in here if not is_current(r)] == []
    assert [r["run"] for r in older if is_current(r)] == []


def _published() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    paths = sorted(RECORDED.glob("*.json")) + sorted((RECORDED / "history").glob("*.json"))
    everything = [json.loads(path.read_text()) for path in paths]
    return split_history(everything)[0], everything


def _section(path: Path, name: str) -> str:
    return path.read_text().split(f"<!-- {name}:begin -->")[1].split(f"<!-- {name}:end -->")[0]


def test_benchmarks_md_and_its_history_are_what_the_report_makes_of_the_recorded_runs() -> None:
    current, everything = _published()
    plots = {
        (r["model"], r["split"]): f"docs/bench-peers-{r['model']}-{r['split'].replace(':', '')}.png" for r in current
    }
    body = report(current, header=[], plots=plots).strip()
    section = _section(REPO / "BENCHMARKS.md", "bench-peers")
    assert body in section  # after the header the script writes
    assert "†" not in section and "gossipd, Choco sign" not in section
    history = history_report(everything, header=[]).strip()
    assert history in _section(RECORDED / "HISTORY.md", "bench-peers-history")
    assert "gossipd, plain gossip †" in history and "gossipd, Choco sign, one scale per tensor, step-paced" in history


def test_each_published_workload_has_one_verdict_line_per_goal() -> None:
    current, _ = _published()
    rows = aggregate(current)
    workloads = {(r.model, r.split) for r in rows}
    assert len(workloads) == 6  # CNN, MLP and the 1.2M CNN, each IID and Dirichlet 0.5
    for model, split in workloads:
        lines = verdicts([r for r in rows if (r.model, r.split) == (model, split)])
        assert [line.split(":")[0] for line in lines] == [f"- {goal}" for goal in GOALS]


def test_one_verdict_line_per_goal_with_the_ratio_and_whether_it_is_met() -> None:
    finished = {"finish": True, "together": True}
    runs = [
        {**synthetic("gossipd-plain-paced", 40, 500e6, 0.985), **finished},
        {**synthetic("gossipd-powergossip-f16-paced", 60, 5e6, 0.983), **finished},
        {**synthetic("gossipd-powergossip-2it-f16-paced", 50, 9e6, 0.984), **finished},
        {**synthetic("gossipd-auto-paced", 45, 90e6, 0.983), **finished},
        synthetic("hivemind", 100, 50e6, 0.982),
        synthetic("flower", 80, 400e6, 0.984),
        synthetic("ddp", 20, 900e6, 0.99),
    ]
    lines = verdicts(aggregate(runs))
    assert len(lines) == len(GOALS) == 5
    # The time goal is the default's, though plain gossip was faster here; without an auto row, the fastest.
    assert lines[0].startswith(f"- {GOALS[0]}: auto 45 s against Flower 80 s: **0.56×, met**")
    assert "5.00 MB against plain gossip's 500 MB: **100.0× fewer, met**" in lines[1]
    assert "about 133 MB over the network: **26.7× fewer, not met**" in lines[2]  # Flower's network share
    assert "98.30% against plain gossip's 98.50%: **0.20 points behind, met**" in lines[3]
    # The default against the tighter bar: 0.20 behind meets it, as shown, whatever the float says.
    assert lines[4].startswith(f"- {GOALS[4]}: auto 98.30% against plain gossip's 98.50%: **0.20 points behind, met**")

    slow = [
        {**synthetic("gossipd-plain-paced", 90, 100e6, 0.985), **finished},
        {**synthetic("gossipd-powergossip-f16-paced", 100, 20e6, 0.98), **finished},
        synthetic("flower", 100, 30e6, 0.984),
    ]
    lines = verdicts(aggregate(slow))
    assert len(lines) == 5
    assert "**0.90×, not met**" in lines[0]
    assert "**5.0× fewer, not met**" in lines[1] and "**2.0× more, not met**" in lines[2]
    assert "**0.50 points behind, not met**" in lines[3]
    assert lines[4] == f"- {GOALS[4]}: not judged, no current auto run on this workload."
    behind = [*slow, {**synthetic("gossipd-auto-paced", 95, 60e6, 0.9825), **finished}]
    lines = verdicts(aggregate(behind))
    assert "auto 98.25% against plain gossip's 98.50%: **0.25 points behind, not met**" in lines[4]


def test_verdicts_where_a_side_never_reached_98_name_who_did_instead_of_empty_figures() -> None:
    finished = {"finish": True, "together": True}
    # The MLP's IID split: plain gossip and auto reach 98%, PowerGossip and every rival do not.
    runs = [
        {**synthetic("gossipd-plain-paced", 27, 3.5e9, 0.9815), **finished},
        {**synthetic("gossipd-powergossip-f16-paced", None, 16e6, 0.974), **finished},
        {**synthetic("gossipd-auto-paced", 27, 5e8, 0.9797), **finished},
        synthetic("hivemind", None, 2.7e9, 0.958),
        synthetic("flower", None, 1.4e8, 0.9758),
    ]
    lines = verdicts(aggregate(runs))
    assert lines[0] == f"- {GOALS[0]}: auto 27 s; no rival reached 98%: **met**."
    assert lines[1] == f"- {GOALS[1]}: PowerGossip r1 float16 did not reach 98%, plain gossip did: **not met**."
    assert lines[2] == f"- {GOALS[2]}: PowerGossip r1 float16 did not reach 98%, nor did Flower: **not judged**."
    assert not any("— MB" in line for line in lines)
    # PowerGossip at 98% where plain gossip never got there.
    plain_short = [{**runs[0], "reached": {key: None for key in runs[0]["reached"]}}, *runs[1:]]
    plain_short[1] = {**synthetic("gossipd-powergossip-f16-paced", 40, 16e6, 0.981), **finished}
    lines = verdicts(aggregate(plain_short))
    assert lines[1] == f"- {GOALS[1]}: PowerGossip r1 float16 16 MB; plain gossip did not reach 98%: **not judged**."
    assert lines[2] == f"- {GOALS[2]}: PowerGossip r1 float16 16 MB; Flower did not reach 98%: **not judged**."
    # gossipd short of 98% where a rival reached it.
    late = [{**synthetic("gossipd-auto-paced", None, 5e8, 0.979), **finished}, synthetic("flower", 80, 4e8, 0.984)]
    assert verdicts(aggregate(late))[0] == f"- {GOALS[0]}: gossipd did not reach 98%, Flower did in 80 s: **not met**."


def test_a_workload_without_current_gossipd_runs_still_gets_one_line_per_goal() -> None:
    # An MLP-like workload: the gossipd runs are history, and history is not judged in BENCHMARKS.md.
    lines = verdicts(aggregate([synthetic("flower", 80, 400e6, 0.97), synthetic("ddp", 20, 9e9, 0.978)]))
    assert [line.split(":")[0] for line in lines] == [f"- {goal}" for goal in GOALS]
    assert all("not judged, no current gossipd run" in line for line in lines)
    # More gossipd rows than the judged ones (history mixed in by mistake) still give one line per goal.
    extra = [synthetic(name, 30, 10e6, 0.98) for name in LABELS]
    assert len(verdicts(aggregate(extra))) == len(GOALS)


def test_a_plot_draws_at_most_seven_lines_in_the_order_of_the_current_list(tmp_path: Path) -> None:
    everything = [synthetic(name, 30, 10e6, 0.98) for name in LABELS]  # all 19 systems ever run
    assert len(everything) > MAX_PLOT_LINES == 7
    chosen = [r["system"] for r in plotted(everything, "cnn", "iid")]
    assert len(chosen) == MAX_PLOT_LINES
    # Of each rival only its best setting: on a tie, the first of its family.
    eligible = [name for name in CURRENT if name not in ("alone", "hivemind-tb2048", "flower-quarter")]
    assert chosen == eligible[:MAX_PLOT_LINES]
    assert plotted(everything, "mlp", "iid") == []
    # One peer alone stays under the axes: never drawn, even with room to spare.
    few = [synthetic("alone", 30, 0.0, 0.9), synthetic("ddp", 20, 9e9, 0.99)]
    assert [r["system"] for r in plotted(few, "cnn", "iid")] == ["ddp"]
    # Only the first repeat is drawn.
    repeated = [*everything[:3], *({**r, "repeat": 1} for r in everything[:3])]
    assert len(plotted(repeated, "cnn", "iid")) == 3
    pytest.importorskip("matplotlib")
    labels = plot(everything, "cnn", "iid", tmp_path / "p.png")
    assert len(labels) == MAX_PLOT_LINES and labels[0] == LABELS["gossipd-plain-paced"]
    assert (tmp_path / "p.png").stat().st_size > 1000
    current, _ = _published()
    for model, split in {(r["model"], r["split"]) for r in current}:
        assert 1 <= len(plotted(current, model, split)) <= MAX_PLOT_LINES


# -- rivals at their best: each rival family judged by its setting that reached 98% soonest ----------------------


def test_each_rival_family_is_represented_by_its_setting_that_reached_98_soonest() -> None:
    rows = aggregate(
        [
            synthetic("hivemind", 100, 50e6, 0.982),
            synthetic("hivemind-tb2048", 60, 80e6, 0.985),
            synthetic("flower", 80, 400e6, 0.984),
            synthetic("flower-quarter", None, 900e6, 0.975),  # never reached 98%
        ]
    )
    best = best_rivals(rows)
    assert {family: row.system for family, row in best.items()} == {"hivemind": "hivemind-tb2048", "flower": "flower"}
    assert best_rivals(aggregate([synthetic("flower-quarter", 70, 1e6, 0.98)]))["flower"].system == "flower-quarter"
    assert best_rivals(aggregate([synthetic("ddp", 20, 0.0, 0.99)])) == {}

    # Neither setting reached 98%: the sooner to 97% stands for the family.
    def to_97(system: str, seconds: float) -> dict[str, Any]:
        result = synthetic(system, seconds, 1e6, 0.975)
        result["reached"] = {**result["reached"], "mean_98": None, "worst_98": None}
        return result

    assert best_rivals(aggregate([to_97("hivemind", 50), to_97("hivemind-tb2048", 40)]))["hivemind"].system == (
        "hivemind-tb2048"
    )


def test_the_verdicts_judge_gossipd_against_each_rival_at_its_best_and_name_the_setting() -> None:
    finished = {"finish": True, "together": True}
    gossip = [
        {**synthetic("gossipd-plain-paced", 40, 500e6, 0.985), **finished},
        {**synthetic("gossipd-powergossip-f16-paced", 60, 5e6, 0.983), **finished},
    ]
    rivals = [
        synthetic("hivemind", 100, 50e6, 0.982),
        synthetic("hivemind-tb2048", 50, 80e6, 0.985),
        synthetic("flower", 80, 400e6, 0.984),
        synthetic("flower-quarter", 90, 150e6, 0.984),
    ]
    lines = verdicts(aggregate([*gossip, *rivals]))
    assert len(lines) == len(GOALS)
    # 40 s against hivemind every 16 steps, the faster of both families at their best.
    assert (
        lines[0]
        == f"- {GOALS[0]}: plain gossip 40 s against hivemind at its best (every 16 steps) 50 s: **0.80×, not met**."
    )
    # The bytes goal against Flower: one epoch per round reached 98% sooner (80 s against 90 s), so its bytes.
    assert (
        "5.00 MB against Flower at its best (one epoch per round), 400 MB on loopback, about 133 MB over the "
        "network: **26.7× fewer, not met**" in lines[2]
    )
    # A quarter epoch per round reaching 98% first makes it the yardstick, bytes included.
    quicker = [*rivals[:3], synthetic("flower-quarter", 30, 150e6, 0.984)]
    lines = verdicts(aggregate([*gossip, *quicker]))
    assert lines[0].startswith(f"- {GOALS[0]}: plain gossip 40 s against Flower at its best (¼ epoch per round) 30 s")
    assert "about 50 MB over the network: **10.0× fewer, not met**" in lines[2]
    # A family's only setting keeps its short name.
    lines = verdicts(aggregate([*gossip, rivals[1], rivals[3]]))
    assert "against hivemind (every 16 steps) 50 s" in lines[0]
    assert "against Flower (¼ epoch per round), 150 MB on loopback" in lines[2]


def test_the_history_verdicts_also_take_each_rival_at_its_best() -> None:
    rows = aggregate(
        [
            synthetic("gossipd-plain", 40, 500e6, 0.985),
            synthetic("gossipd-powergossip", 60, 5e6, 0.983),
            synthetic("hivemind", 100, 50e6, 0.982),
            synthetic("hivemind-tb2048", 50, 80e6, 0.985),
            synthetic("flower", 80, 400e6, 0.984),
            synthetic("flower-quarter", 45, 90e6, 0.984),
        ]
    )
    lines = goals(rows)
    assert f"against {LABELS['flower-quarter']} 45 s: **0.89×** (goal ≤ 0.7×, not met)" in lines[0]
    assert f"against {LABELS['flower-quarter']} 90 MB, about 30 MB of it over the network" in lines[2]
    assert "**6.0× fewer** (goal ≥ 50×, not met)" in lines[2]


def test_a_plot_draws_each_rival_at_its_best() -> None:
    runs = [
        synthetic("gossipd-plain-paced", 40, 500e6, 0.985),
        synthetic("hivemind", 100, 50e6, 0.982),
        synthetic("hivemind-tb2048", 50, 80e6, 0.985),
        synthetic("flower", 80, 400e6, 0.984),
        synthetic("flower-quarter", 90, 150e6, 0.984),
        synthetic("ddp", 20, 900e6, 0.99),
        synthetic("centralised", 10, 0.0, 0.99),
    ]
    chosen = [r["system"] for r in plotted(runs, "cnn", "iid")]
    assert chosen == ["gossipd-plain-paced", "hivemind-tb2048", "flower", "ddp", "centralised"]
