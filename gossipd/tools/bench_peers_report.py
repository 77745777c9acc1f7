"""From the evaluated snapshots of `make bench-peers` runs to figures, tables, plots and goal verdicts.

Pure functions over plain data (the plots aside), so what the benchmark reports can be tested without running
it: a run is a list of snapshot points (peer, samples, seconds, accuracy on the 10k test set) plus the
namespace's loopback byte counter sampled every second.

BENCHMARKS.md shows the current runs only (`is_current`): per workload the rivals, the references and the
gossipd settings of `CURRENT_GOSSIPD` as the code stands, one verdict line per goal of `GOALS` and a plot of
at most `MAX_PLOT_LINES` lines. Every run recorded, older settings and runs from older code included, goes to
docs/bench-peers/HISTORY.md (`history_report`), its JSON under docs/bench-peers/history/.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossipd.tools.figures import finish, pyplot

TARGETS = (0.97, 0.98)
STEPS_TARGET = 0.98  # the target whose local step count the tables show ("local steps to 98%")
BATCH = 32  # samples per local step, on every peer of every system
POWERGOSSIP = (
    "gossipd-powergossip",
    "gossipd-powergossip-r2",
    "gossipd-powergossip-2it",
    "gossipd-powergossip-fast",
    "gossipd-powergossip-paced",
    "gossipd-powergossip-2it-paced",
    "gossipd-powergossip-f16-paced",
    "gossipd-powergossip-2it-f16-paced",
)
PACED = "-paced"  # a step-paced variant ([gossip] steps_per_exchange), judged against step-paced plain gossip
# A Flower model crosses loopback three times per direction (ServerApp-SuperLink, SuperLink-SuperNode,
# SuperNode-ClientApp) where a deployment sends it once over the network (measured: 3.5x for one round).
FLOWER_LOOPBACK_COPIES = 3
LABELS = {
    "gossipd-plain": "gossipd, plain gossip",
    "gossipd-powergossip": "gossipd, PowerGossip r1",
    "gossipd-choco": "gossipd, Choco sign, one scale per tensor",
    "gossipd-powergossip-r2": "gossipd, PowerGossip r2",
    "gossipd-powergossip-2it": "gossipd, PowerGossip r1, 2 iterations",
    "gossipd-powergossip-fast": "gossipd, PowerGossip r1, every 0.1 s",
    "gossipd-plain-paced": "gossipd, plain gossip, step-paced",
    "gossipd-powergossip-paced": "gossipd, PowerGossip r1, step-paced",
    "gossipd-powergossip-2it-paced": "gossipd, PowerGossip r1, 2 iterations, step-paced",
    "gossipd-choco-paced": "gossipd, Choco sign, one scale per tensor, step-paced",
    "gossipd-choco-default-paced": "gossipd, Choco sign:64 (its default), step-paced",
    "gossipd-powergossip-f16-paced": "gossipd, PowerGossip r1, float16, step-paced",
    "gossipd-powergossip-2it-f16-paced": "gossipd, PowerGossip r1, 2 iterations, float16, step-paced",
    "gossipd-auto-paced": "gossipd, auto (the default), step-paced",
    "gossipd-auto-clock": "gossipd, auto, paced by the clock (every 0.2 s)",
    "hivemind": "hivemind (Optimizer, local updates, average every 100 steps)",
    "hivemind-tb2048": "hivemind (Optimizer, local updates, average every 16 steps)",
    "flower": "Flower FedAvg (deployment runtime, one epoch per round)",
    "flower-quarter": "Flower FedAvg (deployment runtime, ¼ epoch per round)",
    "ddp": "torch DDP all-reduce (gloo)",
    "alone": "one peer alone on its shard",
    "centralised": "centralised, all data",
}


# The settings each rival was run with. Wherever a verdict compares gossipd with a rival, the family stands on
# each workload for its setting that reached 98% soonest (`best_rivals`): gossipd is judged against every rival
# at its best, not against whichever setting was tuned for another model.
RIVAL_FAMILIES = {"hivemind": ("hivemind", "hivemind-tb2048"), "flower": ("flower", "flower-quarter")}
RIVALS = tuple(name for family in RIVAL_FAMILIES.values() for name in family)
REFERENCES = ("ddp", "centralised", "alone")
# The gossipd settings BENCHMARKS.md shows, measured with the code as it stands (2026-11-30: mix protocol 2.1,
# training budget and finish): step-paced plain gossip, the yardstick of the bytes and accuracy goals;
# PowerGossip rank 1 in float16, the setting those goals are judged on; and rank 1 with two power iterations,
# which trades bytes per exchange for time. Every other setting (time-paced, float32, Choco, rank 2) and every
# run from before the training budget (†) is history.
PLAIN = "gossipd-plain-paced"
JUDGED = "gossipd-powergossip-f16-paced"
# Since 2026-12-03 also `algorithm = "auto"`, the default, which picks each exchange's mode per edge.
DEFAULT = "gossipd-auto-paced"
CURRENT_GOSSIPD = (PLAIN, JUDGED, "gossipd-powergossip-2it-f16-paced", DEFAULT)
CURRENT = (*CURRENT_GOSSIPD, *RIVALS, *REFERENCES)  # also the order of a table's rows
MAX_PLOT_LINES = 7
# Not plotted: one peer alone on its shard stays below the plots' 90-100% axes (on the CNN's IID split it
# diverges to chance); its table row says how far it got.
NOT_PLOTTED = ("alone",)
# The goals of the issue, in the order of their verdict lines: one line per goal and workload.
GOALS = (
    "Time to 98% (goal ≤ 0.7× the faster rival)",
    "Bytes to 98% against plain gossip (goal ≥ 50× fewer)",
    "Bytes to 98% against Flower (goal ≥ 50× fewer)",
    "Final accuracy (goal ≤ 0.3 points behind plain gossip)",
    "Final accuracy of the default (goal ≤ 0.2 points behind plain gossip)",
)
TIME_GOAL, BYTES_GOAL, ACCURACY_GOAL, DEFAULT_ACCURACY_GOAL = 0.7, 50.0, 0.3, 0.2


def is_current(result: dict[str, Any]) -> bool:
    """Whether a recorded run belongs in BENCHMARKS.md: a rival, a reference, or one of the current gossipd
    settings run with the current code (it stopped at its step budget and finished), no experiment's extra
    settings, and not `superseded` (a run replaced by a rerun, kept under history/ with the reason)."""
    if result["system"] not in CURRENT or result.get("gossip_extra") or result.get("superseded"):
        return False
    return not result["system"].startswith("gossipd-") or bool(result.get("finish") and result.get("together"))


def split_history(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(current, history): the runs BENCHMARKS.md shows, and the others."""
    return [r for r in results if is_current(r)], [r for r in results if not is_current(r)]


