"""`make bench-peers` runs gossipd on the task file a user would write, with the run's model, split, algorithm
and budget; its four peers start training together (a quorum of the other three), so none trains alone while
the others start up."""

from __future__ import annotations

from pathlib import Path

from gossipd.task.loader import load_task
from tests.scripts import load_script


def test_the_runs_peers_start_together_once_each_sees_the_other_three(tmp_path: Path) -> None:
    module = load_script("bench_peers")
    for model in ("cnn", "mlp", "cnn-pytorch-example"):
        run = module.Run("gossipd-auto-paced", model, "dirichlet:0.5", 0, 1407, 100, str(tmp_path), "")
        path = tmp_path / f"{model}.toml"
        path.write_text(module.gossipd_task(run))
        task = load_task(path, data_root=str(tmp_path))
        assert task.train.min_peers == module.PEERS - 1
        assert task.train.start_wait == 0
        assert task.train.total_steps == 1407
        assert task.gossip.algorithm == "auto" and task.gossip.steps_per_exchange == 2
        assert task.model.name == model
        assert task.gossip.weigh_by == "samples"  # the default: Dirichlet shards differ in size


def test_the_report_names_each_machine_its_runs_were_measured_on() -> None:
    """Runs record their machine; those from before they did count as the one every earlier report named, so
    figures from two machines are never printed under one."""
    module = load_script("bench_peers")
    assert module.run_machines([{"machine": "Intel Xeon"}, {"machine": "Intel Xeon"}]) == "Intel Xeon"
    mixed = module.run_machines([{"machine": "Intel Xeon"}, {}, {}])
    assert mixed == f"{module.EARLIER_MACHINE} (2 runs); Intel Xeon (1 run)"
