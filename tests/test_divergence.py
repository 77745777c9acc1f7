"""A daemon whose model blows up: it stops training, keeps its last good checkpoint, copies a neighbour's
model, and trains on; its neighbours are not harmed. Real daemons on loopback; one of the three trains with
a learning rate no model survives (a local setting: same task hash, so it stays in the swarm)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load as load_safetensors

from gossipd.adapters.checkpoint_store import CheckpointStore
from gossipd.tools.swarm import Swarm, tail
from tests.conftest import DEFAULT_TASK
from tests.daemons import daemon_swarm, task_of

TASK = (
    DEFAULT_TASK.read_text()
    .replace('id = "mnist-default"', 'id = "divergence-test"')
    .replace('name = "cnn"', 'name = "mlp"\nhidden = [32]')
    .replace("[gossip]", "[gossip]\nexchange_interval = 0.1\nexchange_timeout = 3.0")
)
UNSTABLE = 2


class OneUnstable(Swarm):
    """Daemon UNSTABLE runs the same task with lr 1e30: its weights overflow within a few steps."""

    def command(self, index: int, folder: Path, *, bootstrap: str | None) -> list[str]:
        args = super().command(index, folder, bootstrap=bootstrap)
        if index == UNSTABLE:
            assert self.task is not None
            unstable = Path(self.task).with_name("unstable.toml")
            unstable.write_text(Path(self.task).read_text().replace("lr = 0.05", "lr = 1e30"))
            args[args.index(self.task)] = str(unstable)
        return args


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    with daemon_swarm("gd-diverge-", TASK, kind=OneUnstable, size=3, extra=["--checkpoint-interval", "1"]) as started:
        yield started


def test_a_diverged_peer_copies_a_neighbours_model_and_trains_on_and_backs_off(swarm: Swarm) -> None:
    unstable = swarm.daemons[UNSTABLE]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        task = task_of(unstable.status())
        if task["divergences"] >= 2:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no second divergence within 90 s\n{tail(unstable.log_path, 20)}")
    assert task["state_transfers"] >= 1  # it recovered from the first by copying a neighbour's model
    log = unstable.log_path.read_text()
    assert "the model diverged" in log
    assert log.count("skipped") < 200  # stopped, not spinning on skipped steps
    # Recoveries wait 2, then 4 s: a model that keeps blowing up does not hammer its neighbours.
    assert task["divergences"] <= 4 and task["state_transfers"] <= task["divergences"]
    # Stopped while it waits for its next copy, it leaves the diverged model out of its final checkpoint.
    assert task["state"] == "joining"
    assert swarm.stop_one(UNSTABLE) == 0
    assert "not checkpointing a diverged model" in unstable.log_path.read_text()


def test_its_neighbours_models_stay_sound_and_no_diverged_model_is_checkpointed(swarm: Swarm) -> None:
    for index in (0, 1):
        state = load_safetensors(swarm.daemons[index].client().model("divergence-test"))
        scale = math.sqrt(sum(float(t.float().pow(2).sum()) for t in state.values() if t.is_floating_point()))
        assert math.isfinite(scale) and scale < 1e3, (index, scale)
        assert task_of(swarm.daemons[index].status())["divergences"] == 0
    # Checkpoints every second while it trained: none of those on disk holds a blown-up model.
    store = CheckpointStore(next((swarm.daemons[UNSTABLE].folder / "state").rglob("checkpoints")), keep=100)
    for path in store.list():
        model = store._read(path, "cpu")["trainer"]["model"]
        biggest = max(float(t.abs().max()) for t in model.values() if t.is_floating_point())
        assert biggest < 1e6, (path, biggest)