# The names the verdict lines give the configurations they compare.
SHORT = {
    PLAIN: "plain gossip",
    JUDGED: "PowerGossip r1 float16",
    "gossipd-powergossip-2it-f16-paced": "PowerGossip r1 ×2 it. float16",
    "gossipd-auto-paced": "auto",
    "hivemind": "hivemind",
    "hivemind-tb2048": "hivemind (every 16 steps)",
    "flower": "Flower",
    "flower-quarter": "Flower (¼ epoch per round)",
}
# What tells a rival's settings apart, for the verdicts of a workload that has several of one family.
SETTING = {
    "hivemind": "every 100 steps",
    "hivemind-tb2048": "every 16 steps",
    "flower": "one epoch per round",
    "flower-quarter": "¼ epoch per round",
}


def bytes_at(samples: Sequence[Sequence[float]], seconds: float) -> float:
    """The byte counter's value at `seconds`: its last sample taken no later than that."""
    before = [b for t, b in samples if t <= seconds]
    return before[-1] if before else 0.0


def swarm_curve(
    points: list[dict[str, Any]], byte_samples: Sequence[Sequence[float]]
) -> tuple[list[tuple[float, float, float, float]], list[float]]:
    """The swarm over time: at each snapshot, from the moment every peer has one, (seconds, mean accuracy,
    worst accuracy, bytes sent) of each peer's newest snapshot, and alongside, the mean over peers of the local
    steps those snapshots were taken at."""
    peers = {p["peer"] for p in points}
    latest: dict[int, dict[str, Any]] = {}
    curve: list[tuple[float, float, float, float]] = []  # (seconds, mean, worst, bytes)
    steps: list[float] = []
    for point in sorted(points, key=lambda p: (p["seconds"], p["peer"])):
        latest[point["peer"]] = point
        if len(latest) == len(peers):
            accuracies = [p["accuracy"] for p in latest.values()]
            mean = sum(accuracies) / len(accuracies)
            curve.append((point["seconds"], mean, min(accuracies), bytes_at(byte_samples, point["seconds"])))
            steps.append(sum(p["samples"] for p in latest.values()) / BATCH / len(latest))
    return curve, steps


