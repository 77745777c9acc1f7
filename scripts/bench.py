"""`make bench`: the daemon measured, every figure and ratio from one run.

1. Training speed: a daemon's samples/s with gossip on (two daemons, each pinned to its own core, mixing)
   against a bare torch loop on the same core, same model, data share and batch (goal ≥ 0.95). On CUDA too
   when a GPU is present.
2. Stream throughput: a 10 MB frame over gossipd's libp2p mix stream (Noise + Yamux) against raw loopback
   TCP with the same framing, sender and receiver on separate cores (goal ≥ 0.5).
3. Time and bytes for 4 daemons to reach 98% on the MNIST CNN with plain gossip, PowerGossip and
   Choco-sign (full MNIST from ../shared/datasets/mnist when present, else the embedded 10k set).

Prints the results, writes out/bench.json and replaces the daemon section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gossipd.tools.reporting import machine, replace_section
from gossipd.tools.swarm import Swarm, running_swarm

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"
OUT = REPO / "out"
PYTHON = sys.executable
ALGORITHMS = {
    "plain": 'algorithm = "plain"',
    "PowerGossip r2": 'algorithm = "powergossip"\nrank = 2\niterations = 1',
    "Choco sign": 'algorithm = "choco"\ncompressor = "sign"\ngamma = 0.45',
}


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def task_and_data() -> tuple[Path, str | None]:
    if (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        return REPO / "tasks" / "mnist-cnn.toml", str(SHARED_MNIST)
    return REPO / "gossipd" / "embedded" / "default.toml", None


def with_gossip(task_text: str, gossip: str, extra_train: str = "") -> str:
    """The task file with its [gossip] section replaced (and [train] keys appended)."""
    head = task_text.split("[gossip]")[0]
    if extra_train:
        head = head.replace("[train]", "[train]\n" + extra_train, 1)
    return head + "[gossip]\n" + gossip + "\n"


# -- 1. training speed -------------------------------------------------------------------------------


def bare_samples_per_second(task: Path, data: str | None, device: str, core: int | None) -> float:
    command = [PYTHON, "-m", "gossipd.tools.bare_loop", str(task), "--seconds", "25", "--device", device]
    if data:
        command += ["--data", data]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,
    )
    return float(result.stdout.strip().splitlines()[-1])


def daemon_samples_per_second(task: Path, data: str | None, device: str, workdir: Path) -> dict[str, float]:
    """Two daemons mixing, each pinned to its own core; samples/s of daemon 0 over a 30 s window. Held-out
    evaluation is off, as the bare loop has none: this measures what gossip costs training."""
    text = task.read_text().replace("[train]", "[train]\neval_every = 1000000000", 1)
    if device != "cpu":
        text = text.replace('device = "auto"', f'device = "{device}"')
    task_file = workdir / "speed.toml"
    task_file.write_text(text)
    extra = ["--data", data] if data else []
    cores = sorted(os.sched_getaffinity(0))
    swarm = Swarm(
        workdir=workdir / "speed",
        task=str(task_file),
        size=2,
        extra=extra,
        affinity=lambda i: {cores[i % len(cores)]},
    )
    with running_swarm(swarm, wait=240):
        time.sleep(15)  # warm up: joined, exchanging, chunk size settled
        first = swarm.daemons[0].status()
        started = time.monotonic()
        time.sleep(30)
        last = swarm.daemons[0].status()
        elapsed = time.monotonic() - started
    if first is None or last is None:
        raise RuntimeError("a daemon stopped answering during the speed measurement")
    samples = last["tasks"][0]["samples"] - first["tasks"][0]["samples"]
    exchanges = last["tasks"][0]["exchanges"] - first["tasks"][0]["exchanges"]
    return {"samples_per_second": samples / elapsed, "exchanges_per_second": exchanges / elapsed}


# -- 2. stream throughput ----------------------------------------------------------------------------


def throughput(kind: str, size: int, repeats: int) -> float:
    cores = sorted(os.sched_getaffinity(0))
    server = subprocess.Popen(
        [PYTHON, "-m", "gossipd.tools.throughput", "serve", kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {cores[0]}),
    )
    try:
        assert server.stdout is not None
        address = server.stdout.readline().strip()
        result = subprocess.run(
            [PYTHON, "-m", "gossipd.tools.throughput", "send", kind, address, str(size), str(repeats)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {cores[-1]}),
        )
        return float(result.stdout.strip().splitlines()[-1])
    finally:
        server.kill()
        server.wait(10)


# -- 3. time and bytes to accuracy ------------------------------------------------------------------


def time_to_accuracy(
    label: str, gossip: str, task: Path, data: str | None, target: float, limit: float, workdir: Path
) -> dict[str, Any]:
    # Evaluate often enough to time the target, on enough held-out images to trust it.
    text = with_gossip(task.read_text(), gossip, "eval_every = 200\neval_samples = 5000")
    task_file = workdir / f"{label.replace(' ', '-')}.toml"
    task_file.write_text(text)
    swarm = Swarm(
        workdir=workdir / label.replace(" ", "-"), task=str(task_file), size=4, extra=["--data", data] if data else []
    )
    trace: list[dict[str, Any]] = []
    reached: dict[str, Any] | None = None
    with running_swarm(swarm, wait=240):
        started = time.monotonic()
        while time.monotonic() - started < limit:
            time.sleep(2)
            statuses = [s for s in swarm.statuses() if s is not None]
            tasks = [s["tasks"][0] for s in statuses]
            accuracies = [t["accuracy"] for t in tasks if t["accuracy"] is not None]
            point = {
                "seconds": round(time.monotonic() - started, 1),
                "mean_accuracy": statistics.mean(accuracies) if len(accuracies) == 4 else None,
                "worst_accuracy": min(accuracies) if len(accuracies) == 4 else None,
                "bytes": sum(t["bytes_sent"] for t in tasks),
                "exchanges": sum(t["exchanges"] for t in tasks),
                "steps": [t["step"] for t in tasks],
            }
            trace.append(point)
            if reached is None and point["mean_accuracy"] is not None and point["mean_accuracy"] >= target:
                reached = point
                break
    best = max((p["mean_accuracy"] or 0.0) for p in trace) if trace else 0.0
    return {"label": label, "target": target, "reached": reached, "best_mean_accuracy": best, "trace": trace}


# -- report ------------------------------------------------------------------------------------------


def report(results: dict[str, Any], elapsed: float) -> str:
    speed, flow, runs = results["speed"], results["throughput"], results["accuracy"]
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {machine()}; `make bench` ({elapsed / 60:.0f} min).",
        "",
        "| measure | gossipd | yardstick | ratio | goal |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| training samples/s, CPU (daemon mixing vs bare torch loop, one core each) | "
        f"{speed['daemon']['samples_per_second']:,.0f} | {speed['bare']:,.0f} | "
        f"**{speed['daemon']['samples_per_second'] / speed['bare']:.3f}** | ≥ 0.95 |",
    ]
    if "cuda" in speed:
        cuda = speed["cuda"]
        lines.append(
            f"| training samples/s, CUDA | {cuda['daemon']['samples_per_second']:,.0f} | {cuda['bare']:,.0f} | "
            f"**{cuda['daemon']['samples_per_second'] / cuda['bare']:.3f}** | ≥ 0.95 |"
        )
    lines += [
        f"| 10 MB frame, MB/s (libp2p mix stream vs raw loopback TCP) | {flow['libp2p']:.0f} | {flow['tcp']:.0f} | "
        f"**{flow['libp2p'] / flow['tcp']:.2f}** | ≥ 0.5 |",
        "",
        f"While measured, the mixing daemon ran {speed['daemon']['exchanges_per_second']:.1f} exchanges/s "
        "(PowerGossip, one neighbour).",
        "",
        f"4 daemons, {results['dataset']}, small CNN, SGD lr 0.05 momentum 0.9, batch 32, each daemon on "
        f"its own quarter of the data, {cpu_count()} cores shared; time from the swarm being up until the "
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
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=float, default=600.0, help="seconds allowed per accuracy run")
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    task, data = task_and_data()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gossipd-bench-", dir="/tmp"))
    import torch

    cores = sorted(os.sched_getaffinity(0))
    print("1/3 training speed ...", flush=True)
    speed: dict[str, Any] = {
        "bare": bare_samples_per_second(task, data, "cpu", cores[0]),
        "daemon": daemon_samples_per_second(task, data, "cpu", workdir),
    }
    if torch.cuda.is_available():
        speed["cuda"] = {
            "bare": bare_samples_per_second(task, data, "cuda", None),
            "daemon": daemon_samples_per_second(task, data, "cuda", workdir / "cuda"),
        }
    print(json.dumps(speed), flush=True)
    print("2/3 stream throughput ...", flush=True)
    flow = {kind: throughput(kind, 10_000_000, 9) for kind in ("tcp", "libp2p")}
    print(json.dumps(flow), flush=True)
    runs = []
    if not args.skip_accuracy:
        print("3/3 time and bytes to accuracy ...", flush=True)
        target = args.target if data else min(args.target, 0.97)
        for label, gossip in ALGORITHMS.items():
            run = time_to_accuracy(label, gossip, task, data, target, args.limit, workdir)
            print(json.dumps({k: v for k, v in run.items() if k != "trace"}), flush=True)
            runs.append(run)
    dataset = "full MNIST (60k train, 10k test)" if data else "the embedded 10k MNIST images"
    results = {"speed": speed, "throughput": flow, "accuracy": runs, "dataset": dataset}
    OUT.mkdir(exist_ok=True)
    (OUT / "bench.json").write_text(json.dumps(results, indent=1))
    text = report(results, time.monotonic() - started)
    print(text)
    if not args.no_write:
        replace_section(
            REPO / "BENCHMARKS.md", "bench-daemon", text, title="Benchmarks", heading="## Daemons on loopback"
        )


if __name__ == "__main__":
    main()
