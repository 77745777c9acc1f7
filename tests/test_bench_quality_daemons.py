"""`make bench-quality`'s daemon runs write the task file they launch: the workload's own file with its split
and a training budget, nothing else changed."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from gossipd.task.loader import load_task
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[1]


def bench_quality() -> ModuleType:
    return load_script("bench_quality")


def test_the_daemons_task_is_the_workloads_file_with_its_split_and_budget(tmp_path: Path) -> None:
    original = load_task(REPO / "tasks" / "titanic.toml", data_root=str(tmp_path))
    written = bench_quality().daemon_task(REPO / "tasks" / "titanic.toml", "dirichlet:0.5", 300, tmp_path)
    task = load_task(written, data_root=str(tmp_path))
    assert (task.data.partition, task.train.total_steps) == ("dirichlet:0.5", 300)
    assert task.hash == original.hash  # neither setting is part of the task's identity: the same swarm
    assert (task.model, task.gossip) == (original.model, original.gossip)


def test_a_task_file_that_sets_its_own_split_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "own.toml"
    source.write_text((REPO / "tasks" / "titanic.toml").read_text().replace("[data]", '[data]\npartition = "iid"'))
    with pytest.raises(SystemExit, match="sets its own partition"):
        bench_quality().daemon_task(source, "dirichlet:0.5", 300, tmp_path / "out")
