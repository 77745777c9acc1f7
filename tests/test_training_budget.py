"""Real daemons with a training budget (`[train] total_steps`): each stops at exactly that step, mixes on until
it has finished with its neighbours, reports it, and starts no more exchanges; its model stays served."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
import torch
from safetensors.torch import load as load_safetensors

from gossipd.tools.swarm import Swarm, tail
from tests.conftest import DEFAULT_TASK
from tests.daemons import daemon_swarm, task_of

BUDGET = 150
FINISH = 20
TASK = (
    DEFAULT_TASK.read_text()
    .replace('id = "mnist-default"', 'id = "budget-test"')
    .replace('name = "cnn"', 'name = "mlp"\nhidden = [32]')
    .replace("[train]", f"[train]\ntotal_steps = {BUDGET}\neval_every = 50\neval_samples = 200")
    .replace("[gossip]", f"[gossip]\nexchange_interval = 0.1\nexchange_timeout = 3.0\nfinish_exchanges = {FINISH}")
    # The default, `auto`: a finishing peer settles on whole models (plain averaging sets a pair to its
    # mean), so the finished copies must agree closely.
)


@pytest.fixture(scope="module")
def finished_swarm() -> Iterator[Swarm]:
    with daemon_swarm("gd-budget-", TASK, size=3, extra=["--join-timeout", "0"]) as swarm:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            states = [task_of(s)["state"] if s else None for s in swarm.statuses()]
            if states == ["finished"] * 3:
                break
            time.sleep(0.5)
        else:
            logs = "\n".join(f"--- peer {d.index}\n{tail(d.log_path, 20)}" for d in swarm.daemons)
            raise AssertionError(f"the swarm did not finish within 180 s: {states}\n{logs}")
        yield swarm


def test_every_peer_stops_at_its_budget_and_finishes_with_finished_neighbours(finished_swarm: Swarm) -> None:
    for status in finished_swarm.statuses():
        task = task_of(status)
        assert task["step"] == BUDGET and task["total_steps"] == BUDGET
        assert task["finish_exchanges"] == FINISH
        assert task["evaluated_at_step"] == BUDGET and task["accuracy"] is not None  # the finished model's
        # Launched one by one, each waited for the others before its first step ([train] start_wait), and
        # all started from the task's model: none copied another's, none trained alone.
        assert (task["start"], task["state_transfers"]) == ("together", 0)


def test_a_finished_swarm_starts_no_exchanges_and_its_copies_agree(finished_swarm: Swarm) -> None:
    before = [task_of(s)["exchanges"] for s in finished_swarm.statuses()]
    time.sleep(3)  # 30 exchange intervals
    assert [task_of(s)["exchanges"] for s in finished_swarm.statuses()] == before
    states = [load_safetensors(d.client().model("budget-test")) for d in finished_swarm.daemons]
    names = [n for n in states[0] if states[0][n].is_floating_point()]
    spread = math.sqrt(sum(float((states[0][n] - s[n]).pow(2).sum()) for s in states[1:] for n in names))
    scale = math.sqrt(sum(float(states[0][n].pow(2).sum()) for n in names))
    assert spread < 0.01 * scale, (spread, scale)
    for state in states:
        assert all(torch.isfinite(state[n]).all() for n in names)
