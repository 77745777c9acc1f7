"""Recording a running swarm: periodic status polls as rows, written as CSV and JSON, drawn as PNG plots,
and printed as a per-peer table."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from gossipd.cli_client import human_bytes
from gossipd.tools.process_stats import memory_of, tcp_traffic
from gossipd.tools.swarm import Swarm


@dataclass(frozen=True)
class Row:
    """One daemon's task as seen by one poll."""

    time_s: float
    peer: int
    peer_id: str
    state: str
    step: int
    samples: int
    loss: float | None
    accuracy: float | None
    exchanges: int
    failed_exchanges: int
    bytes_sent: int
    bytes_received: int
    compression_ratio: float | None
    consensus_distance: float | None
    peers_in_view: int
    peers_known: int
    state_transfers: int
    resident_mb: float | None = None  # the daemon process's resident memory (VmRSS)
    peak_mb: float | None = None  # and the most it has been (VmHWM)
    tcp_sent: int | None = None  # bytes on all its TCP connections (ss): exchanges, discovery, everything
    tcp_received: int | None = None


def rows_from(swarm: Swarm, started: float) -> list[Row]:
    now = time.monotonic() - started
    rows = []
    traffic = tcp_traffic() or {}
    for daemon, status in zip(swarm.daemons, swarm.statuses(), strict=True):
        if status is None or not status.get("tasks"):
            continue
        task = status["tasks"][0]
        memory = memory_of(daemon.process.pid)
        tcp = traffic.get(daemon.process.pid)
        rows.append(
            Row(
                time_s=round(now, 2),
                peer=daemon.index,
                peer_id=status["peer_id"],
                state=task["state"],
                step=task["step"],
                samples=task["samples"],
                loss=task["loss"],
                accuracy=task["accuracy"],
                exchanges=task["exchanges"],
                failed_exchanges=task["failed_exchanges"],
                bytes_sent=task["bytes_sent"],
                bytes_received=task["bytes_received"],
                compression_ratio=task["compression_ratio"],
                consensus_distance=task["consensus_distance"],
                peers_in_view=sum(1 for p in task["peers"] if p["in_view"]),
                peers_known=len(task["peers"]),
                state_transfers=task["state_transfers"],
                resident_mb=memory.resident_mb if memory else None,
                peak_mb=memory.peak_mb if memory else None,
                tcp_sent=tcp.sent if tcp else None,
                tcp_received=tcp.received if tcp else None,
            )
        )
    return rows


def record(
    swarm: Swarm,
    *,
    duration: float,
    interval: float,
    on_poll: Callable[[list[Row]], None] | None = None,
) -> list[Row]:
    """Poll every daemon every `interval` seconds for `duration` seconds."""
    started = time.monotonic()
    history: list[Row] = []
    while True:
        rows = rows_from(swarm, started)
        history.extend(rows)
        if on_poll is not None:
            on_poll(rows)
        if time.monotonic() - started + interval > duration:
            return history
        time.sleep(interval)