def summarise(
    run: dict[str, Any],
    points: list[dict[str, Any]],
    byte_samples: Sequence[Sequence[float]],
    rss: list[dict[str, Any]],
) -> dict[str, Any]:
    """One run's figures. The swarm's accuracy at a moment is that of each peer's newest snapshot; the curve
    starts once every peer has one. `run` holds system, model, split, repeat, steps (per peer)."""
    peers = sorted({p["peer"] for p in points})
    curve, steps = swarm_curve(points, byte_samples)
    # Local steps, not seconds: how much training each peer needed, whatever a step cost on this machine.
    steps_98 = next((s for c, s in zip(curve, steps, strict=True) if c[1] >= STEPS_TARGET), None)
    reached: dict[str, dict[str, float] | None] = {}
    for target in TARGETS:
        for which, index in (("mean", 1), ("worst", 2)):
            hit = next((c for c in curve if c[index] >= target), None)
            reached[f"{which}_{round(target * 100)}"] = None if hit is None else {"seconds": hit[0], "bytes": hit[3]}
    # Accuracy after the same training: each peer's last snapshot within the per-peer sample budget. A gossipd
    # peer stops at the budget and then finishes (mixes until it agrees with its neighbours): its last
    # snapshot is the finished model, and the first at that sample count is the model as training stopped.
    budget = run["steps"] * 32
    finals, stopped = [], []
    for peer in peers:
        mine = [p for p in points if p["peer"] == peer and p["samples"] <= budget]
        if mine:
            most = max(p["samples"] for p in mine)
            at_most = sorted((p for p in mine if p["samples"] == most), key=lambda p: p["seconds"])
            finals.append(at_most[-1]["accuracy"])
            stopped.append(at_most[0]["accuracy"])
    return {
        **run,
        "reached": reached,
        "steps_98": steps_98,
        "final_accuracy": sum(finals) / len(finals) if finals else None,
        "final_worst": min(finals) if finals else None,
        "stopped_accuracy": sum(stopped) / len(stopped) if stopped else None,
        "budget_samples": budget,
        "total_bytes": byte_samples[-1][1] if byte_samples else 0,
        # Peers only: a Flower run's ServerApp reports as peer -1.
        "peak_rss_mb": max((r["max_rss_mb"] for r in rss if r.get("peer", 0) >= 0), default=None),
        "curve": curve,
    }


@dataclass(frozen=True)
class Row:
    """Medians over a configuration's repeats. A repeat that never reached a target counts as infinitely
    slow, so the median says "not reached" only when most repeats did not reach it."""

    system: str
    model: str
    split: str
    repeats: int
    seconds: dict[str, float]  # "mean_98" → seconds (inf: not reached)
    steps_98: float | None  # local steps per peer as the mean peer reached 98% (inf: not reached; None: not recorded)
    bytes: dict[str, float]
    final_accuracy: float | None
    final_worst: float | None
    stopped_accuracy: float | None  # gossipd: the mean peer as training stopped, before its finish
    total_bytes: float
    finished: bool  # gossipd: every run stopped at the step budget and finished (False: runs from before that)
    peak_rss_mb: float | None
    # gossipd: the four peers started training together (False: runs from before 2026-12-05, ‡)
    together: bool = True


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.inf


def _median_steps(runs: list[dict[str, Any]]) -> float | None:
    """The median of the runs' `steps_98`, None unless every run recorded it: runs from before the figure was
    kept lack it, and a median over the others would not be the row's."""
    if not all("steps_98" in r for r in runs):
        return None
    return _median([math.inf if r["steps_98"] is None else r["steps_98"] for r in runs])


