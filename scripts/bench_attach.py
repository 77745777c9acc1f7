"""`make bench-attach`: what attaching a training script to gossipd costs it, every figure from one run.

1. Steps/s of a script of its own (`scripts/attached_mnist.py`: the task's model, SGD, batch 32, one torch
   thread) attached to its daemon, against the same script bare on the same core, in three setups:
   - *alone*: one daemon, no neighbour: what attaching itself costs (no exchange happens);
   - *paced*: two daemons without a task of their own and two attached scripts; script 0 and daemon 0
     share core 0 (so the daemon's mixing competes with the script's training, as on a one-core peer), the
     pair on core 1 is the neighbour; the task mixes as its built-in twin does (its `[gossip]` section:
     `auto`, an exchange every 2 steps, as the task files ship);
   - *budget*: as paced, with `[gossip] cpu_budget = 0.05` (mixing may take 5% of a busy core; the steps
     between exchanges stretch to keep it there).
   For the small CNN and the 1.2M-parameter CNN of PyTorch's MNIST example. Goal ≥ 0.9. Bare runs go
   before, between and after the attached ones, and each attached run is set against the mean of the two
   bare runs around it: this machine's speed drifts by 10-20% over minutes.
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
BUDGET = 0.05
SETUPS = {  # name: (neighbour, [gossip] lines added)
    "alone": (False, ""),
    "paced": (True, ""),
    "budget": (True, f"cpu_budget = {BUDGET}\n"),
}


def attached_task(task: Path, extra: str = "") -> str:
    """An attached task that mixes as the built-in task file does: its [gossip] section (and `extra` lines
    in it), no model or data."""
    text = task.read_text()
    start = text.index("[gossip]")
    end = text.find("\n[", start + 1)
    gossip = text[start:] if end < 0 else text[start : end + 1]
    rest = "" if end < 0 else text[end + 1 :]
    return f'[task]\nid = "bench-attach-{task.stem}"\n\n{gossip.rstrip()}\n{extra}\n{rest}'


def gossip_of(task: Path) -> str:
    """How a task file mixes, in words: its algorithm and pace."""
    gossip = load_task(task).gossip
    every = gossip.steps_per_exchange
    pace = f"an exchange every {every} steps" if every else f"an exchange every {gossip.exchange_interval} s"
    return f"`{gossip.algorithm}`, {pace}"


def cpu_seconds(pid: int) -> float:
    """CPU seconds process `pid` has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def attached(
    task: Path, steps: int, warmup: int, cores: list[int], workdir: Path, *, neighbour: bool, extra: str
) -> dict[str, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    attach = workdir / "attach.toml"
    attach.write_text(attached_task(task, extra))
    swarm = Swarm(
        workdir=workdir / "swarm",
        size=2 if neighbour else 1,
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
        first: tuple[int, float] | None = None  # script 0's step and daemon 0's CPU seconds once it trains
        daemon_pid = swarm.daemons[0].process.pid
        while processes[0].poll() is None:  # the daemon's figures while the script is still attached
            status = swarm.daemons[0].status()
            if status and status["tasks"]:
                last = status["tasks"][0]
                if first is None and last["step"] > 0:
                    first = (last["step"], cpu_seconds(daemon_pid))
                last["daemon_cpu"] = cpu_seconds(daemon_pid)
            time.sleep(0.5)
        for index, process in enumerate(processes):
            wait(process, workdir / f"script-{index}.log", 1800)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        swarm.stop()
    result = json.loads((workdir / "0.json").read_text())
    steps_seen = last.get("step", 0) - (first[0] if first else 0)
    daemon_ms = 1000 * (last.get("daemon_cpu", 0.0) - first[1]) / steps_seen if first and steps_seen > 0 else 0.0
    return {
        "steps_per_second": float(result["steps_per_second"]),
        "daemon_ms_per_step": daemon_ms,
        "exchanges": float(last.get("exchanges", 0)),
        "mix_wait_seconds": float(last.get("mix_wait_seconds", 0.0)),
        "bytes_sent": float(last.get("bytes_sent", 0)),
        "steps_per_exchange": float(last.get("steps_per_exchange") or 0),
        "mixing_cpu": float(last.get("mixing_cpu") or 0.0),
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
        "started with `--no-task`, against the same script bare on the same core (bare runs before and after "
        "each attached one; the ratio is against their mean). *Alone*: no neighbour, so no exchange: what "
        "attaching costs. *Paced*: script 0 and its daemon share core 0, as on a one-core peer, and the "
        f"neighbour pair runs on core 1; the task mixes as the model's built-in task file does ({results['gossip']}). "
        f"*Budget*: the same with `[gossip] cpu_budget = {BUDGET}`. "
        "*Daemon* is daemon 0's CPU time per step of its script; *every* the steps between exchanges at the end.",
        "",
        "| model | setup | bare, steps/s | attached, steps/s | ratio (runs) | exchanges | every | daemon, ms/step |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, model in results["models"].items():
        for setup, row in model["setups"].items():
            runs = ", ".join(f"{r:.2f}" for r in row["ratios"])
            every = f"{row['steps_per_exchange']:.0f}" if row["steps_per_exchange"] else "—"
            lines.append(
                f"| {name} ({model['parameters']:,}) | {setup} | {row['bare']:.1f} | {row['attached']:.1f} | "
                f"**{row['ratio']:.2f}** ({runs}) | {row['exchanges']:.0f} | {every} | {row['daemon_ms']:.2f} |"
            )
    lines.append("")
    for name, model in results["models"].items():
        parts = []
        for setup, row in model["setups"].items():
            verdict = "met" if row["ratio"] >= 0.9 else "not met"
            parts.append(f"{setup} {row['ratio']:.2f}, **{verdict}**")
        lines.append(f"- Steps/s attached against bare, {name} (goal ≥ 0.9): {'; '.join(parts)}.")
    cost = results["transfer"]
    lines += [
        "",
        f"Moving the 1.2M-parameter CNN's parameters ({cost['bytes'] / 1e6:.1f} MB) from the script to the "
        f"daemon, median of 30: {cost['shared_memory_ms']:.2f} ms into the shared memory, "
        f"{cost['socket_ms']:.2f} ms through a Unix socket (one thread sending, one receiving), which is why "
        "tensors travel through shared memory (protocols/attach-v2.md).",
    ]
    return "\n".join(lines)


def measure(name: str, setups: list[str], repeats: int, cores: list[int]) -> dict[str, Any]:
    """Every setup of one model, `repeats` times, each attached run between two bare ones."""
    task, steps, warmup = MODELS[name]
    runs: dict[str, list[dict[str, float]]] = {setup: [] for setup in setups}
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory(prefix="gd-bench-attach-", dir="/tmp") as folder:
            workdir = Path(folder)
            say(f"bench-attach: {name}, run {repeat + 1}/{repeats}: bare")
            before = bare(task, steps, warmup, cores[0], workdir)
            say(f"  {before:.1f} steps/s")
            for setup in setups:
                neighbour, extra = SETUPS[setup]
                say(f"  {setup}")
                mixed = attached(task, steps, warmup, cores, workdir / setup, neighbour=neighbour, extra=extra)
                after = bare(task, steps, warmup, cores[0], workdir)
                mixed["bare"] = (before + after) / 2
                mixed["ratio"] = mixed["steps_per_second"] / mixed["bare"]
                say(
                    f"  {mixed['steps_per_second']:.1f} steps/s, {mixed['exchanges']:.0f} exchanges, every "
                    f"{mixed['steps_per_exchange']:.0f} steps, daemon {mixed['daemon_ms_per_step']:.2f} ms/step; "
                    f"bare {after:.1f}: ratio {mixed['ratio']:.2f}"
                )
                runs[setup].append(mixed)
                before = after
    model = build_model(
        load_task(task).model, InputSpec(kind="classification", input_shape=(1, 28, 28), num_classes=10), 0
    )
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "setups": {
            setup: {
                "bare": statistics.median(r["bare"] for r in rows),
                "attached": statistics.median(r["steps_per_second"] for r in rows),
                "ratio": statistics.median(r["ratio"] for r in rows),
                "ratios": [r["ratio"] for r in rows],
                "exchanges": statistics.median(r["exchanges"] for r in rows),
                "steps_per_exchange": statistics.median(r["steps_per_exchange"] for r in rows),
                "daemon_ms": statistics.median(r["daemon_ms_per_step"] for r in rows),
                "held": statistics.median(r["mix_wait_seconds"] for r in rows),
            }
            for setup, rows in runs.items()
        },
    }


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the report, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"bench-attach needs the full MNIST in {SHARED_MNIST}")
    cores = sorted(os.sched_getaffinity(0))
    setups = args.setups.split(",")
    models = {name: measure(name, setups, args.repeats, cores) for name in args.models.split(",")}
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "repeats": args.repeats,
        "models": models,
        "transfer": transfer_costs("cnn-pytorch-example"),
        "gossip": "; ".join(sorted({gossip_of(MODELS[name][0]) for name in models})),
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
