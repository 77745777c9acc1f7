"""Personal parameters in a swarm: simulated peers keep their own (through mixing and rejoining) and report
their own-distribution accuracy; a task runtime fine-tunes them once finished, says so in its status, and
exports them with the rest of its model."""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import trio
from safetensors import safe_open
from safetensors.torch import load as load_safetensors

from gossipd.cli_client import format_status
from gossipd.data.registry import load_data
from gossipd.mixing.personal import shared_part
from gossipd.models.registry import build_model
from gossipd.services.status import TaskState, TaskStatus, to_json
from gossipd.services.task_runtime import RunOptions, TaskRuntime
from gossipd.services.trainer_service import TrainerService
from gossipd.sim.own_distribution import ClassCounts, label_distribution
from gossipd.sim.simulator import Simulation, SimulationConfig
from gossipd.task.loader import Task, parse_task
from gossipd.task.overrides import with_gossip
from tests.conftest import DEFAULT_TASK
from tests.fake_network import FakeHub
from tests.test_control_api import make_status

HEAD = ("classifier.3.*",)  # the default CNN's last layer


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The default task with the algorithm these tests' thresholds were measured with (PowerGossip rank 2, its
# algorithm before `auto` became the default): they test the simulator, not the choice of mode.
DEFAULT_TEXT = DEFAULT_TASK.read_text().replace('algorithm = "auto"', 'algorithm = "powergossip"\nrank = 2')


def task(replacements: dict[str, str]) -> Task:
    text = DEFAULT_TEXT
    for old, new in {'device = "auto"': 'device = "cpu"', **replacements}.items():
        assert old in text, f"the default task no longer says {old}"
        text = text.replace(old, new)
    return parse_task(text, file=str(DEFAULT_TASK), base_dir=DEFAULT_TASK.parent)


def cnn_task(personal: tuple[str, ...] = HEAD, personal_steps: int = 0) -> Task:
    base = task({})
    gossip = dataclasses.replace(base.gossip, personal=personal)
    return dataclasses.replace(
        base, gossip=gossip, train=dataclasses.replace(base.train, personal_steps=personal_steps)
    )


def state(sim: Simulation, index: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in sim.peers[index].trainer.model.state_dict().items()}


# -- the simulator -------------------------------------------------------------------------------------------


def test_simulated_peers_mix_the_shared_part_and_keep_their_own_personal_part_untouched() -> None:
    spec = task({})
    data = load_data(spec.data, spec.task.seed)
    config = SimulationConfig(
        peers=4, rounds=15, train=False, independent_init=True, centralised=False, eval_samples=100
    )
    sim = Simulation(with_gossip(cnn_task(), "plain", {}), data, config)  # plain: a quick consensus
    initial = [state(sim, i) for i in range(4)]
    report = sim.run()
    names = {"classifier.3.weight", "classifier.3.bias"}
    assert set(report.personal) == names and sim.personal.parameters == names
    for i in range(4):
        now = state(sim, i)
        assert all(torch.equal(now[n], initial[i][n]) for n in names)  # neither trained nor mixed
        assert not torch.equal(now["features.0.weight"], initial[i]["features.0.weight"])  # mixed
    assert not torch.equal(initial[0]["classifier.3.weight"], initial[1]["classifier.3.weight"])
    assert report.consensus_distance_end < report.consensus_distance_start / 4
    assert len(report.own_accuracies) == 4 and len(report.averaged_personal_accuracies) == 4