def aggregate(results: list[dict[str, Any]]) -> list[Row]:
    """One row per configuration and workload; runs that finished, runs from before the training budget (†)
    and runs whose peer 0 started early (‡) of one configuration are kept apart, as rows of their own."""
    groups: dict[tuple[str, str, str, bool, bool], list[dict[str, Any]]] = {}
    for result in results:
        key = (
            result["system"],
            result["model"],
            result["split"],
            bool(result.get("finish", False)),
            _started_together(result),
        )
        groups.setdefault(key, []).append(result)
    rows = []
    for (system, model, split, finished, together), runs in groups.items():
        seconds, sent = {}, {}
        for key in runs[0]["reached"]:
            hits = [r["reached"][key] for r in runs]
            seconds[key] = _median([h["seconds"] if h else math.inf for h in hits])
            sent[key] = _median([h["bytes"] if h else math.inf for h in hits])
        finals = [r["final_accuracy"] for r in runs if r["final_accuracy"] is not None]
        worsts = [r["final_worst"] for r in runs if r["final_worst"] is not None]
        stopped = [r["stopped_accuracy"] for r in runs if r.get("stopped_accuracy") is not None]
        rss = [r["peak_rss_mb"] for r in runs if r["peak_rss_mb"] is not None]
        rows.append(
            Row(
                system=system,
                model=model,
                split=split,
                repeats=len(runs),
                seconds=seconds,
                steps_98=_median_steps(runs),
                bytes=sent,
                final_accuracy=statistics.median(finals) if finals else None,
                final_worst=statistics.median(worsts) if worsts else None,
                stopped_accuracy=statistics.median(stopped) if stopped else None,
                finished=finished,
                together=together,
                total_bytes=statistics.median(r["total_bytes"] for r in runs),
                peak_rss_mb=max(rss) if rss else None,
            )
        )
    return rows


def _seconds(value: float) -> str:
    return "not reached" if math.isinf(value) else f"{value:,.0f}"


def _steps(value: float | None) -> str:
    if value is None:
        return "—"
    return "not reached" if math.isinf(value) else f"{value:,.0f}"


def _megabytes(value: float) -> str:
    if math.isinf(value):
        return "—"
    return f"{value / 1e6:,.2f}" if value < 10e6 else f"{value / 1e6:,.0f}"


def _accuracy(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| system | runs | s to 97% | s to 98% | s to 98% (worst peer) | local steps to 98% | MB to 98% | "
        "accuracy % (mean / worst) after the same samples | MB in all | peak RSS per peer, MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {_label(row)} | {row.repeats} | {_seconds(row.seconds['mean_97'])} | "
            f"{_seconds(row.seconds['mean_98'])} | {_seconds(row.seconds['worst_98'])} | {_steps(row.steps_98)} | "
            f"{_megabytes(row.bytes['mean_98'])} | {_accuracy(row.final_accuracy)} / {_accuracy(row.final_worst)} | "
            f"{_megabytes(row.total_bytes)} | {'—' if row.peak_rss_mb is None else f'{row.peak_rss_mb:,.0f}'} |"
        )
    return lines


def _started_together(result: dict[str, Any]) -> bool:
    """A gossipd run whose four peers started training together (`together`, recorded since 2026-12-05); the
    other systems' peers always did."""
    return not result["system"].startswith("gossipd-") or bool(result.get("together"))


def _label(row: Row) -> str:
    mark = " †" if _unfinished(row) else " ‡" if _early_start(row) else ""
    return LABELS.get(row.system, row.system) + mark


def _unfinished(row: Row) -> bool:
    return row.system.startswith("gossipd-") and not row.finished


def _early_start(row: Row) -> bool:
    return row.system.startswith("gossipd-") and row.finished and not row.together


UNFINISHED_NOTE = (
    "† Runs from before gossipd's training budget (`[train] total_steps`): their peers trained on past 3,000 "
    "steps, were scored on their last snapshot within 96,000 samples, and never finished; every other "
    "gossipd row stops at 3,000 steps and finishes (`[gossip] finish_exchanges` = 50) before its final snapshot."
)
EARLY_START_NOTE = (
    "‡ Runs from before 2026-12-05 whose peer 0, the others' bootstrap, was up seconds before them and trained "
    "alone meanwhile (on the MLP about 2,000 of its 3,000 steps, on the CNNs fewer); every other gossipd row "
    "starts its four peers together, once each sees the other three (`[train] min_peers` = 3)."
)


def best_rivals(rows: list[Row]) -> dict[str, Row]:
    """Each rival family with a row among one workload's `rows` → its setting with the lowest median seconds
    to 98% (mean peer). Ties, none of them reaching 98% among them, go to the sooner to 97%, then to the first
    setting of `RIVAL_FAMILIES`."""
    best = {}
    for family, names in RIVAL_FAMILIES.items():
        settings = [row for name in names for row in rows if row.system == name]
        if settings:
            best[family] = min(settings, key=lambda r: (r.seconds["mean_98"], r.seconds["mean_97"]))
    return best


def _family(system: str) -> str:
    return next(family for family, names in RIVAL_FAMILIES.items() if system in names)


