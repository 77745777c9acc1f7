"""The exact share of a pair's squared difference each exchange removes, in the simulator.

    python share.py TASK_FILE ALGORITHM RANK PARTITION ROUNDS   (e.g. tasks/mnist-cnn.toml powergossip 1 iid 200)

Wraps the simulator's exchange to compare the two models before and after it (with the weight 1/2 of a
lone exchange, what PowerGossip's projection captures is exactly what it removes). Prints, for eighths of the
run, the median and mean share and the median squared distance relative to the opener's squared norm.
"""

import statistics
import sys

import torch

import gossipd.sim.simulator as simulator
from gossipd.data.registry import load_data
from gossipd.sim.simulator import Simulation, SimulationConfig
from gossipd.task.loader import load_task
from gossipd.task.overrides import with_gossip

task_file, algorithm, rank, partition, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
torch.set_num_threads(1)
task = load_task(task_file, data_root="../shared/datasets/mnist")
if algorithm != "task":
    task = with_gossip(task, algorithm, {"rank": int(rank)})
data = load_data(task.data, task.task.seed)
sim = Simulation(task, data, SimulationConfig(peers=8, rounds=rounds, partition=partition, centralised=False))
log: list[tuple[int, float, float, float]] = []
original = simulator.Simulation._exchange_from


def squared(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None = None) -> float:
    return sum(float((a[k].float() - (0 if b is None else b[k].float())).pow(2).sum()) for k in a)


def measured(self: Simulation, peer: simulator.SimPeer) -> None:
    before = {p.index: {k: v.clone() for k, v in p.params().items()} for p in self.peers}
    count = self.exchanges
    original(self, peer)
    if self.exchanges == count:
        return
    after = {p.index: p.params() for p in self.peers}
    changed = [i for i in after if any(not torch.equal(after[i][k], before[i][k]) for k in after[i])]
    if len(changed) == 2:
        a, b = changed
        apart = squared(before[a], before[b])
        log.append((self.round, apart, squared(after[a], after[b]), apart / max(squared(before[a]), 1e-12)))


simulator.Simulation._exchange_from = measured  # type: ignore[method-assign]
report = sim.run(None, None)
print(task_file, algorithm, rank, partition, "accuracy", report.mean_accuracy)
step = max(1, len(log) // 8)
for start in range(0, len(log), step):
    chunk = log[start : start + step]
    shares = [1 - left / apart for _, apart, left, _ in chunk if apart > 0]
    relative = statistics.median(r for *_, r in chunk)
    print(
        f"  round {chunk[0][0]:4d}: share median {statistics.median(shares):.3f} mean {statistics.mean(shares):.3f}"
        f"  relative squared distance {relative:.2e}"
    )
