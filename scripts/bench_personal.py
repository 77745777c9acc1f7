"""`make bench-personal`: what a personal last layer (`[gossip] personal`) buys on skewed splits.

8 simulated peers, the MNIST CNN (tasks/mnist-cnn.toml on full MNIST from ../shared/datasets/mnist, else
the embedded task on its 10k images), Dirichlet(0.1) and two-label shards. For each split two runs of the
same rounds and seed, so peer i holds the same examples in each: everything mixed (the shared model), and
the last layer (`classifier.3.*`) personal, fine-tuned alone for `--personal-steps` steps after the finish,
trained before it either with the rest on the peer's examples (`[train] personal_training = "local"`) or
held at its initial values (`"frozen"`, FedBABU). Several `--personal-steps` give a personal run of each.
Measured per peer: accuracy on the test set reweighted to its own label mix (gossipd.sim.own_distribution),
and for the personalised run the global test accuracy with the personal layer replaced by the peers'
average. The goal (issue 18): personalised ≥ shared + 2 points on the own distributions, and with the
averaged layer never more than 1 point below the shared model on the global test set.

Progress goes to stderr; the table to stdout, out/bench-personal.json, and BENCHMARKS.md's section with one
plot per split (docs/bench-personal-*.png); `--report-only` rebuilds the section and plots from the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench_sim import task_and_data_root  # the same task and data as the other simulator benchmarks

from gossipd.tools.bench_personal_plot import plot
from gossipd.tools.reporting import load_record, machine, replace_section

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "out"
DOCS = REPO / "docs"
HEAD = ("classifier.3.*",)  # the CNN's last layer
PARTITIONS = ("dirichlet:0.1", "shards:2")
# What --report-only needs of the run's record.
RECORD_KEYS = ("measured", "machine", "wall_seconds", "rounds", "finish_rounds", "full_data", "reports")


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from gossipd.data.registry import load_data
    from gossipd.sim.progress import Progress
    from gossipd.sim.simulator import MEASURED, Simulation, SimulationConfig
    from gossipd.task.loader import load_task
    from gossipd.task.overrides import with_personal

    task = with_personal(
        load_task(job["task"], data_root=job["data_root"]), job["personal"], job["personal_steps"], job["training"]
    )
    data = load_data(task.data, task.task.seed)
    config = SimulationConfig(
        timing=MEASURED,  # as daemons on this machine would time them
        peers=8,
        rounds=job["rounds"],
        partition=job["partition"],
        seed=0,
        centralised=False,
        finish_rounds=job["finish_rounds"],
    )
    label = f"{job['partition']} {job['label']} {job['personal_steps']}"

    def say(line: str) -> None:
        print(f"  {label}: {line}", file=sys.stderr, flush=True)

    report = Simulation(task, data, config).run(progress=Progress(job["rounds"], say, every=30.0)).to_json()
    report["label"] = job["label"]
    report["personal_steps"] = job["personal_steps"]
    return report


def points(value: float) -> str:
    return f"{value * 100:+.1f}"


def verdict(shared: dict[str, Any], personal: dict[str, Any]) -> dict[str, Any]:
    """The two goals, per peer (peer i holds the same examples in both runs) and on the means."""
    gains = [p - s for p, s in zip(personal["own_accuracies"], shared["own_accuracies"], strict=True)]
    losses = [shared["mean_accuracy"] - a for a in personal["averaged_personal_accuracies"]]
    return {
        "own_gain_mean": sum(gains) / len(gains),
        "own_gain_worst": min(gains),
        "averaged_loss_mean": sum(losses) / len(losses),
        "averaged_loss_worst": max(losses),
        "own_goal_met": min(gains) >= 0.02,
        "averaged_goal_met": max(losses) <= 0.01,
    }


def table(reports: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    lines = [
        "| split | model | global acc. | own-labels acc. mean (worst) | global, personal layer averaged "
        "| own gain, points: mean (worst peer) | averaged − shared, points: mean (worst peer) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts: dict[str, Any] = {}
    for partition in PARTITIONS:
        shared = next(r for r in reports if r["partition"] == partition and r["label"] == "shared")
        lines.append(
            f"| {partition} | shared | {shared['mean_accuracy']:.4f} | {shared['own_accuracy']:.4f} "
            f"({shared['worst_own_accuracy']:.4f}) | — | | |"
        )
        for personal in (r for r in reports if r["partition"] == partition and r["label"] != "shared"):
            name = f"{personal['label']}, {personal['personal_steps']} steps"
            v = verdicts[f"{partition} {name}"] = verdict(shared, personal)
            lines.append(
                f"| {partition} | last layer {name} | {personal['mean_accuracy']:.4f} "
                f"| {personal['own_accuracy']:.4f} ({personal['worst_own_accuracy']:.4f}) "
                f"| {personal['averaged_personal_accuracy']:.4f} "
                f"| {points(v['own_gain_mean'])} ({points(v['own_gain_worst'])}) "
                f"| {points(-v['averaged_loss_mean'])} ({points(-v['averaged_loss_worst'])}) |"
            )
    return lines, verdicts


def goal_lines(verdicts: dict[str, Any]) -> list[str]:
    """One line per goal of issue 18, each personal run's verdict on it by its worst peer."""

    def says(goal: str, worst: str, sign: int) -> str:
        return "; ".join(
            f"{run}: {'met' if v[goal] else 'NOT met'} ({points(sign * v[worst])})" for run, v in verdicts.items()
        )

    return [
        "Own labels, personalised ≥ shared + 2 points for every peer (worst peer's gain): "
        + says("own_goal_met", "own_gain_worst", 1)
        + ".",
        "",
        "Global, personal layer averaged ≥ shared − 1 point for every peer (worst peer's): "
        + says("averaged_goal_met", "averaged_loss_worst", -1)
        + ".",
    ]