def _rival_name(rival: Row, rows: list[Row]) -> str:
    """A rival as the verdicts name it: by its short name when it is its family's only setting on the
    workload, else by its family at its best and the setting that was."""
    family = _family(rival.system)
    if len({row.system for row in rows if row.system in RIVAL_FAMILIES[family]}) == 1:
        return SHORT[rival.system]
    return f"{SHORT[family]} at its best ({SETTING[rival.system]})"


def _time_to_97(gossip: list[Row], rivals: list[Row]) -> str:
    """The time line when neither side reached 98% within the budget: the goal cannot be judged, so
    compare the time to 97% instead, marked as such."""
    best = min(gossip, key=lambda r: r.seconds["mean_97"])
    rival = min(rivals, key=lambda r: r.seconds["mean_97"])
    mine, theirs = best.seconds["mean_97"], rival.seconds["mean_97"]
    head = "- Time to 98%: neither gossipd nor its rivals reached 98% within the training budget (goal not judged)."
    if math.isinf(mine) and math.isinf(theirs):
        return f"{head} Nor did they reach 97%."
    if math.isinf(mine):
        return f"{head} To 97%: {LABELS[rival.system]} {_seconds(theirs)} s; **gossipd did not reach it**."
    if math.isinf(theirs):
        return (
            f"{head} To 97%: best gossipd ({LABELS[best.system]}) {_seconds(mine)} s; **its rivals did not reach it**."
        )
    return (
        f"{head} To 97%: best gossipd ({LABELS[best.system]}) {_seconds(mine)} s against "
        f"{LABELS[rival.system]} {_seconds(theirs)} s: **{mine / theirs:.2f}×**."
    )


def goals(rows: list[Row]) -> list[str]:
    """The issue's goals, one verdict line each per PowerGossip setting and yardstick, for one (model, split):
    the history's verdicts (see `verdicts` for the current report's). Each rival is its best setting on the
    workload (`best_rivals`)."""
    # A finished row wins over a † one, and one started together over a ‡ one.
    by = {row.system: row for row in sorted(rows, key=lambda r: (r.finished, r.together))}
    lines = []
    gossip = [row for row in rows if row.system.startswith("gossipd-")]
    best_rival = best_rivals(rows)
    rivals = list(best_rival.values())
    if gossip and rivals:
        best = min(gossip, key=lambda r: r.seconds["mean_98"])
        rival = min(rivals, key=lambda r: r.seconds["mean_98"])
        mine, theirs = best.seconds["mean_98"], rival.seconds["mean_98"]
        if math.isinf(mine) and math.isinf(theirs):
            lines.append(_time_to_97(gossip, rivals))
        else:
            if math.isinf(mine):
                shown, verdict = "gossipd did not reach 98%", "not met"
            elif math.isinf(theirs):
                shown, verdict = "neither rival reached 98%", "met"
            else:
                shown, verdict = f"{mine / theirs:.2f}×", "met" if mine / theirs <= 0.7 else "not met"
            lines.append(
                f"- Time to 98%: best gossipd ({LABELS[best.system]}) {_seconds(mine)} s against "
                f"{LABELS[rival.system]} {_seconds(theirs)} s: **{shown}** (goal ≤ 0.7×, {verdict})."
            )
    for power in (by.get(name) for name in POWERGOSSIP):
        if power is None:
            continue
        short = LABELS[power.system].removeprefix("gossipd, ")
        reference = "gossipd-plain-paced" if power.system.endswith(PACED) else "gossipd-plain"
        plain = by.get(reference)
        if plain is not None and (plain.finished, plain.together) != (power.finished, power.together):
            continue  # one side from before the training budget (†) or an early start (‡): not like for like
        flower = best_rival.get("flower")
        for other in (by.get(reference), flower):
            if other is None:
                continue
            name, mine, theirs = other.system, power.bytes["mean_98"], other.bytes["mean_98"]
            # Flower's loopback counter sees each model three times (see FLOWER_LOOPBACK_COPIES): judge
            # against its network share, the figure a real deployment would send.
            share = theirs / FLOWER_LOOPBACK_COPIES if other is flower else theirs
            if math.isinf(mine):
                shown, verdict = f"{short} did not reach 98%", "not met"
            elif math.isinf(theirs):
                shown, verdict = f"{LABELS[name]} did not reach 98%", "not comparable"
            else:
                ratio = share / mine
                shown = f"{ratio:,.1f}× fewer" if ratio >= 1 else f"{1 / ratio:,.1f}× more"
                verdict = "met" if ratio >= 50 else "not met"
            network = f", about {_megabytes(share)} MB of it over the network" if other is flower else ""
            lines.append(
                f"- Bytes to 98%: {short} {_megabytes(power.bytes['mean_98'])} MB against {LABELS[name]} "
                f"{_megabytes(other.bytes['mean_98'])} MB{network}: **{shown}** (goal ≥ 50×, {verdict})."
            )
        if plain is not None and power.final_accuracy is not None and plain.final_accuracy is not None:
            gap = 100 * (plain.final_accuracy - power.final_accuracy)
            verdict = "met" if gap <= 0.3 else "not met"
            where = f"{gap:.2f} points behind" if gap >= 0 else f"{-gap:.2f} points ahead"
            lines.append(
                f"- Final accuracy: {short} {_accuracy(power.final_accuracy)}% against "
                f"{LABELS[reference].removeprefix('gossipd, ')} {_accuracy(plain.final_accuracy)}%: **{where}** "
                f"(goal ≤ 0.3 behind, {verdict}){_before_finish(power, plain)}."
            )
    return lines


