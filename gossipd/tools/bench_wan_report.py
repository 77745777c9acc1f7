"""The `make bench-wan` report: the side-by-side race on shaped links, from the runs' JSON (docs/bench-wan/).

One table per model (a group of columns per link speed), one verdict line per goal, one plot per model
(accuracy against time, one panel per link speed). A run's JSON is bench-peers' summary
(`bench_peers_report.summarise`) plus `rate` (bits/s of every host's uplink and downlink), `links` (each
host's bytes and mean utilisation) and, for gossipd since 2026-12-05, `together` (its four peers started
training together; a row with a run from before is marked ‡).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

from gossipd.tools.bench_peers_report import EARLY_START_NOTE, LABELS
from gossipd.tools.figures import finish, pyplot
from gossipd.tools.netlab_topology import format_rate

DEFAULT = "gossipd-auto-paced"  # the task file's default exchange, step-paced as every gossipd row here
GOSSIPD = (DEFAULT, "gossipd-plain-paced", "gossipd-powergossip-f16-paced", "gossipd-powergossip-2it-f16-paced")
# Each rival at both its settings of `make bench-peers` (bench_peers_report.RIVAL_FAMILIES): the verdict judges
# gossipd against whichever reached 98% soonest on that model and link speed.
RIVALS = ("hivemind", "hivemind-tb2048", "flower", "flower-quarter")
# Goal: gossipd's default (its best setting where the default did not run) reaches 98% (mean peer) in at most
# this share of the faster rival's time.
TIME_GOALS = {10_000_000: 0.5, 100_000_000: 0.7}
MAX_PLOT_LINES = 8  # gossipd's four settings and the rivals' four


def label(system: str) -> str:
    return str(LABELS.get(system, system))


def _seconds(result: dict[str, Any], key: str) -> float | None:
    hit = result["reached"].get(key)
    return None if hit is None else float(hit["seconds"])


def report_order(system: str) -> tuple[int, str]:
    """gossipd's systems, then the rivals, in the report's order; any other (an experiment's, run with --out
    elsewhere) after them, by name."""
    order = [*GOSSIPD, *RIVALS]
    return (order.index(system) if system in order else len(order), system)


def _median(values: Sequence[float | None]) -> float | None:
    """The median, a run that never reached the target counting as slower than any that did (None: most missed)."""
    missed = sum(v is None for v in values)
    if not values or missed * 2 > len(values):
        return None
    return median(float("inf") if v is None else v for v in values)


def rows(results: list[dict[str, Any]], model: str, rate: int) -> list[dict[str, Any]]:
    """Per system (in report order), the medians over its runs on this model and link speed."""
    found = []
    systems = sorted({r["system"] for r in results if r["model"] == model and r["rate"] == rate}, key=report_order)
    for system in systems:
        runs = [r for r in results if r["system"] == system and r["model"] == model and r["rate"] == rate]
        busiest = [max(max(link["up_use"] or 0.0, link["down_use"] or 0.0) for link in r["links"]) for r in runs]
        found.append(
            {
                "system": system,
                "runs": len(runs),
                "mean_97": _median([_seconds(r, "mean_97") for r in runs]),
                "mean_98": _median([_seconds(r, "mean_98") for r in runs]),
                "worst_98": _median([_seconds(r, "worst_98") for r in runs]),
                "megabytes": median(r["total_bytes"] / 1e6 for r in runs),
                "busiest_link": median(busiest),
                "final": median(r["final_accuracy"] or 0.0 for r in runs),
                # Runs of bench-peers' runner from before it started gossipd's four peers together.
                "early": system.startswith("gossipd-") and not all(r.get("together") for r in runs),
            }
        )
    return found


def _cell(value: float | None, pattern: str = "{:.0f}") -> str:
    return "not reached" if value is None or value == float("inf") else pattern.format(value)


def table(by_rate: dict[int, list[dict[str, Any]]]) -> list[str]:
    """One row per system, a group of columns per link speed: seconds to 98% (mean peer, and the worst
    peer's), bytes on the wire and the busiest link, final accuracy."""
    rates = sorted(by_rate)
    head = ["system", "runs"]
    for rate in rates:
        speed = format_rate(rate)
        head += [f"{speed}: s to 98% (worst peer)", f"{speed}: MB, busiest link", f"{speed}: accuracy %"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    systems = sorted({row["system"] for found in by_rate.values() for row in found}, key=report_order)
    for system in systems:
        early = any(row["early"] for found in by_rate.values() for row in found if row["system"] == system)
        cells = [label(system) + (" ‡" if early else "")]
        runs = []
        for rate in rates:
            row = next((r for r in by_rate[rate] if r["system"] == system), None)
            if row is None:
                cells += ["—", "—", "—"]
                continue
            runs.append(str(row["runs"]))
            cells += [
                _cell(row["mean_98"])
                if row["mean_98"] is None
                else f"{_cell(row['mean_98'])} ({_cell(row['worst_98'])})",
                f"{row['megabytes']:,.1f}, {row['busiest_link']:.0%}",
                f"{row['final'] * 100:.2f}",
            ]
        cells.insert(1, "/".join(runs))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdict(found: list[dict[str, Any]], rate: int) -> str:
    goal = TIME_GOALS.get(rate)
    name = f"Time to 98% at {format_rate(rate)} (goal ≤ {goal}× the faster of hivemind and Flower)"
    ours = [r for r in found if r["system"] in GOSSIPD and r["mean_98"] is not None]
    theirs = [r for r in found if r["system"] in RIVALS and r["mean_98"] is not None]
    if goal is None:
        return f"- {name}: no goal set for this speed."
    if not ours:
        return f"- {name}: **not met**, no gossipd setting reached 98%."
    ran_default = [r for r in found if r["system"] == DEFAULT]
    if ran_default and not any(r["system"] == DEFAULT for r in ours):
        return f"- {name}: **not met**, gossipd's default did not reach 98%."
    best = next((r for r in ours if r["system"] == DEFAULT), None) or min(ours, key=lambda r: r["mean_98"])
    if not theirs:
        ran = [r["system"] for r in found if r["system"] in RIVALS]
        why = "neither rival reached 98%" if ran else "no rival run recorded"
        return f"- {name}: {label(best['system'])} {best['mean_98']:.0f} s; {why}: **not judged**."
    rival = min(theirs, key=lambda r: r["mean_98"])
    ratio = best["mean_98"] / rival["mean_98"]
    met = "met" if ratio <= goal else "not met"
    return (
        f"- {name}: {label(best['system'])} {best['mean_98']:.0f} s against {label(rival['system'])} "
        f"{rival['mean_98']:.0f} s: **{ratio:.2f}×, {met}**."
    )


def report(results: list[dict[str, Any]], plots: dict[str, str]) -> str:
    lines: list[str] = []
    early = False  # a gossipd row holds a run from before its peers started together (marked ‡)
    for model in dict.fromkeys(r["model"] for r in results):
        by_rate = {
            rate: rows(results, model, rate) for rate in sorted({r["rate"] for r in results if r["model"] == model})
        }
        speeds = " and ".join(format_rate(rate) for rate in by_rate)
        lines += ["", f"### {model}, every link {speeds} up and down", "", *table(by_rate), ""]
        lines += [verdict(found, rate) for rate, found in by_rate.items()]
        if model in plots:
            lines += ["", f"![accuracy against time on shaped links, {model}]({plots[model]})"]
        early = early or any(row["early"] for found in by_rate.values() for row in found)
    if early:  # once for the section, under the last table
        lines += ["", EARLY_START_NOTE]
    return "\n".join(lines).strip() + "\n"


def plot(results: list[dict[str, Any]], model: str, path: Path) -> None:
    """Accuracy (mean peer) against time, one panel per link speed, the first run of each system."""
    plt = pyplot()
    rates = sorted({r["rate"] for r in results if r["model"] == model})
    figure, axes = plt.subplots(1, len(rates), figsize=(6 * len(rates), 4.5), squeeze=False)
    for axis, rate in zip(axes[0], rates, strict=True):
        drawn = 0
        for system in [*GOSSIPD, *RIVALS]:
            runs = sorted(
                (r for r in results if r["system"] == system and r["model"] == model and r["rate"] == rate),
                key=lambda r: r["repeat"],
            )
            if not runs or drawn >= MAX_PLOT_LINES:
                continue
            curve = runs[0]["curve"]
            axis.plot([c[0] for c in curve], [c[1] * 100 for c in curve], label=label(system))
            drawn += 1
        axis.axhline(98, color="grey", linewidth=0.5, linestyle="--")
        axis.set(title=f"{format_rate(rate)} links", xlabel="wall time (s)", ylabel="test accuracy, mean peer (%)")
        axis.set_ylim(90, 100)
        axis.grid(alpha=0.3)
    finish(
        figure, path, title=f"MNIST, {model}, 4 peers on shaped links (first run of each system)",
        legend_axis=axes[0][0], ncol=3,
    )  # fmt: skip