TRAINING = ("local", "frozen")  # [train] personal_training of the personal runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--rounds",
        type=int,
        default=300,
        help="training rounds (one local step each; an exchange every `steps_per_exchange` steps a peer)",
    )
    parser.add_argument("--finish-rounds", type=int, default=25, help="rounds of mixing alone after training")
    parser.add_argument(
        "--personal-steps",
        type=int,
        nargs="+",
        default=[200, 50],
        help="fine-tuning of the personal layer (a run each)",
    )
    parser.add_argument("--training", nargs="+", choices=TRAINING, default=list(TRAINING), help="personal runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the section and plots from out/bench-personal.json"
    )
    args = parser.parse_args()

    record = (
        load_record(OUT / "bench-personal.json", RECORD_KEYS, target="bench-personal")
        if args.report_only
        else measure(args)
    )
    text = report(record, draw=not args.no_write)
    print(text)
    if not args.no_write:
        replace_section(
            REPO / "BENCHMARKS.md",
            "bench-personal",
            text,
            title="Benchmarks",
            heading="## Personal last layer (`[gossip] personal`)",
        )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every split's shared and personal runs; the record, also written to out/bench-personal.json."""
    task_path, data_root = task_and_data_root()
    kinds = [("shared", None, 0)] + [("personal " + t, t, n) for t in args.training for n in args.personal_steps]
    jobs = [
        {
            "label": label,
            "personal": HEAD if training else (),
            "training": training,
            "personal_steps": steps,
            "task": str(task_path),
            "data_root": data_root,
            "rounds": args.rounds,
            "finish_rounds": args.finish_rounds,
            "partition": partition,
        }
        for partition in PARTITIONS
        for label, training, steps in kinds
    ]
    started = time.perf_counter()
    print(f"bench-personal: {len(jobs)} runs of 8 peers × {args.rounds} rounds on {task_path.name}", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        reports = list(pool.map(run_one, jobs))
    record = {
        "measured": datetime.date.today().isoformat(),
        "machine": machine(),
        "wall_seconds": time.perf_counter() - started,
        "rounds": args.rounds,
        "finish_rounds": args.finish_rounds,
        "full_data": data_root is not None,
        "reports": reports,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "bench-personal.json").write_text(json.dumps(record, indent=1))
    return record


def report(record: dict[str, Any], *, draw: bool) -> str:
    """The section's text from a run's record, linking one plot per split, which it draws into docs/ if `draw`
    (not for a run that leaves BENCHMARKS.md alone: its plots would replace the section's)."""
    reports = record["reports"]
    rows, verdicts = table(reports)
    dataset = "full MNIST" if record["full_data"] else "embedded MNIST 10k"
    figures = []
    for partition in PARTITIONS:
        name = f"bench-personal-{partition.replace(':', '')}.png"
        title = f"MNIST, CNN, 8 simulated peers, {partition} split: a personal last layer against the shared model"
        if draw:
            plot(reports, partition, DOCS / name, title=title)
        figures.append(f"![each peer's gain and cost from a personal last layer, {partition}](docs/{name})")
    return "\n".join(
        [
            f"Measured {record['measured']} on {record['machine']}; `make bench-personal` "
            f"({record['wall_seconds'] / 60:.0f} min). 8 peers, CNN, {dataset}, PowerGossip r1, {record['rounds']} "
            f"rounds + {record['finish_rounds']} finish rounds; personal: `classifier.3.*`, trained with the rest "
            "(`local`) or held at its initial values (`frozen`) before the finish, then fine-tuned alone for the "
            "steps shown. Own-labels: test accuracy reweighted to each peer's label mix (same peers, same examples "
            "in every run); averaged: the personal layer replaced by the peers' mean.",
            "",
            *rows,
            "",
            *figures,
            "",
            *goal_lines(verdicts),
        ]
    )


if __name__ == "__main__":
    main()