def test_a_returning_simulated_peer_copies_the_shared_state_and_starts_its_personal_part_afresh() -> None:
    spec = task({})
    data = load_data(spec.data, spec.task.seed)
    sim = Simulation(cnn_task(), data, SimulationConfig(peers=3, rounds=4, centralised=False, eval_samples=50))
    sim.run()
    first = build_model(sim.task.model, data.spec, sim.task.task.seed).state_dict()  # what a fresh peer starts from
    trained = [state(sim, i) for i in range(3)]
    assert not torch.equal(trained[0]["classifier.3.weight"], first["classifier.3.weight"])
    sent = sim.state_bytes
    sim._rejoin(sim.peers[2])
    rejoined = state(sim, 2)
    assert all(torch.equal(rejoined[n], first[n]) for n in sim.personal.state)
    shared = shared_part(rejoined, sim.personal.state)
    assert any(all(torch.equal(shared[n], t[n]) for n in shared) for t in trained)  # some neighbour's
    full = sum(t.numel() * t.element_size() for t in first.values())
    assert 0 < sim.state_bytes - sent < full - first["classifier.3.weight"].numel() * 4 + 4096


def test_personal_fine_tuning_on_two_label_shards_fits_each_peer_s_own_labels() -> None:
    spec = task({})
    data = load_data(spec.data, spec.task.seed)
    config = SimulationConfig(
        peers=4, rounds=15, partition="shards:2", finish_rounds=5, centralised=False, eval_samples=300
    )
    shared = Simulation(cnn_task(personal=()), data, config).run()
    personalised = Simulation(cnn_task(personal_steps=30), data, config).run()
    assert shared.personal == () and shared.averaged_personal_accuracy is None and shared.personal_steps == 0
    assert shared.own_accuracy is not None and len(shared.own_accuracies) == 4
    assert personalised.personal_steps == 30 and personalised.own_accuracy is not None
    # Each head learnt two labels: on examples like its own a peer does far better than on all ten.
    assert personalised.own_accuracy > personalised.mean_accuracy + 0.2, personalised
    assert personalised.averaged_personal_accuracy is not None


def test_a_frozen_simulated_head_stays_the_common_initial_one_until_each_peer_fine_tunes_its_own() -> None:
    spec = task({})
    data = load_data(spec.data, spec.task.seed)
    frozen = dataclasses.replace(cnn_task(personal_steps=5).train, personal_training="frozen")
    config = SimulationConfig(peers=3, rounds=4, partition="shards:2", centralised=False, eval_samples=50)
    sim = Simulation(dataclasses.replace(cnn_task(), train=frozen), data, config)
    first = build_model(sim.task.model, data.spec, sim.task.task.seed).state_dict()
    names = ("classifier.3.weight", "classifier.3.bias")
    assert not set(names) & set(sim.layout.shapes)  # never on the wire

    def held(record: Any) -> None:
        for peer in sim.peers:
            now = peer.trainer.model.state_dict()
            assert all(torch.equal(now[n], first[n]) for n in names)  # trained and mixed, yet as it started
            assert not torch.equal(now["features.0.weight"], first["features.0.weight"])

    sim.run(on_round=held)
    tuned = [state(sim, i) for i in range(3)]
    assert all(not torch.equal(t[n], first[n]) for t in tuned for n in names)
    assert not torch.equal(tuned[0]["classifier.3.weight"], tuned[1]["classifier.3.weight"])  # each its own


