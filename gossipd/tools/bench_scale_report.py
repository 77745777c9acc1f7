"""`make bench-scale`'s report: the table, one verdict line per goal of issue 19's *Scale* part, and its plot.

The record is what `scripts/bench_scale.py` writes: the lone daemon's start-up and memory, then per swarm
size the summary of daemons that do not mix (`quiet`), and the summary of the largest swarm mixing as its
task says (`mixing`). Pure formatting over that record; the plot is drawn with matplotlib on demand.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gossipd.tools.figures import finish, pyplot, size_axes

STARTUP_GOAL_S = 10.0  # launch to `training`, one daemon on an idle machine
MEMORY_GOAL_MB = 400.0  # resident per daemon, every daemon of every swarm measured
DISCOVERY_GOAL_KBPS = 2.0  # non-exchange TCP bytes per second, in + out, median daemon of the largest idle swarm


def rows(record: dict[str, Any]) -> list[tuple[int, str, dict[str, Any]]]:
    """(daemons, what they exchanged, summary) for each swarm, the idle ones by size, then the mixing one."""
    found = sorted(((int(size), "none", s) for size, s in record["quiet"].items()), key=lambda row: row[0])
    mixing = record["mixing"]["summary"]
    found.append((int(mixing["peers"]), "the task's (`auto`, every 2 steps)", mixing))
    return found


def table(record: dict[str, Any]) -> str:
    alone = record["alone"]
    runs = ", ".join(f"{s:.1f}" for s in alone["startup_runs"])
    lines = [
        f"One daemon alone: {alone['startup_s']:.1f} s from launch to `training` (median of {runs} s), "
        f"{alone['resident_mb']:.0f} MB resident.",
        "",
        "| daemons | exchanges | resident MB median (max) | peak MB median (max) | views full "
        "| non-exchange TCP KB/s per daemon, in + out, median (max) |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for size, kind, s in rows(record):
        traffic = s["other_traffic_bps"]
        shown = "—" if traffic is None else f"{traffic[0] / 1e3:.2f} ({traffic[1] / 1e3:.2f})"
        lines.append(
            f"| {size} | {kind} | {s['resident_mb'][0]:.0f} ({s['resident_mb'][1]:.0f}) | "
            f"{s['peak_mb'][0]:.0f} ({s['peak_mb'][1]:.0f}) | {s['view_full']}/{s['peers']} | {shown} |"
        )
    mixing = record["mixing"]["summary"]
    exchanged, other = mixing.get("exchange_bps"), mixing["other_traffic_bps"]
    if exchanged and other and exchanged[0] > 0:
        # A mixing swarm's other bytes are mostly the exchanges' own framing (Noise, Yamux, message headers):
        # the share says how much of that row's figure is discovery at most.
        lines += [
            "",
            f"The {mixing['peers']} mixing daemons moved a median {exchanged[0] / 1e3:,.0f} KB/s of exchange payload "
            f"each (in + out; largest {exchanged[1] / 1e3:,.0f}); the median of their other TCP bytes is "
            f"{100 * other[0] / exchanged[0]:.1f}% of that, the exchanges' own framing included.",
        ]
    distances = record["mixing"]["consensus_distance"]
    if len(distances) == 2:
        before, after = distances.values()
        peers = record["mixing"]["summary"]["peers"]
        lines += [
            "",
            f"Consensus distance while the {peers} mixed (median over daemons, first and last poll): "
            f"{before:.3g} → {after:.3g}.",
        ]
    return "\n".join(lines)


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def verdicts(record: dict[str, Any]) -> list[str]:
    """One line per goal; a figure that could not be measured (no `ss`) is said so, not judged."""
    startup = record["alone"]["startup_s"]
    lines = [
        f"- **Startup ≤ {STARTUP_GOAL_S:.0f} s: {_verdict(startup <= STARTUP_GOAL_S)}** "
        f"({startup:.1f} s alone, median of {len(record['alone']['startup_runs'])})."
    ]
    swarms = rows(record)
    largest_daemon = max(s["resident_mb"][1] for _, _, s in swarms)
    largest = max(size for size, _, _ in swarms)
    idle = [s for size, kind, s in swarms if size == largest and kind == "none"]
    mixing = record["mixing"]["summary"]
    at_largest = f"{mixing['resident_mb'][0]:.0f} MB mixing"
    if idle:
        at_largest = f"{idle[0]['resident_mb'][0]:.0f} MB idle and " + at_largest
    lines.append(
        f"- **Memory ≤ {MEMORY_GOAL_MB:.0f} MB per daemon: {_verdict(largest_daemon <= MEMORY_GOAL_MB)}** "
        f"(largest daemon of any swarm {largest_daemon:.0f} MB; at {largest}, medians: {at_largest})."
    )
    traffic = idle[0]["other_traffic_bps"] if idle else None
    if traffic is None or not math.isfinite(traffic[0]):
        lines.append(
            f"- Discovery ≤ {DISCOVERY_GOAL_KBPS:.0f} KB/s per peer at {largest}: not judged, not measured (no `ss`)."
        )
    else:
        median, most = traffic[0] / 1e3, traffic[1] / 1e3
        lines.append(
            f"- **Discovery ≤ {DISCOVERY_GOAL_KBPS:.0f} KB/s per peer at {largest}: "
            f"{_verdict(median <= DISCOVERY_GOAL_KBPS)}** ({median:.2f} KB/s, median daemon of {largest} idle; "
            f"busiest {most:.2f})."
        )
    return lines


def plot(record: dict[str, Any], path: Path, *, title: str) -> list[str]:
    """Memory per daemon (idle swarms and the mixing one) and the idle swarms' traffic per daemon against
    the swarm's size, with the goals; returns the legend's labels."""
    swarms = rows(record)
    idle = [(size, s) for size, kind, s in swarms if kind == "none"]
    mixing = record["mixing"]["summary"]
    plt = pyplot()
    figure, (memory, traffic) = plt.subplots(1, 2, figsize=(12, 4.2))
    sizes = [size for size, _ in idle]
    memory.plot(sizes, [s["resident_mb"][0] for _, s in idle], marker="o", label="idle swarm: median daemon")
    memory.plot(sizes, [s["resident_mb"][1] for _, s in idle], marker="v", label="idle swarm: largest daemon")
    memory.plot([mixing["peers"]], [mixing["resident_mb"][0]], marker="s", linestyle="none", color="tab:green",
                label="mixing swarm: median daemon")  # fmt: skip
    memory.plot([mixing["peers"]], [mixing["resident_mb"][1]], marker="s", linestyle="none", color="tab:green",
                markerfacecolor="white", label="mixing swarm: largest daemon")  # fmt: skip
    memory.axhline(MEMORY_GOAL_MB, color="tab:red", linestyle=":", label="goal")
    memory.set_ylabel("resident memory per daemon (MB)")
    memory.set_ylim(bottom=0)
    measured = [(size, s["other_traffic_bps"]) for size, s in idle if s["other_traffic_bps"] is not None]
    if measured:
        traffic.plot([size for size, _ in measured], [t[0] / 1e3 for _, t in measured], marker="o")
        traffic.plot([size for size, _ in measured], [t[1] / 1e3 for _, t in measured], marker="v")
    traffic.axhline(DISCOVERY_GOAL_KBPS, color="tab:red", linestyle=":")
    # Only the idle swarms: what discovery costs, the goal's measure. A mixing swarm's other bytes are mostly
    # its exchanges' framing, tens of KB/s, which would flatten this panel.
    traffic.set_ylabel("idle swarm: TCP KB/s per daemon")
    traffic.set_ylim(bottom=0)
    size_axes([memory, traffic], sizes, label="daemons on this machine")
    return finish(figure, path, title=title, legend_axis=memory, ncol=3, title_size=10)
