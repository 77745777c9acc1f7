"""`make bench-attach`: what attaching a training script to gossipd costs it, every figure from one run.

1. Steps/s of a script of its own (`scripts/attached_mnist.py`: the task's model, SGD, batch 32, one torch
   thread) attached to its daemon with mixing on, against the same script bare on the same core. Two
   daemons without a task of their own and two attached scripts; script 0 and daemon 0 share core 0 (so
   the daemon's mixing competes with the script's training, as on a one-core peer), the pair on core 1 is
   the neighbour. The task mixes as its built-in twin does (PowerGossip rank 1, float16, an exchange every
   2 steps). For the small CNN and the 1.2M-parameter CNN of PyTorch's MNIST example. Goal ≥ 0.9.
2. What moving the model between script and daemon costs: a sync of the whole model into the shared
   memory (what a step does for an exchange) against the same bytes through a Unix socket.

Median of `--repeats` runs (3). Prints the results, writes out/bench-attach.json and the attach section of
BENCHMARKS.md. Needs the full MNIST in ../shared/datasets/mnist.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from gossipd.adapters.shared_memory import SharedState, create_memory
from gossipd.attached import _model_entries, copy_out
from gossipd.data.spec import InputSpec
from gossipd.models.registry import build_model
from gossipd.task.loader import load_task
from gossipd.tools.reporting import machine, replace_section
from gossipd.tools.swarm import Swarm, tail
from gossipd.wire import attach as proto

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"
OUT = REPO / "out"
SCRIPT = REPO / "scripts" / "attached_mnist.py"
MODELS = {
    "cnn": (REPO / "tasks" / "mnist-cnn.toml", 1500, 100),  # task, steps, warm-up steps
    "cnn-pytorch-example": (REPO / "tasks" / "mnist-pytorch-example.toml", 500, 50),
}
HEADING = "## A script of its own, attached (`gossipd.attach`)"


def attached_task(task: Path) -> str:
    """An attached task that mixes as the built-in task file does: its [gossip] section, no model or data."""
    text = task.read_text()
    gossip = text[text.index("[gossip]") :]
    return f'[task]\nid = "bench-attach-{task.stem}"\n\n{gossip}'


def run_script(argv: list[str], core: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        )


def wait(process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    code = process.wait(timeout)
    if code != 0:
        raise RuntimeError(f"{SCRIPT.name} exited {code}:\n{tail(log, 30)}")


def bare(task: Path, steps: int, warmup: int, core: int, workdir: Path) -> float:
    out = workdir / "bare.json"
    argv = ["--task", str(task), "--data", str(SHARED_MNIST), "--steps", str(steps), "--warmup", str(warmup)]
    argv += ["--index", "0", "--count", "2", "--out", str(out)]
    process = run_script(argv, core, workdir / "bare.log")
    wait(process, workdir / "bare.log", 1800)
    return float(json.loads(out.read_text())["steps_per_second"])


def attached(task: Path, steps: int, warmup: int, cores: list[int], workdir: Path) -> dict[str, float]:
    attach = workdir / "attach.toml"
    attach.write_text(attached_task(task))
    swarm = Swarm(
        workdir=workdir / "swarm",
        size=2,
        partition=False,
        extra=["--no-task", "--join-timeout", "0", "--threads", "1"],
        affinity=lambda i: {cores[i % len(cores)]},
    )
    processes = []
    try:
        swarm.start_without_tasks()
        for index, daemon in enumerate(swarm.daemons):
            argv = ["--task", str(task), "--data", str(SHARED_MNIST), "--steps", str(steps)]
            argv += ["--warmup", str(warmup), "--index", str(index), "--count", "2"]
            argv += ["--attach", str(attach), "--socket", str(daemon.socket), "--out", str(workdir / f"{index}.json")]
            processes.append(run_script(argv, cores[index % len(cores)], workdir / f"script-{index}.log"))
        last: dict[str, Any] = {}
        while processes[0].poll() is None:  # the daemon's figures while the script is still attached
            status = swarm.daemons[0].status()
            if status and status["tasks"]:
                last = status["tasks"][0]
            time.sleep(0.5)
        for index, process in enumerate(processes):
            wait(process, workdir / f"script-{index}.log", 1800)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        swarm.stop()
    result = json.loads((workdir / "0.json").read_text())
    return {
        "steps_per_second": float(result["steps_per_second"]),
        "exchanges": float(last.get("exchanges", 0)),
        "mix_wait_seconds": float(last.get("mix_wait_seconds", 0.0)),
        "bytes_sent": float(last.get("bytes_sent", 0)),
    }


def transfer_costs(model_name: str, repeats: int = 30) -> dict[str, float]:
    """Milliseconds to move the model's parameters into the shared memory (a step's sync), against the same
    bytes through a Unix socket pair (sent by one thread, received by another)."""
    loaded = load_task(MODELS[model_name][0])
    model = build_model(loaded.model, InputSpec(kind="classification", input_shape=(1, 28, 28), num_classes=10), 0)
    tensors, entries = _model_entries(model)
    layout = proto.SharedLayout.of(entries)
    fd = create_memory(layout.total_bytes)
    shared = SharedState(fd, layout)
    os.close(fd)
    memory = []
    for _ in range(repeats):
        started = time.perf_counter()
        for entry in layout.parameters:
            copy_out(tensors[entry.name], shared.out[entry.name])
        memory.append(time.perf_counter() - started)
    shared.close()
    payload = b"".join(tensors[e.name].detach().numpy().tobytes() for e in layout.parameters)
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    buffer = bytearray(len(payload))
    through_socket = []
    for _ in range(repeats):
        started = time.perf_counter()
        thread = threading.Thread(target=sender.sendall, args=(payload,))
        thread.start()
        view, got = memoryview(buffer), 0
        while got < len(payload):
            got += receiver.recv_into(view[got:])
        thread.join()
        through_socket.append(time.perf_counter() - started)
    sender.close()
    receiver.close()
    return {
        "bytes": float(len(payload)),
        "shared_memory_ms": 1000 * statistics.median(memory),
        "socket_ms": 1000 * statistics.median(through_socket),
    }


def report(results: dict[str, Any]) -> str:
    lines = [
        f"Measured {results['date']} on {results['machine']}; `make bench-attach`, median of {results['repeats']} "
        "runs. A script of its own (`scripts/attached_mnist.py`: the model of the task file, SGD lr 0.05 "
        "momentum 0.9, batch 32, one torch thread, its own shuffling of half of MNIST) attached to a daemon "
        "started with `--no-task`, against the same script bare on the same core. Script 0 and its daemon "
        "share core 0 (the daemon's mixing competes with training, as on a one-core peer); the neighbour "
        "pair runs on core 1. The attached task mixes as the model's built-in task file does (PowerGossip "
        "rank 1, float16, an exchange every 2 steps). *Held* is time script 0 waited for a mix.",
        "",
        "| model | parameters | bare, steps/s | attached, steps/s | ratio (runs) | exchanges | held |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in results["models"].items():
        runs = ", ".join(f"{r:.2f}" for r in row["ratios"])
        lines.append(
            f"| {name} | {row['parameters']:,} | {row['bare']:.1f} | {row['attached']:.1f} | "
            f"**{row['ratio']:.2f}** ({runs}) | {row['exchanges']:.0f} | {row['held']:.1f} s |"
        )
    lines.append("")
    for name, row in results["models"].items():
        verdict = "met" if row["ratio"] >= 0.9 else "not met"
        lines.append(f"- Steps/s attached against bare, {name} (goal ≥ 0.9): {row['ratio']:.2f}, **{verdict}**.")
    cost = results["transfer"]
    lines += [
        "",
        f"Moving the 1.2M-parameter CNN's parameters ({cost['bytes'] / 1e6:.1f} MB) from the script to the "
        f"daemon, median of 30: {cost['shared_memory_ms']:.2f} ms into the shared memory, "
        f"{cost['socket_ms']:.2f} ms through a Unix socket (one thread sending, one receiving), which is why "
        "tensors travel through shared memory (protocols/attach-v1.md).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the report, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"bench-attach needs the full MNIST in {SHARED_MNIST}")
    cores = sorted(os.sched_getaffinity(0))
    models: dict[str, Any] = {}
    for name in args.models.split(","):
        task, steps, warmup = MODELS[name]
        ratios, bares, attacheds, exchanges, held = [], [], [], [], []
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="gd-bench-attach-", dir="/tmp") as folder:
                workdir = Path(folder)
                print(f"bench-attach: {name}, run {repeat + 1}/{args.repeats}: bare", file=sys.stderr, flush=True)
                speed = bare(task, steps, warmup, cores[0], workdir)
                print(f"  {speed:.1f} steps/s; attached", file=sys.stderr, flush=True)
                mixed = attached(task, steps, warmup, cores, workdir)
                print(
                    f"  {mixed['steps_per_second']:.1f} steps/s, {mixed['exchanges']:.0f} exchanges",
                    file=sys.stderr,
                    flush=True,
                )
            bares.append(speed)
            attacheds.append(mixed["steps_per_second"])
            ratios.append(mixed["steps_per_second"] / speed)
            exchanges.append(mixed["exchanges"])
            held.append(mixed["mix_wait_seconds"])
        model = build_model(
            load_task(task).model, InputSpec(kind="classification", input_shape=(1, 28, 28), num_classes=10), 0
        )
        models[name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "bare": statistics.median(bares),
            "attached": statistics.median(attacheds),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
            "exchanges": statistics.median(exchanges),
            "held": statistics.median(held),
        }
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "repeats": args.repeats,
        "models": models,
        "transfer": transfer_costs("cnn-pytorch-example"),
        "torch": torch.__version__,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "bench-attach.json").write_text(json.dumps(results, indent=1))
    text = report(results)
    print(text)
    if not args.no_write:
        replace_section(REPO / "BENCHMARKS.md", "attach", text, title="Benchmarks", heading=HEADING)


if __name__ == "__main__":
    main()