def _before_finish(power: Row, plain: Row) -> str:
    """The two figures as training stopped, when the runs finished after it (their final models differ)."""
    if power.stopped_accuracy is None or plain.stopped_accuracy is None:
        return ""
    if power.stopped_accuracy == power.final_accuracy and plain.stopped_accuracy == plain.final_accuracy:
        return ""
    return (
        f"; as training stopped, before the finish: {_accuracy(power.stopped_accuracy)}% against "
        f"{_accuracy(plain.stopped_accuracy)}%"
    )


def _ratio(mine: float, theirs: float) -> str:
    return f"{theirs / mine:,.1f}× fewer" if theirs >= mine else f"{mine / theirs:,.1f}× more"


def verdicts(rows: list[Row]) -> list[str]:
    """One line per goal of `GOALS` for one workload's current rows: the figures, the measured ratio and
    whether the goal is met (or why it is not judged). The bytes and accuracy goals are judged on `JUDGED`
    against `PLAIN` (and Flower), the default's accuracy on `DEFAULT` against `PLAIN`; the time goal on the
    default against the faster rival (the issue's goal is the default's; on a workload without a row of it,
    the fastest current gossipd setting). Each rival is its best setting on the workload (`best_rivals`),
    named when it has several."""
    by = {row.system: row for row in rows}
    gossip = [by[name] for name in CURRENT_GOSSIPD if name in by]
    timed = [by[DEFAULT]] if DEFAULT in by else gossip
    best_rival = best_rivals(rows)
    rivals = list(best_rival.values())
    power, plain, flower = by.get(JUDGED), by.get(PLAIN), best_rival.get("flower")
    lines = []

    def absent(name: str) -> str:
        return f"not judged, no current {'gossipd' if not gossip else name} run on this workload"

    if not gossip or not rivals:
        lines.append(f"{GOALS[0]}: {absent('rival')}.")
    else:
        best = min(timed, key=lambda r: r.seconds["mean_98"])
        rival = min(rivals, key=lambda r: r.seconds["mean_98"])
        mine, theirs = best.seconds["mean_98"], rival.seconds["mean_98"]
        if math.isinf(mine) and math.isinf(theirs):
            best = min(timed, key=lambda r: r.seconds["mean_97"])
            rival = min(rivals, key=lambda r: r.seconds["mean_97"])
            mine, theirs = best.seconds["mean_97"], rival.seconds["mean_97"]
            if math.isinf(mine) or math.isinf(theirs):
                reached = (
                    "neither reached it"
                    if mine == theirs
                    else f"{'gossipd' if math.isinf(mine) else 'its rival'} did not reach it"
                )
            else:
                reached = f"{mine / theirs:.2f}×"
            lines.append(
                f"{GOALS[0]}: not judged, neither side reached 98%; to 97%, {SHORT[best.system]} "
                f"{_seconds(mine)} s against {_rival_name(rival, rows)} {_seconds(theirs)} s: **{reached}**."
            )
        elif math.isinf(theirs):
            lines.append(f"{GOALS[0]}: {SHORT[best.system]} {_seconds(mine)} s; no rival reached 98%: **met**.")
        elif math.isinf(mine):
            lines.append(
                f"{GOALS[0]}: gossipd did not reach 98%, {_rival_name(rival, rows)} did in {_seconds(theirs)} s: "
                "**not met**."
            )
        else:
            ratio = mine / theirs
            lines.append(
                f"{GOALS[0]}: {SHORT[best.system]} {_seconds(mine)} s against {_rival_name(rival, rows)} "
                f"{_seconds(theirs)} s: **{ratio:.2f}×, {'met' if ratio <= TIME_GOAL else 'not met'}**."
            )

    short = SHORT[JUDGED]
    for goal, other, copies in ((GOALS[1], plain, 1), (GOALS[2], flower, FLOWER_LOOPBACK_COPIES)):
        if power is None or other is None:
            lines.append(f"{goal}: {absent(short if power is None else SHORT[PLAIN if copies == 1 else 'flower'])}.")
            continue
        mine, theirs = power.bytes["mean_98"], other.bytes["mean_98"]
        share = theirs / copies  # Flower: its network share, see FLOWER_LOOPBACK_COPIES
        name = SHORT[other.system] if copies == 1 else _rival_name(other, rows)
        if math.isinf(mine):
            # No bytes to compare: say who reached 98%, not "— MB against — MB".
            reached = f"{name} did" if not math.isinf(theirs) else f"nor did {name}"
            verdict = "not met" if not math.isinf(theirs) else "not judged"
            lines.append(f"{goal}: {short} did not reach 98%, {reached}: **{verdict}**.")
            continue
        if math.isinf(theirs):
            lines.append(f"{goal}: {short} {_megabytes(mine)} MB; {name} did not reach 98%: **not judged**.")
            continue
        shown, verdict = _ratio(mine, share), "met" if share / mine >= BYTES_GOAL else "not met"
        if copies == 1:
            against = f"{name}'s {_megabytes(theirs)} MB"
        else:
            loopback = f"{_megabytes(theirs)} MB on loopback, about {_megabytes(share)} MB over the network"
            # A name ending in its setting, "(¼ epoch per round)", takes no possessive.
            against = f"{name}'s {loopback}" if name == SHORT["flower"] else f"{name}, {loopback}"
        lines.append(f"{goal}: {short} {_megabytes(mine)} MB against {against}: **{shown}, {verdict}**.")

    accuracy_goals = ((GOALS[3], JUDGED, ACCURACY_GOAL), (GOALS[4], DEFAULT, DEFAULT_ACCURACY_GOAL))
    for goal, system, limit in accuracy_goals:
        row, name = by.get(system), SHORT[system]
        if row is None or plain is None or row.final_accuracy is None or plain.final_accuracy is None:
            lines.append(f"{goal}: {absent(name if row is None else SHORT[PLAIN])}.")
            continue
        gap = 100 * (plain.final_accuracy - row.final_accuracy)
        where = f"{gap:.2f} points behind" if gap >= 0 else f"{-gap:.2f} points ahead"
        lines.append(
            f"{goal}: {name} {_accuracy(row.final_accuracy)}% against plain gossip's "
            f"{_accuracy(plain.final_accuracy)}%: "
            # Judged as shown: two decimals, so that 0.20 behind meets a 0.2 goal whatever the float says.
            f"**{where}, {'met' if round(gap, 2) <= limit else 'not met'}**{_before_finish(row, plain)}."
        )
    return [f"- {line}" for line in lines]


