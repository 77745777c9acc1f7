"""The simulator's held-out losses (a language model is judged by its loss, not its next-character accuracy):
as training stopped, after the finish rounds, and of the centralised baseline, on a text split by position."""

from __future__ import annotations

import math
from pathlib import Path

from gossipd.data.registry import load_data
from gossipd.sim.report import SimulationReport
from gossipd.sim.simulator import Simulation, SimulationConfig
from gossipd.task.loader import parse_task
from gossipd.train.adam import Adam
from gossipd.train.trainer import Trainer

TASK = """
[task]
id = "tiny-text"
seed = 1

[data]
format = "text"
path = "text.txt"
block_size = 16
validation_fraction = 0.2
partition = "contiguous"

[model]
name = "char-transformer"
n_layer = 1
n_head = 2
n_embd = 16

[train]
optimizer = "adamw"
lr = 0.01
batch_size = 8

[gossip]
algorithm = "powergossip"
rank = 1
"""


def test_losses_at_the_stop_after_the_finish_and_centralised(tmp_path: Path) -> None:
    # Two "plays" one after the other: the contiguous split gives the first peers one and the last the other.
    (tmp_path / "text.txt").write_text("to be or not to be, " * 60 + "all the world's a stage. " * 60)
    task = parse_task(TASK, file="tiny.toml", base_dir=tmp_path)
    data = load_data(task.data, task.task.seed)

    def run(finish: int) -> SimulationReport:
        config = SimulationConfig(peers=4, rounds=12, seed=2, finish_rounds=finish, centralised=finish > 0)
        return Simulation(task, data, config).run()

    plain, finished = run(0), run(5)
    assert plain.stopped_mean_loss is None and plain.centralised_loss is None
    # The same training (same seed): the loss as training stopped is the unfinished run's final loss.
    assert finished.stopped_mean_loss == plain.mean_loss
    assert finished.partition == "contiguous"
    centralised = finished.centralised_loss
    assert centralised is not None and math.isfinite(centralised)
    assert centralised < math.log(data.spec.num_classes)  # it learned something in 12 steps of batch 4×8
    assert finished.centralised_accuracy is not None


def test_simulated_peers_step_as_their_union_batch(tmp_path: Path) -> None:
    """[train] swarm_batch in the simulator: each peer's Adam counts itself and its online view neighbours
    (all 3 others here); peers that train alone count themselves only."""
    (tmp_path / "text.txt").write_text("to be or not to be, " * 60)
    task = parse_task(TASK, file="tiny.toml", base_dir=tmp_path)
    data = load_data(task.data, task.task.seed)
    mixed = Simulation(task, data, SimulationConfig(peers=4, rounds=2, seed=2, centralised=False))
    alone = Simulation(task, data, SimulationConfig(peers=4, rounds=2, seed=2, centralised=False, mix=False))
    mixed.run()
    alone.run()
    assert [adam(p.trainer).swarm_peers for p in mixed.peers] == [4.0] * 4
    assert [adam(p.trainer).swarm_peers for p in alone.peers] == [1.0] * 4


def adam(trainer: Trainer) -> Adam:
    assert isinstance(trainer.optimizer, Adam)
    return trainer.optimizer
