"""The `make bench` report: the daemon section of BENCHMARKS.md from one run of scripts/bench.py.

Training speed with the default gossip against a bare torch loop (goal ≥ `SPEED_GOAL`), what mixing cost
while measured, the 10 MB frame against raw TCP (goal ≥ 0.5), and time and bytes to accuracy; one verdict
line per goal, and a plot of the 4-daemon race (`plot`).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from gossipd.tools.figures import finish, pyplot

SPEED_GOAL = 0.9


def report(
    results: dict[str, Any],
    *,
    elapsed: float,
    when: datetime.date,
    machine: str,
    cores: int,
    figure: str | None = None,
) -> str:
    """The section's text from one run's results (scripts/bench.py writes them to out/bench.json); `figure`:
    the race's plot, relative to the repository, linked under its table."""
    speed, flow, runs = results["speed"], results["throughput"], results["accuracy"]
    lines = [
        f"Measured {when.isoformat()} on {machine}; `make bench` ({elapsed / 60:.0f} min).",
        "",
        "| measure | gossipd | yardstick | ratio | goal |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, measured in speed.items():
        for kind in ("cpu", "cuda"):
            pair = measured if kind == "cpu" else measured.get("cuda")
            if pair is None:
                continue
            daemon, bare = pair["daemon"]["samples_per_second"], pair["bare"]
            where = "CPU, one core each" if kind == "cpu" else "CUDA"
            lines.append(
                f"| training samples/s, {label}, {where} (daemon mixing vs bare torch loop) | {daemon:,.0f} | "
                f"{bare:,.0f} | **{daemon / bare:.3f}** | ≥ {SPEED_GOAL} |"
            )
    lines += [
        f"| 10 MB frame, MB/s (libp2p mix stream vs raw loopback TCP) | {flow['libp2p']:.0f} | {flow['tcp']:.0f} | "
        f"**{flow['libp2p'] / flow['tcp']:.3f}** | ≥ 0.5 |",
        "",
    ]
    for label, measured in speed.items():
        daemon = measured["daemon"]
        modes = f": {', '.join(daemon['modes'])}" if daemon["modes"] else ""
        cost = ""
        if daemon.get("mixing_cpu") is not None and daemon["moved_per_second"] > 0:
            moved = daemon["moved_per_second"] / 1e6
            per_exchange = daemon["mixing_cpu"] * 1e3 / max(daemon["exchanges_per_second"], 1e-9)
            cost = (
                f"; anything but training took {daemon['mixing_cpu']:.0%} of its core while it sent and received "
                f"{moved:,.1f} MB/s: {per_exchange:.0f} ms of CPU per exchange, "
                f"{daemon['mixing_cpu'] * 1e3 / moved:.0f} ms per MB"
            )
        lines.append(
            f"- While measured ({label}), the mixing daemon ran {daemon['exchanges_per_second']:.1f} exchanges/s "
            f"with its one neighbour, {daemon['bytes_per_exchange'] / 1e3:,.0f} KB sent per exchange "
            f"(`{daemon['algorithm']}`{modes}){cost}; samples/s in the three windows: "
            f"{', '.join(f'{w:,.0f}' for w in daemon['windows'])}."
        )
    ratios = [m["daemon"]["samples_per_second"] / m["bare"] for m in speed.values()]
    figures = ", ".join(f"{label} {ratio:.3f}" for label, ratio in zip(speed, ratios, strict=True))
    verdict = "met" if min(ratios) >= SPEED_GOAL else "NOT met"
    frame = flow["libp2p"] / flow["tcp"]
    lines += [
        "",
        f"- **Training speed with the default gossip ≥ {SPEED_GOAL}× a bare loop: {verdict}** ({figures}).",
        f"- **A 10 MB frame at ≥ 0.5× raw TCP: {'met' if frame >= 0.5 else 'NOT met'}** ({frame:.3f}).",
        "",
        f"4 daemons, {results['dataset']}, small CNN, SGD lr 0.05 momentum 0.9, batch 32, each daemon on "
        f"its own quarter of the data, {cores} cores shared, every algorithm at the default pace (an exchange "
        "every 2 local steps); time from the swarm being up until the "
        "mean of the peers' held-out accuracy (5,000 images, every 200 steps) first reaches the target; "
        "bytes sent by all daemons by then, framing included.",
        "",
        "| algorithm | target | seconds | bytes sent | exchanges | best mean accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        hit = run["reached"]
        if hit is None:
            lines.append(
                f"| {run['label']} | {run['target']:.0%} | not reached | — | — | {run['best_mean_accuracy']:.4f} |"
            )
        else:
            lines.append(
                f"| {run['label']} | {run['target']:.0%} | {hit['seconds']:.0f} | {hit['bytes'] / 1e6:,.1f} MB "
                f"| {hit['exchanges']:,} | {run['best_mean_accuracy']:.4f} |"
            )
    if figure is not None and runs:
        lines += ["", f"![4 daemons' mean accuracy against time and bytes, small CNN]({figure})"]
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path, *, dataset: str) -> list[str]:
    """The race: the peers' mean held-out accuracy against seconds and against bytes sent, one line per
    algorithm, the target across. Returns the labels drawn."""
    figure, (by_time, by_bytes) = pyplot().subplots(1, 2, figsize=(12, 4.2))
    drawn = []
    for run in runs:
        trace = [p for p in run["trace"] if p["mean_accuracy"] is not None]
        if not trace:
            continue
        accuracy = [100 * p["mean_accuracy"] for p in trace]
        line = by_time.plot([p["seconds"] for p in trace], accuracy, marker=".", label=run["label"])[0]
        sent = [(p["bytes"] / 1e6, a) for p, a in zip(trace, accuracy, strict=True) if p["bytes"] > 0]
        by_bytes.plot([s for s, _ in sent], [a for _, a in sent], marker=".", color=line.get_color())
        drawn.append(str(run["label"]))
    target = 100 * runs[0]["target"] if runs else 98.0
    for axis in (by_time, by_bytes):
        axis.axhline(target, color="grey", linewidth=0.6, linestyle="--")
        axis.set_ylim(target - 8, 100)
        axis.set_ylabel("held-out accuracy, mean of 4 daemons (%)")
        axis.grid(alpha=0.3)
    by_time.set_xlabel("seconds since the swarm was up")
    by_bytes.set_xlabel("bytes sent by all daemons (MB, log scale)")
    by_bytes.set_xscale("log")
    finish(
        figure, path, title=f"4 daemons on loopback, small CNN, {dataset}", legend_axis=by_time, ncol=2, title_size=10
    )
    return drawn