def plotted(results: list[dict[str, Any]], model: str, split: str) -> list[dict[str, Any]]:
    """The runs a workload's plot draws, one line each: the first repeat of each system with a curve, in the
    order of `CURRENT` (other systems after), never those of `NOT_PLOTTED`, of each rival only its best setting
    (`best_rivals`, the one the verdicts judge against), at most `MAX_PLOT_LINES`."""
    order = {name: index for index, name in enumerate(dict.fromkeys((*CURRENT, *LABELS)))}
    workload = [r for r in results if (r["model"], r["split"]) == (model, split)]
    best = {row.system for row in best_rivals(aggregate(workload)).values()}
    runs = [
        r
        for r in workload
        if r["repeat"] == 0
        and r["curve"]
        and r["system"] not in NOT_PLOTTED
        and (r["system"] not in RIVALS or r["system"] in best)
    ]
    runs.sort(key=lambda r: (order.get(r["system"], len(order)), r["system"]))
    return runs[:MAX_PLOT_LINES]


def plot(results: list[dict[str, Any]], model: str, split: str, path: Path) -> list[str]:
    """Mean peer accuracy against wall time and against bytes sent, for the runs `plotted` picks; the legend
    under the two panels, so that it hides no line. Returns the legend's labels, one per line drawn."""
    plt = pyplot()
    figure, (by_time, by_bytes) = plt.subplots(1, 2, figsize=(12, 4.5))
    palette = plt.get_cmap("tab10")
    smallest = math.inf  # MB: where the bytes panel starts
    for index, result in enumerate(plotted(results, model, split)):
        system = result["system"]
        label = LABELS.get(system, system)
        # One colour per system in both panels, though systems that send nothing are absent from the second;
        # gossipd solid, its rivals dashed, the references dotted.
        colour: Any = "black" if system == "centralised" else palette(index % 10)
        style = "-" if system.startswith("gossipd-") else "--" if system in RIVALS else ":"
        seconds = [c[0] for c in result["curve"]]
        accuracy = [100 * c[1] for c in result["curve"]]
        by_time.plot(seconds, accuracy, label=label, color=colour, linestyle=style, linewidth=1.6)
        sent = [(c[3] / 1e6, 100 * c[1]) for c in result["curve"] if c[3] > 0]
        if sent:
            smallest = min([smallest, *(s for s, a in sent if a >= 90)])  # of what the panel shows
            by_bytes.plot([s for s, _ in sent], [a for _, a in sent], color=colour, linestyle=style, linewidth=1.6)
    for axes in (by_time, by_bytes):
        axes.set_ylim(90, 100)
        axes.axhline(98, color="grey", linewidth=0.6, linestyle="--")
        axes.set_ylabel("test accuracy, mean peer (%)")
        axes.grid(alpha=0.3)
    by_time.set_xlabel("wall time (s)")
    by_bytes.set_xlabel("bytes on the wire, all peers (MB, log scale)")
    by_bytes.set_xscale("log")
    if math.isfinite(smallest):
        by_bytes.set_xlim(left=smallest / 2)
    return finish(
        figure, path, title=f"MNIST, {model.upper()}, {split} split, 4 peers (first run of each system)",
        legend_axis=by_time, ncol=3,
    )  # fmt: skip


