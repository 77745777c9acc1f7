"""`make bench-scale`: what a daemon costs as its swarm grows, real daemons on this machine (issue 19).

1. One daemon alone, three times: seconds from launch to `training`, and its resident memory once training.
2. Swarms of 4, 8 and 16 daemons that do not mix (the task's exchanges pushed out of reach): the TCP bytes
   each daemon sends and receives that are not exchanges — discovery (GossipSub heartbeats, the DHT,
   identify) and transport framing — per second, measured with `ss`, and whether every view fills.
3. 16 daemons of the task as it is: resident memory, views, and the consensus distance falling.

Prints progress, the table and a verdict per goal; writes build/bench-scale/results.json, and with `--write`
(as `make bench-scale` runs it) BENCHMARKS.md's section and its plot, docs/bench-scale.png. `--report-only`
rebuilds them from the record. Needs MNIST in ../shared/datasets/mnist (skips with a message otherwise) and
`ss` for the traffic figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gossipd.task.loader import load_task
from gossipd.tools.bench_scale_report import plot, table, verdicts
from gossipd.tools.reporting import load_record, machine, replace_section
from gossipd.tools.swarm import Swarm, running_swarm
from gossipd.tools.swarm_report import Row, ScaleSummary, record, summarise, wait_training

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "datasets" / "mnist"
TASK = REPO / "tasks" / "mnist-mlp.toml"
OUT = REPO / "build" / "bench-scale"
RECORD_KEYS = ("machine", "date", "alone", "quiet", "mixing")
HEADING = "## What a daemon costs as its swarm grows (real daemons, one machine)"


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def quiet_task(text: str) -> str:
    """The task without exchanges: no step pacing, and an exchange interval no run reaches."""
    text = re.sub(r"(?m)^steps_per_exchange\s*=.*$", "", text)
    text = re.sub(r"(?m)^exchange_interval\s*=.*$", "", text)
    return text.replace("[gossip]", "[gossip]\nsteps_per_exchange = 0\nexchange_interval = 1000000.0", 1)


def run_swarm(
    task_file: Path, peers: int, duration: float, work: Path, settle: float
) -> tuple[ScaleSummary, list[Row]]:
    swarm = Swarm(workdir=work, task=str(task_file), size=peers, extra=["--data", str(MNIST)])
    with running_swarm(swarm, wait=300, all_at_once=True):
        startup = wait_training(swarm, timeout=240)
        say(f"  {peers} daemons training (slowest {max(startup.values(), default=float('nan')):.0f} s after launch)")
        # The first minute of a swarm is its forming: DHT lookups every few seconds, heartbeats at the short
        # period of a small view. What a settled swarm costs is measured after it.
        time.sleep(settle)
        history = record(swarm, duration=duration, interval=10.0, on_poll=lambda rows: say(f"  polled {len(rows)}"))
    return summarise(history, startup, load_task(task_file).gossip.view_size), history


def alone(task_file: Path, work: Path) -> dict[str, float]:
    swarm = Swarm(workdir=work, task=str(task_file), size=1, extra=["--data", str(MNIST)])
    with running_swarm(swarm, wait=120):
        startup = wait_training(swarm, timeout=120)
        time.sleep(15.0)
        history = record(swarm, duration=1.0, interval=1.0)
    summary = summarise(history, startup, load_task(task_file).gossip.view_size)
    return {
        "startup_s": summary.startup_s[0] if summary.startup_s else float("nan"),
        "resident_mb": summary.resident_mb[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,8,16")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds recorded per swarm")
    parser.add_argument("--settle", type=float, default=45.0, help="seconds between training and recording")
    parser.add_argument("--write", action="store_true", help="replace the section of BENCHMARKS.md and its plot")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the last record")
    args = parser.parse_args()
    if args.report_only:
        results = load_record(OUT / "results.json", RECORD_KEYS, target="bench-scale")
    else:
        if not (MNIST / "train-images-idx3-ubyte.gz").exists():
            say(f"skipping: MNIST is not in {MNIST}")
            return 0
        results = measure(args)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
    body = table(results) + "\n\n" + "\n".join(verdicts(results))
    print(body)
    if args.write:
        plot(results, REPO / "docs" / "bench-scale.png", title="Real daemons of the MNIST MLP on one machine")
        heading = (
            f"Measured {results['date']} on {results['machine']}; `make bench-scale`, one run: each swarm "
            f"settles {results['settle_s']:.0f} s after its daemons train, then is polled for "
            f"{results['duration_s']:.0f} s (setup: [docs/bench-readings.md](docs/bench-readings.md)).\n\n"
        )
        figure = "![memory and discovery traffic per daemon against the swarm's size](docs/bench-scale.png)"
        replace_section(
            REPO / "BENCHMARKS.md", "bench-scale", heading + body + "\n\n" + figure, title="Benchmarks", heading=HEADING
        )
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("ss") is None:
        say("note: no `ss` on this machine: traffic figures are left out")
    work = Path(tempfile.mkdtemp(prefix="gossipd-scale-", dir="/tmp"))
    results: dict[str, Any] = {
        "machine": machine(),
        "date": str(datetime.date.today()),
        "task": str(TASK.relative_to(REPO)),
        "duration_s": args.duration,
        "settle_s": args.settle,
    }
    try:
        task_text = TASK.read_text().replace('root = "../data/mnist"', f'root = "{MNIST}"')
        quiet = work / "quiet.toml"
        quiet.write_text(quiet_task(task_text))
        mixing = work / "mixing.toml"
        mixing.write_text(task_text)

        say("one daemon alone, three times")
        runs = [alone(mixing, work / f"alone-{i}") for i in range(3)]
        results["alone"] = {
            "startup_s": statistics.median(r["startup_s"] for r in runs),
            "startup_runs": [round(r["startup_s"], 2) for r in runs],
            "resident_mb": statistics.median(r["resident_mb"] for r in runs),
        }
        results["quiet"] = {}
        for size in [int(s) for s in args.sizes.split(",")]:
            say(f"{size} daemons, no exchanges")
            summary, _ = run_swarm(quiet, size, args.duration, work / f"quiet-{size}", args.settle)
            results["quiet"][str(size)] = asdict(summary)
        biggest = max(int(s) for s in args.sizes.split(","))
        say(f"{biggest} daemons mixing")
        summary, history = run_swarm(mixing, biggest, args.duration, work / "mixing", args.settle)
        first, last = history[0].time_s, history[-1].time_s
        distances = {
            moment: statistics.median(
                r.consensus_distance for r in history if r.time_s == moment and r.consensus_distance is not None
            )
            for moment in (first, last)
            if any(r.time_s == moment and r.consensus_distance is not None for r in history)
        }
        results["mixing"] = {"summary": asdict(summary), "consensus_distance": distances}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    sys.exit(main())
