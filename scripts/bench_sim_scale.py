"""`make bench-sim-scale`: the simulator with hundreds of peers (issue 19's scale questions).

For each model (the MLP of tasks/mnist-mlp.toml, the small CNN of tasks/mnist-cnn.toml, each with its own
gossip settings) and each swarm size and view size: seconds per round, memory per simulated peer, held-out
accuracy and consensus distance, all for the same total samples as the 8-peer run (8 peers × R rounds;
N peers × 8R/N rounds, one batch per peer per round), so a bigger swarm is judged on the same compute and
data. Then one long run per model at the largest size, to see whether it converges given rounds: it trains
`--long-rounds` rounds, then mixes alone for `--finish-rounds` (the daemon's finish), and reports accuracy and
consensus both as training stopped and after the finish.

Each configuration runs in its own process (one torch thread), so its peak resident memory is its own:
*memory per peer* is (peak − resident before the peers were built) / N. With many peers only a fixed sample
of `--eval-peers` is scored (consensus is over all). Full MNIST from ../shared/datasets/mnist (skips with a
message when absent). Prints progress on stderr, a markdown table on stdout, writes out/bench-sim-scale.json
and, with --write, the section of BENCHMARKS.md with one plot per model (docs/bench-sim-scale-*.png);
--report-only rebuilds them from the JSON.

    python scripts/bench_sim_scale.py [--models cnn,mlp] [--sizes 8,256,1024] [--views 6] [--rounds8 1024]
                                      [--long-rounds 64] [--finish-rounds 25] [--eval-peers 32]
                                      [--write] [--report-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any

from gossipd.tools.bench_sim_scale_plot import plot
from gossipd.tools.reporting import load_record, machine, replace_section

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"
OUT = REPO / "out" / "bench-sim-scale.json"
DOCS = REPO / "docs"
TASKS = {"mlp": REPO / "tasks" / "mnist-mlp.toml", "cnn": REPO / "tasks" / "mnist-cnn.toml"}
# What --report-only needs of the run's record.
RECORD_KEYS = ("machine", "date", "rounds8", "runs")


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in a fresh process."""
    import torch

    torch.set_num_threads(1)
    from gossipd.data.registry import load_data
    from gossipd.sim.progress import Progress
    from gossipd.sim.simulator import MEASURED, Simulation, SimulationConfig
    from gossipd.task.loader import load_task

    task = load_task(job["task"], data_root=job["data_root"])
    task = dataclasses.replace(task, gossip=dataclasses.replace(task.gossip, view_size=job["view"]))
    data = load_data(task.data, task.task.seed)
    config = SimulationConfig(
        timing=MEASURED,  # as daemons on this machine would time them
        peers=job["peers"],
        rounds=job["rounds"],
        seed=0,
        centralised=False,
        eval_every=max(1, job["rounds"] // 4),
        eval_peers=job["eval_peers"],
        finish_rounds=job["finish_rounds"],
    )
    label = job["label"]

    def say(line: str) -> None:
        print(f"  {label}: {line}", file=sys.stderr, flush=True)

    before = resident_mb()
    tick = time.perf_counter()
    simulation = Simulation(task, data, config)
    built_seconds = time.perf_counter() - tick
    built = resident_mb()
    say(f"{job['peers']} peers built in {built_seconds:.0f} s, {built - before:.0f} MB")
    report = simulation.run(progress=Progress(job["rounds"], say, every=30.0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Training and mixing only (the evaluations every quarter are left out).
    train_seconds = report.train_seconds_per_step * report.peers * report.local_steps * report.steps
    mix_seconds = report.mix_seconds_per_exchange * report.exchanges
    return {
        **{k: job[k] for k in ("label", "model", "peers", "view", "rounds")},
        "algorithm": report.algorithm,
        "modes": report.modes,
        "mean_accuracy": report.mean_accuracy,
        "worst_accuracy": report.worst_accuracy,
        "evaluated_peers": report.evaluated_peers,
        "consensus_start": report.consensus_distance_start,
        "consensus_end": report.consensus_distance_end,
        # With finish rounds: as training stopped (the last round's record; the finish records none).
        "finish_rounds": job["finish_rounds"],
        "stopped_mean_accuracy": report.stopped_mean_accuracy,
        "consensus_stop": report.history[-1].consensus_distance if report.history else None,
        "history": [dataclasses.asdict(r) for r in report.history],
        "wall_seconds": report.wall_seconds,
        "seconds_per_round": (train_seconds + mix_seconds) / max(1, report.steps),
        "train_share": train_seconds / max(1e-9, train_seconds + mix_seconds),
        "exchanges": report.exchanges,
        "mix_seconds_per_exchange": report.mix_seconds_per_exchange,
        "resident_before_mb": before,
        "resident_built_mb": built,
        "peak_mb": peak,
        "mb_per_peer": (peak - before) / job["peers"],
        "built_mb_per_peer": (built - before) / job["peers"],
    }


def jobs_for(args: argparse.Namespace, data_root: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    sizes = [int(s) for s in args.sizes.split(",")]
    total = 8 * args.rounds8  # peer-rounds: each is one batch of local steps
    for model in args.models.split(","):
        for peers in sizes:
            for view in [int(v) for v in args.views.split(",")]:
                view = min(view, peers - 1)
                if any(j["model"] == model and j["peers"] == peers and j["view"] == view for j in jobs):
                    continue
                jobs.append(
                    {
                        "label": f"{model} {peers} peers view {view}",
                        "model": model,
                        "task": str(TASKS[model]),
                        "data_root": data_root,
                        "peers": peers,
                        "view": view,
                        "rounds": max(1, total // peers),
                        "eval_peers": args.eval_peers,
                        "finish_rounds": 0,
                        "long": False,
                    }
                )
        if args.long_rounds:
            biggest = max(sizes)
            jobs.append(
                {
                    "label": f"{model} {biggest} peers, long",
                    "model": model,
                    "task": str(TASKS[model]),
                    "data_root": data_root,
                    "peers": biggest,
                    "view": 6,
                    "rounds": args.long_rounds,
                    "eval_peers": args.eval_peers,
                    "finish_rounds": args.finish_rounds,
                    "long": True,
                }
            )
    return jobs


def table(results: list[dict[str, Any]], rounds8: int) -> str:
    lines = [
        f"Same total samples: 8 peers × {rounds8} rounds, N peers × {8 * rounds8}/N rounds (one batch each); "
        "accuracy of a fixed sample of peers on the 10k test set; consensus = mean distance of the copies to "
        "their average (all peers), at the first and last round.",
        "",
        "| model | peers | view | rounds | s / round | MB per peer (peak) | peak MB | mean acc. | worst | "
        "consensus first → last |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in (r for r in results if not r["long"]):
        lines.append(
            f"| {r['model']} | {r['peers']:,} | {r['view']} | {r['rounds']} | {r['seconds_per_round']:.2f} | "
            f"{r['mb_per_peer']:.2f} | {r['peak_mb']:,.0f} | {r['mean_accuracy']:.4f} | {r['worst_accuracy']:.4f} | "
            f"{r['consensus_start']:.3f} → {r['consensus_end']:.3f} |"
        )
    lines.append("")
    # Building N peers holds the training set once, split into shards, plus N models, optimisers and views:
    # the cost of one more peer is the slope between two sizes.
    for model in dict.fromkeys(r["model"] for r in results):
        built = sorted({r["peers"]: r for r in results if r["model"] == model and not r["long"]}.items())
        if len(built) >= 2:
            (small, a), (large, b) = built[0], built[-1]
            slope = (b["resident_built_mb"] - a["resident_built_mb"]) / (large - small)
            lines.append(
                f"- {model}: each peer beyond {small} adds {slope:.2f} MB once built ({small} → {large:,} peers: "
                f"{a['resident_built_mb']:,.0f} → {b['resident_built_mb']:,.0f} MB resident)."
            )
    for r in (r for r in results if r["long"]):
        lines.append(long_line(r))
    return "\n".join(lines)


def long_line(r: dict[str, Any]) -> str:
    """A long run: whether the copies converge given rounds, as training stopped and after the finish."""
    head = f"- Long run, {r['model']}: {r['peers']:,} peers × {r['rounds']} rounds (view {r['view']})"
    consensus = f"consensus {r['consensus_start']:.3f} → {r['consensus_end']:.3f}"
    if not r.get("finish_rounds") or r.get("stopped_mean_accuracy") is None:
        return f"{head}: {r['mean_accuracy']:.2%} mean, worst {r['worst_accuracy']:.2%}; {consensus}."
    return (
        f"{head}, then {r['finish_rounds']} finish rounds: {r['stopped_mean_accuracy']:.2%} mean as training "
        f"stopped, {r['mean_accuracy']:.2%} after the finish (worst {r['worst_accuracy']:.2%}); consensus "
        f"{r['consensus_start']:.3f} → {r['consensus_stop']:.3f} as training stopped → {r['consensus_end']:.4f} "
        "after the finish."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--sizes", default="8,256,1024")
    parser.add_argument("--views", default="6", help="view sizes (6: the task files' own)")
    parser.add_argument("--rounds8", type=int, default=1024, help="rounds of the 8-peer run")
    parser.add_argument("--long-rounds", type=int, default=64, help="rounds of the long run (0: none)")
    parser.add_argument("--finish-rounds", type=int, default=25, help="the long run's rounds of mixing alone")
    parser.add_argument("--eval-peers", type=int, default=32)
    parser.add_argument("--write", action="store_true", help="replace the section of BENCHMARKS.md")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table (and plots) from the JSON")
    args = parser.parse_args()
    if not args.report_only and not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        print(f"skipping: MNIST is not in {SHARED_MNIST}", file=sys.stderr)
        return 0
    if args.report_only:
        record = load_record(OUT, RECORD_KEYS, target="bench-sim-scale")
    else:
        jobs = jobs_for(args, str(SHARED_MNIST))
        print(f"bench-sim-scale: {len(jobs)} runs, one at a time", file=sys.stderr, flush=True)
        results = []
        context = multiprocessing.get_context("spawn")
        for index, job in enumerate(jobs, 1):
            print(f"[{index}/{len(jobs)}] {job['label']}, {job['rounds']} rounds", file=sys.stderr, flush=True)
            with context.Pool(1) as pool:
                result = pool.apply(run_one, (job,))
            print(
                f"  done: {result['seconds_per_round']:.2f} s/round, {result['mb_per_peer']:.2f} MB/peer, "
                f"accuracy {result['mean_accuracy']:.4f}",
                file=sys.stderr,
                flush=True,
            )
            results.append({**result, "long": job["long"]})
        record = {"machine": machine(), "date": str(datetime.date.today()), "rounds8": args.rounds8, "runs": results}
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(record, indent=1))
    body = table(record["runs"], record["rounds8"])
    print(body)
    if args.write:
        figures = []
        for model in dict.fromkeys(r["model"] for r in record["runs"]):
            name = f"bench-sim-scale-{model}.png"
            plot(record["runs"], model, DOCS / name, title=f"MNIST, {model.upper()}, simulated swarms of every size")
            figures.append(f"![accuracy and memory against the number of simulated peers, {model}](docs/{name})")
        heading = f"Measured {record['date']} on {record['machine']}; `make bench-sim-scale`.\n\n"
        replace_section(
            REPO / "BENCHMARKS.md",
            "bench-sim-scale",
            heading + body + "\n\n" + "\n".join(figures),
            title="Benchmarks",
            heading="## The simulator with hundreds of peers",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