def _runs_label(counts: set[int]) -> str:
    if counts == {1}:
        return "one run each"
    if len(counts) == 1:
        return f"median of {counts.pop()} runs each"
    return "each figure the median of the runs counted in its row"


def _workloads(rows: list[Row]) -> list[tuple[str, str]]:
    """(model, split) in reading order: by model, the IID split first."""
    return sorted(dict.fromkeys((r.model, r.split) for r in rows), key=lambda c: (c[0], c[1] != "iid", c[1]))


def report(results: list[dict[str, Any]], *, header: list[str], plots: dict[tuple[str, str], str]) -> str:
    """The BENCHMARKS.md section from the current runs (see `split_history`): the header lines, then per
    (model, split) a table in the order of `CURRENT`, one verdict line per goal and a link to its plot."""
    order = {name: index for index, name in enumerate(CURRENT)}
    rows = sorted(aggregate(results), key=lambda r: (order.get(r.system, len(order)), r.system))
    lines = [*header, ""]
    for model, split in _workloads(rows):
        mine = [r for r in rows if (r.model, r.split) == (model, split)]
        lines += [
            f"### {model.upper()}, {split} split ({_runs_label({r.repeats for r in mine})})",
            "",
            *table(mine),
            "",
            *([UNFINISHED_NOTE, ""] if any(_unfinished(r) for r in mine) else []),
            *([EARLY_START_NOTE, ""] if any(_early_start(r) for r in mine) else []),
            *verdicts(mine),
            "",
        ]
        if (model, split) in plots:
            lines += [f"![accuracy against time and bytes, {model}, {split}]({plots[(model, split)]})", ""]
    return "\n".join(lines)


def history_report(results: list[dict[str, Any]], *, header: list[str]) -> str:
    """docs/bench-peers/HISTORY.md's section from every run recorded: the header lines, then per (model,
    split) a table of every configuration ever run (current ones included) and the verdict lines of
    `goals`, one per PowerGossip setting and yardstick, as the report gave them before it kept to the current
    runs."""
    rows = aggregate(results)
    lines = [*header, ""]
    for model, split in _workloads(rows):
        mine = [r for r in rows if (r.model, r.split) == (model, split)]
        lines += [
            f"### {model.upper()}, {split} split ({_runs_label({r.repeats for r in mine})})",
            "",
            *table(mine),
            "",
            *([UNFINISHED_NOTE, ""] if any(_unfinished(r) for r in mine) else []),
            *([EARLY_START_NOTE, ""] if any(_early_start(r) for r in mine) else []),
            *goals(mine),
            "",
        ]
    return "\n".join(lines)