def write(history: Sequence[Row], folder: Path) -> list[Path]:
    """history.csv, history.json and, when matplotlib is installed, accuracy.png and bytes.png."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "history.csv", folder / "history.json"]
    with written[0].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in history)
    written[1].write_text(json.dumps([asdict(r) for r in history], indent=1))
    written += plot(history, folder)
    return written


def plot(history: Sequence[Row], folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    peers = sorted({r.peer for r in history})
    outputs = []
    panels: list[tuple[str, str, Callable[[Row], Any]]] = [
        ("accuracy.png", "validation accuracy", lambda r: r.accuracy),
        ("bytes.png", "bytes sent + received (MB)", lambda r: (r.bytes_sent + r.bytes_received) / 1e6),
    ]
    for name, label, value in panels:
        figure, axes = plt.subplots(figsize=(7, 4))
        for peer in peers:
            points = [(r.time_s, value(r)) for r in history if r.peer == peer and value(r) is not None]
            if points:
                axes.plot([p[0] for p in points], [p[1] for p in points], label=f"peer {peer}")
        axes.set_xlabel("seconds")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = folder / name
        figure.savefig(path, dpi=110)
        plt.close(figure)
        outputs.append(path)
    return outputs


def table(rows: Sequence[Row]) -> str:
    """The per-peer summary the demo prints."""
    header = ("peer", "state", "step", "loss", "accuracy", "exchanges", "sent", "received", "ratio", "peers seen")
    lines = [header]
    for r in rows:
        lines.append(
            (
                str(r.peer),
                r.state,
                str(r.step),
                # Significant digits: a converged MNIST loss of 2e-5 printed as 0.0000, as if training had broken.
                "-" if r.loss is None else f"{r.loss:.4g}",
                "-" if r.accuracy is None else f"{r.accuracy:.2%}",
                f"{r.exchanges} ({r.failed_exchanges} failed)",
                human_bytes(r.bytes_sent),
                human_bytes(r.bytes_received),
                "-" if r.compression_ratio is None else f"{r.compression_ratio:.1f}x",
                f"{r.peers_in_view} in view / {r.peers_known}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines)


def wait_training(swarm: Swarm, timeout: float, interval: float = 0.25) -> dict[int, float]:
    """Seconds from each daemon's launch to the first poll that finds its task `training` (polled every
    `interval`); daemons not training after `timeout` are left out."""
    reached: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(reached) < len(swarm.daemons) and time.monotonic() < deadline:
        for daemon, status in zip(swarm.daemons, swarm.statuses(), strict=True):
            if daemon.index in reached or status is None or not status.get("tasks"):
                continue
            if status["tasks"][0]["state"] == "training":
                reached[daemon.index] = time.monotonic() - daemon.launched
        time.sleep(interval)
    return reached


@dataclass(frozen=True)
class ScaleSummary:
    """What a swarm of many daemons on one machine costs each of them."""

    peers: int
    resident_mb: tuple[float, float]  # median and largest VmRSS at the last poll
    peak_mb: tuple[float, float]  # median and largest VmHWM
    startup_s: tuple[float, float] | None  # median and slowest launch-to-training
    view_full: int  # peers whose view holds view_size neighbours (or every other peer)
    other_traffic_bps: tuple[float, float] | None  # median and largest TCP bytes/s that were not exchanges
    exchange_bps: tuple[float, float] | None = None  # median and largest exchange bytes/s (payload, in + out)


def summarise(history: Sequence[Row], startup: dict[int, float], view_size: int) -> ScaleSummary:
    first_time, last_time = history[0].time_s, history[-1].time_s
    first = {r.peer: r for r in history if r.time_s == first_time}
    last = [r for r in history if r.time_s == last_time]
    traffic: list[float] = []
    exchanged: list[float] = []
    for row in last:
        before = first.get(row.peer)
        if before is None or None in (row.tcp_sent, row.tcp_received, before.tcp_sent, before.tcp_received):
            continue
        tcp = (row.tcp_sent or 0) + (row.tcp_received or 0) - (before.tcp_sent or 0) - (before.tcp_received or 0)
        mixing = row.bytes_sent + row.bytes_received - before.bytes_sent - before.bytes_received
        if last_time > first_time:
            traffic.append(max(0.0, tcp - mixing) / (last_time - first_time))
            exchanged.append(mixing / (last_time - first_time))
    wanted = min(view_size, len(last) - 1)
    return ScaleSummary(
        peers=len(last),
        resident_mb=_median_max([r.resident_mb for r in last if r.resident_mb is not None]),
        peak_mb=_median_max([r.peak_mb for r in last if r.peak_mb is not None]),
        startup_s=_median_max(list(startup.values())) if startup else None,
        view_full=sum(r.peers_in_view >= wanted for r in last),
        other_traffic_bps=_median_max(traffic) if traffic else None,
        exchange_bps=_median_max(exchanged) if exchanged else None,
    )


def _median_max(values: list[float]) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return median, ordered[-1]


def describe(summary: ScaleSummary, view_size: int) -> str:
    lines = [
        f"{summary.peers} daemons: resident {summary.resident_mb[0]:.0f} MB median, {summary.resident_mb[1]:.0f} "
        f"MB largest; peak {summary.peak_mb[0]:.0f} MB median, {summary.peak_mb[1]:.0f} MB largest",
        f"views full ({view_size} neighbours, or all others): {summary.view_full} of {summary.peers}",
    ]
    if summary.startup_s is not None:
        lines.append(f"launch to training: {summary.startup_s[0]:.1f} s median, {summary.startup_s[1]:.1f} s slowest")
    if summary.other_traffic_bps is not None:
        lines.append(
            f"TCP bytes that were not exchanges (discovery: pubsub, DHT, identify; and transport framing): "
            f"{summary.other_traffic_bps[0] / 1e3:.2f} KB/s median, {summary.other_traffic_bps[1] / 1e3:.2f} KB/s "
            "largest per daemon"
        )
    return "\n".join(lines)