def test_own_distribution_accuracy_weights_the_per_class_accuracies_by_the_peer_s_labels() -> None:
    counts = ClassCounts(hits=torch.tensor([9, 0, 0]), totals=torch.tensor([10, 10, 0]), loss=0.0)
    assert counts.evaluation().accuracy == pytest.approx(0.45)
    assert counts.reweighted(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(0.9)
    assert counts.reweighted(torch.tensor([0.25, 0.75, 0.0])) == pytest.approx(0.225)
    assert counts.reweighted(torch.tensor([0.5, 0.0, 0.5])) == pytest.approx(0.9)  # no test examples of class 2
    assert torch.allclose(label_distribution(torch.tensor([0, 0, 2, 2]), 3), torch.tensor([0.5, 0.0, 0.5]).double())


# -- a daemon's task -----------------------------------------------------------------------------------------

MLP = {'name = "cnn"': 'name = "mlp"\nhidden = [16]', "grad_clip = 1.0": "grad_clip = 1.0\neval_samples = 100"}


def runtime_task(personal: str, budget: str = "total_steps = 20\npersonal_steps = 30") -> Task:
    return task(
        {
            **MLP,
            "local_steps = 1": f"local_steps = 1\n{budget}",
            "[gossip]": f"[gossip]\nfinish_exchanges = 0\npersonal = [{personal}]",
        }
    )


async def run_alone(spec: Task, tmp_path: Path, until: Any) -> tuple[TaskRuntime, list[TaskStatus]]:
    seen: list[TaskStatus] = []
    async with trio.open_nursery() as nursery:
        network = FakeHub(nursery, random.Random(0)).add_peer()
        options = RunOptions(join_timeout=0, checkpoint_interval=10**6, seed=0)
        runtime = TaskRuntime(spec, options, network=network, state_dir=tmp_path)
        await nursery.start(runtime.run)
        with trio.fail_after(60):
            while not until(runtime):
                seen.append(runtime.status())
                await trio.sleep(0.01)
        seen.append(runtime.status())
        if runtime.services is not None:
            await check_export_and_join(runtime)
        nursery.cancel_scope.cancel()
    return runtime, seen


async def check_export_and_join(runtime: TaskRuntime) -> None:
    """The export holds the whole model and names the personal part; a copied neighbour's shared state
    replaces this peer's, whose personal part stays its own."""
    assert runtime.services is not None
    host = runtime.services.trainer
    assert isinstance(host, TrainerService)
    exported = await runtime.export()
    own = host.model_state()
    tensors = load_safetensors(exported)
    assert set(tensors) == set(own) and all(torch.equal(tensors[n], own[n]) for n in own)
    path = runtime.folder / "export.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(exported)
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    assert json.loads(metadata["personal"]) == ["net.3.bias", "net.3.weight"]
    neighbour = {n: torch.full_like(t, 0.5) for n, t in own.items() if n not in runtime.personal.state}
    assert set(neighbour) == set(runtime.services.state_specs)
    await host.at_boundary(functools.partial(runtime._load_shared, host, neighbour, 99, None))
    after = host.model_state()
    assert all(torch.equal(after[n], neighbour[n]) for n in neighbour)
    assert all(torch.equal(after[n], own[n]) for n in runtime.personal.state)


async def test_a_finished_task_fine_tunes_its_personal_part_then_says_finished(tmp_path: Path) -> None:
    runtime, seen = await run_alone(
        runtime_task('"net.3.*"'), tmp_path, lambda r: r.state is TaskState.FAILED or r.status().state == "finished"
    )
    final = seen[-1]
    assert final.state is TaskState.FINISHED, runtime.error
    assert final.personal == ("net.3.bias", "net.3.weight") and final.personal_values == 16 * 10 + 10
    assert final.personal_steps == 30 and final.personal_steps_done == 30 and final.step == 20
    # Finished only once the personal steps are done: until then it is finishing.
    assert all(s.personal_steps_done == 30 for s in seen if s.state is TaskState.FINISHED)


async def test_a_personal_pattern_that_fits_no_parameter_fails_the_task_naming_it(tmp_path: Path) -> None:
    runtime, _ = await run_alone(
        runtime_task('"fc9.*"', budget=""), tmp_path, lambda r: r.state is not TaskState.LOADING
    )
    assert runtime.state is TaskState.FAILED
    assert runtime.error is not None and "'fc9.*' matches no parameter" in runtime.error
    assert "net.0.weight" in runtime.error


def test_gossipd_status_names_the_personal_parameters_and_the_fine_tuning() -> None:
    data = to_json(make_status())
    head = ["classifier.3.bias", "classifier.3.weight"]
    data["tasks"][0].update(personal=head, personal_values=650, personal_steps=200, personal_steps_done=40)
    text = format_status(data)
    assert (
        "mnist: personal (never mixed, never sent): classifier.3.bias, classifier.3.weight, 650 values; "
        "fine-tuned 40/200 steps once finished" in text
    )
    assert "cifar: personal" not in text  # nothing personal there: no line
