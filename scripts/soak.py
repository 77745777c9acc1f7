"""`make soak`: 8 daemons on loopback; every 20 s one of them is killed with SIGKILL and restarted.

Reports: survivor crashes (daemons that died without being killed; goal 0), the longest time any live peer
went without completing an exchange (goal ≤ 30 s), whether every restarted peer resumed from its own
checkpoint, and the final accuracy against the same run without churn (goal within 1 point).

    python scripts/soak.py [--peers 8] [--duration 600] [--kill-every 20] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossipd.tools.reporting import machine, replace_section
from gossipd.tools.swarm import Swarm, tail

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "out"
TASK = (
    (REPO / "gossipd" / "embedded" / "default.toml")
    .read_text()
    .replace("[train]", "[train]\neval_every = 100\neval_samples = 1500", 1)
)


@dataclass
class Watch:
    """Exchange progress of every peer, polled from a background thread."""

    swarm: Swarm
    down: set[int] = field(default_factory=set)  # peers being killed and restarted: not judged
    counts: dict[int, int] = field(default_factory=dict)
    last_progress: dict[int, float] = field(default_factory=dict)
    longest_gap: float = 0.0
    gap_peer: int = -1
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            for daemon in list(self.swarm.daemons):
                index = daemon.index
                if index in self.down:
                    self.last_progress[index] = now
                    continue
                status = daemon.status()
                count = status["tasks"][0]["exchanges"] if status and status.get("tasks") else None
                if count is not None and count != self.counts.get(index):
                    self.counts[index] = count
                    self.last_progress[index] = now
                gap = now - self.last_progress.setdefault(index, now)
                if gap > self.longest_gap:
                    self.longest_gap, self.gap_peer = gap, index
            time.sleep(0.5)


def newest_checkpoint_step(swarm: Swarm, index: int) -> int:
    folder = swarm.daemons[index].state_dir / "tasks" / "soak" / "checkpoints"
    steps = [int(p.name.split("-")[1]) for p in folder.glob("ckpt-*.pt")]
    return max(steps, default=0)


def run(peers: int, duration: float, kill_every: float, churn: bool, seed: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gossipd-soak-", dir="/tmp"))
    task_file = workdir / "soak.toml"
    task_file.write_text(TASK.replace('id = "mnist-default"', 'id = "soak"'))
    swarm = Swarm(workdir=workdir, task=str(task_file), size=peers, extra=["--checkpoint-interval", "10"])
    rng = random.Random(seed)
    kills: list[dict[str, Any]] = []
    crashes: list[str] = []
    swarm.start(wait=300)
    watch = Watch(swarm)
    watcher = threading.Thread(target=watch.run, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        next_kill = started + kill_every
        while time.monotonic() - started < duration:
            time.sleep(0.5)
            for daemon in swarm.daemons:
                if daemon.index not in watch.down and not daemon.alive:
                    crashes.append(
                        f"peer {daemon.index} exited with {daemon.process.returncode}:\n{tail(daemon.log_path)}"
                    )
                    watch.down.add(daemon.index)
            if churn and time.monotonic() >= next_kill:
                victim = rng.randrange(peers)
                watch.down.add(victim)
                saved = newest_checkpoint_step(swarm, victim)
                swarm.signal(victim, signal.SIGKILL)
                swarm.daemons[victim].process.wait(10)
                restarted = swarm.start_one(victim, wait=300)
                status = restarted.status() or {}
                step = status.get("tasks", [{}])[0].get("step", 0)
                resumed = "resumed at step" in restarted.log_path.read_text() and step >= saved
                kills.append({"peer": victim, "checkpoint_step": saved, "resumed_step": step, "resumed": resumed})
                watch.counts.pop(victim, None)
                watch.down.discard(victim)
                next_kill = time.monotonic() + kill_every
        statuses = [s for s in swarm.statuses() if s is not None]
        accuracies = [s["tasks"][0]["accuracy"] for s in statuses if s["tasks"][0]["accuracy"] is not None]
    finally:
        watch.stop.set()
        watcher.join(5)
        codes = swarm.stop(timeout=60)
    return {
        "churn": churn,
        "peers": peers,
        "duration_s": duration,
        "kills": kills,
        "survivor_crashes": len(crashes),
        "crash_logs": crashes,
        "longest_gap_s": watch.longest_gap,
        "gap_peer": watch.gap_peer,
        "all_resumed": all(k["resumed"] for k in kills),
        "mean_accuracy": statistics.mean(accuracies) if accuracies else None,
        "exit_codes": codes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="4 peers, 2 minutes")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without churn")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    peers, duration = (4, 120.0) if args.quick else (args.peers, args.duration)
    print(f"soak: {peers} daemons, {duration:.0f} s, a SIGKILL every {args.kill_every:.0f} s", flush=True)
    churn = run(peers, duration, args.kill_every, churn=True, seed=1)
    print(json.dumps({k: v for k, v in churn.items() if k != "crash_logs"}), flush=True)
    baseline = None if args.no_baseline else run(peers, duration, args.kill_every, churn=False, seed=1)
    if baseline:
        print(json.dumps({k: v for k, v in baseline.items() if k != "crash_logs"}), flush=True)
    for log in churn["crash_logs"]:
        print(log, file=sys.stderr)
    OUT.mkdir(exist_ok=True)
    (OUT / "soak.json").write_text(json.dumps({"churn": churn, "baseline": baseline}, indent=1))
    accuracy = churn["mean_accuracy"]
    reference = baseline["mean_accuracy"] if baseline else None
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {machine()}; `make soak` ({peers} daemons on loopback, "
        f"{duration / 60:.0f} min, SIGKILL and restart of a random daemon every {args.kill_every:.0f} s, "
        "embedded MNIST CNN task, checkpoints every 10 s).",
        "",
        "| measure | result | goal |",
        "| --- | ---: | ---: |",
        f"| kills and restarts | {len(churn['kills'])} | — |",
        f"| survivor crashes | {churn['survivor_crashes']} | 0 |",
        f"| longest time a live peer went without an exchange | {churn['longest_gap_s']:.1f} s | ≤ 30 s |",
        f"| restarted peers that resumed from their own checkpoint | "
        f"{sum(k['resumed'] for k in churn['kills'])} of {len(churn['kills'])} | all |",
        f"| final mean accuracy with churn | {accuracy:.4f} | — |"
        if accuracy is not None
        else "| final accuracy | n/a | — |",
    ]
    if accuracy is not None and reference is not None:
        lines.append(
            f"| same run without churn | {reference:.4f} "
            f"(difference {100 * (accuracy - reference):+.2f} points) | within 1 point |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_write and not args.quick:
        replace_section(REPO / "RELIABILITY.md", "soak", text, title="Reliability", heading="## Soak: churn by SIGKILL")
    raise SystemExit(0 if churn["survivor_crashes"] == 0 else 1)


if __name__ == "__main__":
    main()
