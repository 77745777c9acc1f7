"""`make bench`: the daemon measured, every figure and ratio from one run.

1. Training speed, for the small CNN and the 1.2M-parameter CNN of the PyTorch example, each with its task
   file's own gossip (the default, auto): a daemon's samples/s with gossip on (two daemons, each pinned to its
   own core, mixing) against a bare torch loop on the same core, same model, data share and batch
   (goal ≥ 0.9). On CUDA too when a GPU is present.
2. Stream throughput: a 10 MB frame over gossipd's libp2p mix stream (Noise + Yamux) against raw loopback
   TCP with the same framing, sender and receiver on separate cores (goal ≥ 0.5).
3. Time and bytes for 4 daemons to reach 98% on the MNIST CNN with auto, plain gossip, PowerGossip and
   Choco at its default compressor, sign:64 (full MNIST from ../shared/datasets/mnist when present, else the
   embedded 10k set).

Prints the results, writes out/bench.json and replaces the daemon section of BENCHMARKS.md, with a plot of
the race (docs/bench-daemon-race.png); `--report-only` rebuilds both from out/bench.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gossipd.tools.bench_daemon_report import plot, report
from gossipd.tools.reporting import load_record, machine, replace_section
from gossipd.tools.swarm import Swarm, running_swarm

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"
OUT = REPO / "out"
PYTHON = sys.executable
ALGORITHMS: dict[str, str | None] = {
    "auto, the task file's own (the default)": None,  # None: the task's [gossip] section as it is
    "plain": 'algorithm = "plain"',
    "PowerGossip r2": 'algorithm = "powergossip"\nrank = 2\niterations = 1',
    "Choco sign:64 (its default)": 'algorithm = "choco"',
}
# What --report-only needs of the run's record.
RECORD_KEYS = ("speed", "throughput", "accuracy", "dataset", "measured", "machine", "cores", "wall_seconds")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


WARMUP, WINDOWS, WINDOW = 20.0, 3, 20.0  # seconds; the daemon's figure is the median window
# Model label -> task file whose model and gossip the speed is measured with.
SPEED_TASKS = {"small CNN": "mnist-cnn.toml", "1.2M CNN": "mnist-pytorch-example.toml"}


def task_and_data() -> tuple[Path, str | None]:
    if (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        return REPO / "tasks" / "mnist-cnn.toml", str(SHARED_MNIST)
    return REPO / "gossipd" / "embedded" / "default.toml", None


def with_gossip(task_text: str, gossip: str | None, extra_train: str = "") -> str:
    """The task file with its [gossip] section replaced unless `gossip` is None (and [train] keys appended)."""
    head, _, own = task_text.partition("[gossip]")
    if extra_train:
        head = head.replace("[train]", "[train]\n" + extra_train, 1)
    return head + "[gossip]\n" + (own if gossip is None else gossip + "\n")


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


def daemon_samples_per_second(
    task: Path, data: str | None, device: str, workdir: Path, gossip_extra: str = ""
) -> dict[str, Any]:
    """Two daemons mixing, each pinned to its own core: daemon 0's samples/s in the median of 3 windows, and
    what its exchanges sent then. Held-out evaluation is off, as the bare loop has none: this measures what
    gossip costs training."""
    text = task.read_text().replace("[train]", "[train]\neval_every = 1000000000", 1)
    text = text.replace("[gossip]", "[gossip]\n" + gossip_extra, 1)
    if device != "cpu":
        text = text.replace('device = "auto"', f'device = "{device}"')
    workdir.mkdir(parents=True, exist_ok=True)
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
    windows: list[dict[str, Any]] = []
    with running_swarm(swarm, wait=240):
        time.sleep(WARMUP)  # joined, exchanging, modes and pace settled
        first = swarm.daemons[0].status()
        for _ in range(WINDOWS):
            started = time.monotonic()
            time.sleep(WINDOW)
            last = swarm.daemons[0].status()
            if first is None or last is None:
                raise RuntimeError("a daemon stopped answering during the speed measurement")
            windows.append(window(first["tasks"][0], last["tasks"][0], time.monotonic() - started))
            first = last
    middle = sorted(windows, key=lambda w: float(w["samples_per_second"]))[len(windows) // 2]
    return {**middle, "windows": [w["samples_per_second"] for w in windows]}


def window(before: dict[str, Any], after: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """Samples/s and what the exchanges sent between two statuses of one task."""
    samples = after["samples"] - before["samples"]
    exchanges = after["exchanges"] - before["exchanges"]
    sent = after["bytes_sent"] - before["bytes_sent"]
    received = after["bytes_received"] - before["bytes_received"]
    return {
        "samples_per_second": samples / elapsed,
        "exchanges_per_second": exchanges / elapsed,
        "bytes_per_exchange": sent / exchanges if exchanges else 0.0,
        "moved_per_second": (sent + received) / elapsed,  # bytes sent and received
        "algorithm": after["algorithm"],
        "modes": sorted({link["mode"] for link in after.get("links", [])}),
        "steps_per_exchange": after.get("steps_per_exchange"),
        "mixing_cpu": after.get("mixing_cpu"),
    }


def speed_task(label: str, workdir: Path) -> tuple[Path, str | None]:
    """The model's task file as it ships; without ../shared's MNIST, its [data] swapped for the embedded set."""
    task = REPO / "tasks" / SPEED_TASKS[label]
    if (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        return task, str(SHARED_MNIST)
    text, embedded = task.read_text(), (REPO / "gossipd" / "embedded" / "default.toml").read_text()
    data = embedded[embedded.index("[data]") : embedded.index("[model]")]
    swapped = workdir / f"embedded-{SPEED_TASKS[label]}"
    swapped.write_text(text[: text.index("[data]")] + data + text[text.index("[model]") :])
    return swapped, None


def training_speed(label: str, workdir: Path, gossip_extra: str = "") -> dict[str, Any]:
    import torch

    task, data = speed_task(label, workdir)
    cores = sorted(os.sched_getaffinity(0))
    name = SPEED_TASKS[label].removesuffix(".toml")
    print(f"  {label}: bare loop, then two daemons mixing ...", flush=True)
    speed: dict[str, Any] = {
        "bare": bare_samples_per_second(task, data, "cpu", cores[0]),
        "daemon": daemon_samples_per_second(task, data, "cpu", workdir / name, gossip_extra),
    }
    if torch.cuda.is_available():
        speed["cuda"] = {
            "bare": bare_samples_per_second(task, data, "cuda", None),
            "daemon": daemon_samples_per_second(task, data, "cuda", workdir / f"{name}-cuda", gossip_extra),
        }
    print(f"  {label}: {json.dumps(speed)}", flush=True)
    return speed


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
    label: str, gossip: str | None, task: Path, data: str | None, target: float, limit: float, workdir: Path
) -> dict[str, Any]:
    # Evaluate often enough to time the target, on enough held-out images to trust it.
    text = with_gossip(task.read_text(), gossip, "eval_every = 200\neval_samples = 5000")
    name = "".join(c if c.isalnum() else "-" for c in label)
    task_file = workdir / f"{name}.toml"
    task_file.write_text(text)
    swarm = Swarm(workdir=workdir / name, task=str(task_file), size=4, extra=["--data", data] if data else [])
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=float, default=600.0, help="seconds allowed per accuracy run")
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--speed-only", action="store_true", help="training speed only; BENCHMARKS.md left alone")
    parser.add_argument(
        "--gossip-extra", default="", help="TOML lines added to the speed runs' [gossip] (an experiment: no write)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the section and the race's plot from out/bench.json"
    )
    args = parser.parse_args()
    if args.report_only:
        publish(load_record(OUT / "bench.json", RECORD_KEYS, target="bench"), args)
        return
    # SIGTERM (kill, timeout) as Ctrl-C: the daemons are stopped and the work folder goes, however it ends.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    if args.speed_only or args.gossip_extra:
        args.no_write = True
    task, data = task_and_data()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gossipd-bench-", dir="/tmp"))
    try:  # the daemons' folders (about 100 MB) go however the run ends
        measure(args, task, data, started, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(args: argparse.Namespace, task: Path, data: str | None, started: float, workdir: Path) -> None:
    print("1/3 training speed ...", flush=True)
    speed = {label: training_speed(label, workdir, args.gossip_extra) for label in SPEED_TASKS}
    if args.speed_only:
        return
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
    results = {
        "speed": speed,
        "throughput": flow,
        "accuracy": runs,
        "dataset": dataset,
        "measured": datetime.date.today().isoformat(),
        "machine": machine(),
        "cores": cpu_count(),
        "wall_seconds": time.monotonic() - started,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "bench.json").write_text(json.dumps(results, indent=1))
    publish(results, args)


def publish(results: dict[str, Any], args: argparse.Namespace) -> None:
    """The section from one run's results, printed and (unless --no-write) in BENCHMARKS.md, with the race's
    plot in docs/."""
    figure = "docs/bench-daemon-race.png" if results["accuracy"] else None
    if figure is not None and not args.no_write:  # a run that leaves BENCHMARKS.md alone leaves its plot too
        plot(results["accuracy"], REPO / figure, dataset=results["dataset"])
    text = report(
        results,
        elapsed=results["wall_seconds"],
        when=datetime.date.fromisoformat(results["measured"]),
        machine=results["machine"],
        cores=results["cores"],
        figure=figure,
    )
    print(text)
    if not args.no_write:
        replace_section(
            REPO / "BENCHMARKS.md", "bench-daemon", text, title="Benchmarks", heading="## Daemons on loopback"
        )


if __name__ == "__main__":
    main()
