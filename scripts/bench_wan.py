"""`make bench-wan`: the side-by-side race of `make bench-peers`, on an emulated network with constrained links.

Each run builds a lab (gossipd.tools.netlab): 4 peer hosts `p0`..`p3` on one site, each with the same symmetric
uplink and downlink rate (10 Mbit/s, then 100 Mbit/s), plus, for Flower, a `server` host for its SuperLink
with a link of the same speed. The workload, runners, snapshots and evaluation are bench-peers' own (the
same shards, model, optimiser, batch and step budget); only where the processes run differs. Bytes are the
lab's interface counters, sampled every second: the bytes on the wire are the sum of every host's uplink.
Latency is not emulated (see netlab). Results: one JSON per run in docs/bench-wan/, a section of
BENCHMARKS.md, one plot per model in docs/.

    python scripts/bench_wan.py [--rates 10mbit,100mbit] [--models cnn,...] [--systems ...] [--repeats 1]
                                [--steps 3000] [--split iid] [--report-only] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bench_peers
from bench_peers import PEERS, SHARED_MNIST, Placement, Run, evaluate, run_machines, setup_venvs, write_shards

from gossipd.tools.bench_wan_report import GOSSIPD, RIVALS, plot, report
from gossipd.tools.netlab import LabError, NetLab, lab_unavailable
from gossipd.tools.netlab_topology import Topology, format_rate, parse_rate, topology_from_mapping
from gossipd.tools.reporting import machine, replace_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "bench-wan"
HEADING = "## On constrained links: gossipd, hivemind, Flower (emulated network)"
SYSTEMS = (*GOSSIPD, *RIVALS)


def lab_for(system: str, rate: int) -> Topology:
    shaped = {"up": format_rate(rate), "down": format_rate(rate)}
    hosts = {f"p{i}": {"sites": ["net"], **shaped} for i in range(PEERS)}
    if system.startswith("flower"):
        hosts["server"] = {"sites": ["net"], **shaped}
    return topology_from_mapping({"sites": {"net": {}}, "hosts": hosts})


class LinkMeter(threading.Thread):
    """The lab's bytes on the wire (every host's uplink, summed) every second: [(seconds since start, bytes)]."""

    def __init__(self, lab: NetLab, start: float) -> None:
        super().__init__(daemon=True)
        self.lab = lab
        self.start_time = start
        self.samples: list[tuple[float, int]] = [(0.0, 0)]
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                total = sum(c.up_bytes for c in self.lab.counters())
            except LabError:
                continue
            self.samples.append((time.time() - self.start_time, total))


def execute(run: Run, rate: int) -> dict[str, Any] | None:
    """One run inside its own lab; the link report, or None if it failed."""
    topology = lab_for(run.system, rate)
    workdir = Path(run.workdir)
    with NetLab.build(topology) as lab:
        enter = {h.name: lab.command(h.name, []) for h in topology.hosts}
        flower = None
        if run.system.startswith("flower"):
            nodes = [{"address": lab.address(f"p{i}"), "enter": enter[f"p{i}"]} for i in range(PEERS)]
            flower = {"server": lab.address("server"), "nodes": nodes}
        bench_peers.PLACEMENT = Placement(launch=lab.command, address=lab.address, flower=flower)
        start = time.time()
        meter = LinkMeter(lab, start)
        meter.start()
        failed = None
        try:
            if run.system.startswith("gossipd-"):
                bench_peers.run_gossipd(run, start)
            elif run.system.startswith("hivemind"):
                bench_peers.run_hivemind(run, start)
            elif run.system.startswith("flower"):
                bench_peers.run_flower_fedavg(run, start)
            else:
                raise SystemExit(f"bench-wan runs gossipd, hivemind and Flower, not {run.system}")
        except Exception as exc:  # one run's failure is reported and the race goes on
            failed = exc
        finally:
            meter.stopping.set()
            meter.join(5)
            seconds = time.time() - start
            links = lab.counters()
            bench_peers.PLACEMENT = Placement()
    (workdir / "bytes.json").write_text(json.dumps(meter.samples))
    if failed is not None:
        print(f"  {run.name} at {format_rate(rate)}: FAILED: {failed!r}", flush=True)
        return None
    return {
        "rate": rate,
        "wall_seconds": round(seconds, 1),
        "links": [
            {
                "host": c.host,
                "up_bytes": c.up_bytes,
                "down_bytes": c.down_bytes,
                "up_use": c.utilisation(seconds)[0],
                "down_use": c.utilisation(seconds)[1],
            }
            for c in links
        ],
    }


def publish(out: Path, *, write: bool) -> None:
    """Plots and the report from the runs in `out`; BENCHMARKS.md and docs/ only for the published runs."""
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    if not results:
        raise SystemExit(f"no runs recorded in {out}")
    published = write and out == RESULTS
    plots = {}
    for model in dict.fromkeys(r["model"] for r in results):
        path = (REPO / "docs" if published else out) / f"bench-wan-{model}.png"
        plot(results, model, path)
        plots[model] = str(path.relative_to(REPO)) if published else str(path)
    dates = ", ".join(sorted({r["date"] for r in results}))
    intro = (
        f"Measured {dates} on {run_machines(results)}; `make bench-wan`. The workload of the side-by-side race above "
        f"(MNIST, {PEERS} peers on IID shards, SGD lr 0.05 momentum 0.9, batch 32, one torch thread per peer, "
        "the same step budget and snapshots), but every peer on a host of its own in an emulated network "
        "(`gossipd.tools.netlab`): its own address, a bridge between the hosts, and the same symmetric rate "
        "on every host's uplink and downlink (tc token buckets); Flower's SuperLink on a host of its own with "
        "a link of the same speed. Bytes are the hosts' interface counters (every uplink summed); *busiest "
        "link* is the highest mean utilisation of any host's uplink or downlink over the run. Latency is not "
        "emulated (this kernel has no netem), so these are bandwidth-bound figures. All processes still share "
        "this machine's 2 cores."
    )
    text = intro + "\n" + report(results, plots)
    print(text)
    if published:
        replace_section(REPO / "BENCHMARKS.md", "bench-wan", text, title="Benchmarks", heading=HEADING)


def record(run: Run, links: dict[str, Any], out: Path, today: str, rate: int) -> None:
    """A finished run's summary, evaluated from its snapshots, as one JSON in `out`."""
    # gossipd's peers stop at the budget, finish, and start together (bench_peers.gossipd_task).
    gossipd = run.system.startswith("gossipd-")
    summary = {**evaluate(run), **links, "date": today, "machine": machine(), "finish": gossipd, "together": gossipd}
    (out / f"{run.name}-{format_rate(rate)}.json").write_text(json.dumps(summary, indent=1))
    reached = summary["reached"]["mean_98"]
    print(f"  98% (mean peer): {reached and round(reached['seconds'])} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="10mbit,100mbit")
    parser.add_argument("--models", default="cnn")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--split", default="iid")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--first-repeat", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000, help="training steps per peer")
    parser.add_argument("--snapshot-every", type=int, default=200)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print the report, leave BENCHMARKS.md alone")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where run JSON goes (experiments: elsewhere)")
    args = parser.parse_args()
    # SIGTERM (kill, timeout) as Ctrl-C: the run's peers stop, its lab comes down and its folders go.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    if args.report_only:
        publish(args.out, write=not args.no_write)
        return
    reason = lab_unavailable()
    if reason is not None:
        raise SystemExit(f"bench-wan needs an emulated network: {reason}")
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"bench-wan needs the full MNIST in {SHARED_MNIST}")
    systems = args.systems.split(",")
    setup_venvs(systems)
    rates = [parse_rate(r) for r in args.rates.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    shards = Path(tempfile.mkdtemp(prefix="gossipd-wan-data-", dir="/tmp"))
    write_shards(shards, args.split)
    try:
        for rate in rates:
            for model in args.models.split(","):
                for system in systems:
                    for repeat in range(args.first_repeat, args.first_repeat + args.repeats):
                        workdir = Path(tempfile.mkdtemp(prefix="gossipd-wan-", dir="/tmp"))
                        try:  # the run's folder goes however the run ends, Ctrl-C and SIGTERM included
                            shutil.copytree(shards / "data", workdir / "data")
                            run = Run(system, model, args.split, repeat, args.steps, args.snapshot_every, str(workdir))
                            print(f"bench-wan: {run.name} at {format_rate(rate)}", flush=True)
                            links = execute(run, rate)
                            if links is not None:
                                record(run, links, args.out, today, rate)
                        finally:
                            if args.keep:
                                print(f"  kept {workdir}", flush=True)
                            else:
                                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        shutil.rmtree(shards, ignore_errors=True)
    publish(args.out, write=not args.no_write)


if __name__ == "__main__":
    main()
