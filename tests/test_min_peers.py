"""`[train] min_peers` with real daemons on loopback: the first peers wait (neither training nor mixing) until
enough neighbours are live, all start once the last is up, and fall back to waiting when one leaves for longer
than the grace period."""

from __future__ import annotations

import time

import pytest

from gossipd.tools.swarm import Swarm
from tests.conftest import DEFAULT_TASK
from tests.daemons import daemon_swarm, task_of, wait_until

GRACE = 2.0
TASK = (
    DEFAULT_TASK.read_text()
    .replace('id = "mnist-default"', 'id = "min-peers-test"')
    .replace('name = "cnn"', 'name = "mlp"\nhidden = [32]')
    .replace("[gossip]", "[gossip]\nexchange_interval = 0.1\nexchange_timeout = 3.0")
    .replace("[train]", f"[train]\nmin_peers = 2\nmin_peers_grace = {GRACE}")
)
LIVENESS = 15.0  # seconds a peer stays live after its last heartbeat (gossipd.services.task_runtime)


def _start_two_waiting_then_the_third(swarm: Swarm) -> None:
    # Two of three are up: each sees one live neighbour, fewer than the two it asks for.
    def both_waiting_with_one_neighbour() -> bool:
        tasks = [task_of(s) for s in swarm.statuses()]
        return all(t["state"] == "waiting" and t["live_peers"] == 1 for t in tasks)

    wait_until(both_waiting_with_one_neighbour, 30, "the first two peers to wait, each seeing the other")
    for status in swarm.statuses():
        task = task_of(status)
        assert (task["step"], task["exchanges"], task["min_peers"]) == (0, 0, 2), task
    swarm.size = 3
    swarm.start_one(2, wait=120)
    wait_until(lambda: all_training_and_mixing(swarm), 60, "all three to train and mix once the third is up")


def all_training_and_mixing(swarm: Swarm) -> bool:
    tasks = [task_of(s) for s in swarm.statuses()]
    return all(t["state"] == "training" and t["step"] > 0 and t["exchanges"] > 0 for t in tasks)


def test_the_first_two_of_three_wait_and_all_start_once_the_third_is_up() -> None:
    with daemon_swarm("gd-minp-", TASK, size=2, parts=3, wait=120) as swarm:
        _start_two_waiting_then_the_third(swarm)


@pytest.mark.slow  # a departed peer stays live for 15 s after its last heartbeat
def test_peers_wait_again_when_one_leaves_for_longer_than_the_grace_period_and_go_on_when_it_is_back() -> None:
    with daemon_swarm("gd-minp-", TASK, size=2, parts=3, wait=120) as swarm:
        _start_two_waiting_then_the_third(swarm)
        assert swarm.stop_one(2) == 0
        wait_until(
            lambda: all(task_of(swarm.statuses()[i])["state"] == "waiting" for i in (0, 1)),
            LIVENESS + GRACE + 20,
            "the two left to fall back to waiting",
        )
        steps = [task_of(swarm.statuses()[i])["step"] for i in (0, 1)]
        time.sleep(1.0)  # a paused trainer takes no step meanwhile
        assert [task_of(swarm.statuses()[i])["step"] for i in (0, 1)] == steps
        swarm.start_one(2, wait=120)
        wait_until(lambda: all_training_and_mixing(swarm), 60, "training to go on once the third is back")
