"""`make bench-sim`: the mixing algorithms side by side in the in-process simulator.

8 peers on the MNIST CNN (full MNIST from ../shared/datasets/mnist when present, else the embedded 10k
images), IID and Dirichlet(0.5) splits: plain, PowerGossip rank 1 and 2, Choco sign, sign:64 and top-1%,
against centralised training on the same samples and peers training alone. Prints a markdown table, writes
out/bench-sim.json, draws one plot per split (docs/bench-sim-*.png) and replaces the simulator section of
BENCHMARKS.md (`--report-only` redraws both from out/bench-sim.json). Also measures what one PowerGossip
exchange costs a peer against one local training step, in the same process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from gossipd.tools.bench_sim_plot import plot
from gossipd.tools.reporting import load_record, machine, replace_section

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"
OUT = REPO / "out"
DOCS = REPO / "docs"
# What --report-only needs of the run's record.
RECORD_KEYS = (
    "measured",
    "machine",
    "wall_seconds",
    "workers",
    "partitions",
    "finish_rounds",
    "full_data",
    "reports",
    "mixing_cost",
)

CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("plain", "plain", {}),
    # The default: each edge picks its mode against the measured exchange and step times (links cost no
    # time here, only the exchange's CPU: see `gossipd simulate --link-mbit`).
    ("auto", "auto", {}),
    ("PowerGossip r1", "powergossip", {"rank": 1, "iterations": 1}),
    ("PowerGossip r1 ×2 it.", "powergossip", {"rank": 1, "iterations": 2}),
    ("PowerGossip r2", "powergossip", {"rank": 2, "iterations": 1}),
    ("Choco sign", "choco", {"compressor": "sign", "gamma": 0.45}),
    ("Choco sign:64 (its default)", "choco", {"compressor": "sign:64", "gamma": 0.45}),
    ("Choco top-1%", "choco", {"compressor": "top-k:1%", "gamma": 0.1}),
    ("local only", "local", {}),
]


def task_and_data_root() -> tuple[Path, str | None]:
    if (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        return REPO / "tasks" / "mnist-cnn.toml", str(SHARED_MNIST)
    return REPO / "gossipd" / "embedded" / "default.toml", None


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from gossipd.data.registry import load_data
    from gossipd.sim.progress import Progress
    from gossipd.sim.simulator import MEASURED, Simulation, SimulationConfig
    from gossipd.task.loader import load_task
    from gossipd.task.overrides import with_gossip

    task = load_task(job["task"], data_root=job["data_root"])
    if job["algorithm"] != "local":
        task = with_gossip(task, job["algorithm"], job["options"])
    data = load_data(task.data, task.task.seed)
    config = SimulationConfig(
        timing=MEASURED,  # as daemons on this machine would time them
        peers=job["peers"],
        rounds=job["rounds"],
        partition=job["partition"],
        seed=job["seed"],
        mix=job["algorithm"] != "local",
        centralised=job["centralised"],
        eval_every=job["rounds"] // 4,
        finish_rounds=job["finish_rounds"],
    )
    label = job["label"]

    def say(line: str) -> None:
        print(f"  {label}: {line}", file=sys.stderr, flush=True)

    report = Simulation(task, data, config).run(progress=Progress(job["rounds"], say, every=30.0)).to_json()
    report["label"] = job["label"]
    return report


def mixing_cost(task_path: Path, data_root: str | None, repeats: int) -> dict[str, float]:
    """Seconds one peer spends on its end of a PowerGossip exchange (rank 1 with 1 and 2 iterations, rank 2
    with 1; codec included) against one local training step, measured interleaved in this process on one
    thread."""
    import torch

    torch.set_num_threads(1)
    from gossipd.data.registry import load_data, peer_shard
    from gossipd.mixing.layout import ParamLayout, max_message_bytes, mixed_parameters
    from gossipd.mixing.local import run_pair
    from gossipd.mixing.powergossip import PowerGossip, PowerGossipConfig
    from gossipd.mixing.session import ExchangeSession
    from gossipd.models.registry import build_model
    from gossipd.task.loader import load_task
    from gossipd.train.trainer import Trainer

    task = load_task(task_path, data_root=data_root)
    data = load_data(task.data, task.task.seed)
    trainers = [
        Trainer(
            build_model(task.model, data.spec, task.task.seed),
            task.train,
            peer_shard(data, "iid", i, 2, 0),
            kind=data.spec.kind,
            device=torch.device("cpu"),
            seed=i,
        )
        for i in range(2)
    ]
    layout = ParamLayout.of(mixed_parameters(trainers[0].model))
    result: dict[str, float] = {}
    for rank, iterations in ((1, 1), (1, 2), (2, 1)):
        algorithm = PowerGossip(PowerGossipConfig(rank=rank, iterations=iterations))
        edges: list[Any] = [None, None]
        train_times, mix_times = [], []
        rng = random.Random(0)
        for _ in range(repeats):
            tick = time.perf_counter()
            trainers[0].train_steps(1)
            train_times.append(time.perf_counter() - tick)
            trainers[1].train_steps(1)
            ends = [
                ExchangeSession(
                    algorithm=algorithm,
                    params=mixed_parameters(trainers[i].model),
                    layout=layout,
                    self_id=bytes([i]),
                    peer_id=bytes([1 - i]),
                    edge=edges[i],
                    degree=1,
                    task=task.hash,
                    fixed_weight=None,
                    rng=rng,
                    device=torch.device("cpu"),
                )
                for i in (0, 1)
            ]
            tick = time.perf_counter()
            run_pair(ends[0], ends[1], max_message_bytes=max_message_bytes(layout))
            for i in (0, 1):
                outcome = ends[i].result()
                edges[i] = outcome.edge
                trainers[i].apply_delta(outcome.delta)
            mix_times.append((time.perf_counter() - tick) / 2)  # both ends ran here: one end's share
        result["train_step_s"] = statistics.median(train_times)
        result[f"exchange_end_s_r{rank}i{iterations}"] = statistics.median(mix_times)
    return result


def table(reports: list[dict[str, Any]], partition: str) -> list[str]:
    rows = [r for r in reports if r["partition"] == partition]
    centralised = next((r["centralised_accuracy"] for r in rows if r["centralised_accuracy"] is not None), None)
    lines = [
        f"**{partition}** — centralised (same samples, one model, batch 8×32): "
        + (f"**{centralised:.4f}**" if centralised is not None else "n/a"),
        "",
        "| configuration | bytes / exchange | compression | mean acc. at stop | mean acc. | worst acc. "
        "| consensus dist. | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = f"{r['compression_ratio']:.1f}×" if r["exchanges"] else "—"
        per_exchange = f"{r['bytes_per_exchange']:,.0f}" if r["exchanges"] else "—"
        stopped = r["stopped_mean_accuracy"]
        at_stop = f"{stopped:.4f}" if stopped is not None else "—"
        lines.append(
            f"| {r['label']} | {per_exchange} | {ratio} | {at_stop} | {r['mean_accuracy']:.4f} "
            f"| {r['worst_accuracy']:.4f} "
            f"| {r['consensus_distance_end']:.3g} | {r['wall_seconds']:.0f} |"
        )
    return lines


def report(record: dict[str, Any], *, draw: bool) -> str:
    """The section's text from a run's record (out/bench-sim.json), linking one plot per split, which it draws
    into docs/ if `draw` (not for a run that leaves BENCHMARKS.md alone: its plots would replace the section's)."""
    reports, cost, partitions = record["reports"], record["mixing_cost"], record["partitions"]
    rounds, finish_rounds = reports[0]["steps"], record["finish_rounds"]
    every = reports[0]["steps_per_exchange"]
    pace = f"each peer starts an exchange every {every} steps, the task's pace" if every else "one exchange each"
    full = record["full_data"]
    dataset = "full MNIST (60k train / 10k test)" if full else "embedded MNIST 10k (85% train / 15% test)"
    lines = [
        f"Measured {record['measured']} on {record['machine']}; `make bench-sim` "
        f"({record['wall_seconds'] / 60:.0f} min, {record['workers']} runs in parallel, one torch thread each).",
        f"8 peers, small CNN (114k parameters), {dataset}, SGD lr 0.05 momentum 0.9, batch 32 per peer, "
        f"{rounds} rounds (one local step per peer per round; {pace}), view of 6.",
        f"Then {finish_rounds} rounds of exchanges alone, as a daemon past its training budget finishes "
        "(`gossipd simulate --finish-rounds`): *at stop* is the mean accuracy as training stopped, the other "
        "figures are after the finish.",
        "Bytes count both directions of an exchange, msgpack framing included; Choco's average includes the "
        "full-precision swap that opens each edge.",
        "",
    ]
    for partition in partitions:
        name = f"bench-sim-{partition.replace(':', '')}.png"
        if draw:
            plot(reports, partition, DOCS / name, title=f"MNIST, small CNN, 8 simulated peers, {partition} split")
        figure = f"![accuracy against bytes per exchange, {partition}](docs/{name})"
        lines += [*table(reports, partition), "", figure, ""]
    step = cost["train_step_s"]
    parts = [
        f"{label}: {cost[key] * 1e3:.2f} ms (**{cost[key] / step:.1%}**)"
        for label, key in (
            ("rank 1, 1 iteration", "exchange_end_s_r1i1"),
            ("rank 1, 2 iterations", "exchange_end_s_r1i2"),
            ("rank 2, 1 iteration (the default task)", "exchange_end_s_r2i1"),
        )
    ]
    lines += [
        "Mixing cost per peer on the CNN: one end of a PowerGossip exchange, codec included, against "
        f"{step * 1e3:.2f} ms for one local training step — " + "; ".join(parts) + " (medians of 200, one thread).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=0, help="rounds per run (default: 600 full, 300 embedded)")
    parser.add_argument(
        "--finish-rounds",
        type=int,
        default=25,
        help="rounds of mixing alone after training, as a daemon finishes (25 rounds ≈ its 50 exchanges)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partitions", default="iid,dirichlet:0.5")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the section and plots from out/bench-sim.json, run nothing"
    )
    args = parser.parse_args()

    record = load_record(OUT / "bench-sim.json", RECORD_KEYS, target="bench-sim") if args.report_only else measure(args)
    text = report(record, draw=not args.no_write)
    print(text)
    if not args.no_write:
        replace_section(
            REPO / "BENCHMARKS.md", "bench-sim", text, title="Benchmarks", heading="## Simulator: mixing algorithms"
        )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every configuration on every split and the mixing cost; the record, also written to
    out/bench-sim.json."""
    task_path, data_root = task_and_data_root()
    rounds = args.rounds or (600 if data_root else 300)
    partitions = args.partitions.split(",")
    jobs = []
    for partition in partitions:
        for index, (label, algorithm, options) in enumerate(CONFIGS):
            jobs.append(
                {
                    "label": label,
                    "algorithm": algorithm,
                    "options": options,
                    "task": str(task_path),
                    "data_root": data_root,
                    "peers": 8,
                    "rounds": rounds,
                    "finish_rounds": args.finish_rounds,
                    "partition": partition,
                    "seed": 0,
                    "centralised": index == 0,
                }
            )
    started = time.perf_counter()
    print(f"bench-sim: {len(jobs)} runs of 8 peers × {rounds} rounds on {task_path.name}", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        reports = list(pool.map(run_one, jobs))
    cost = mixing_cost(task_path, data_root, repeats=200)
    record = {
        "measured": datetime.date.today().isoformat(),
        "machine": machine(),
        "wall_seconds": time.perf_counter() - started,
        "workers": args.workers,
        "partitions": partitions,
        "finish_rounds": args.finish_rounds,
        "full_data": data_root is not None,
        "reports": reports,
        "mixing_cost": cost,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "bench-sim.json").write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
