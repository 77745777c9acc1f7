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


def rows_from(swarm: Swarm, started: float) -> list[Row]:
    now = time.monotonic() - started
    rows = []
    for daemon, status in zip(swarm.daemons, swarm.statuses(), strict=True):
        if status is None or not status.get("tasks"):
            continue
        task = status["tasks"][0]
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
                "-" if r.loss is None else f"{r.loss:.4f}",
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
