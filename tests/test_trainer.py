"""Local training: deterministic on CPU for a seed, resumable, and honest about devices."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gossipd.data.spec import ArrayDataset, InputSpec
from gossipd.mixing.layout import mixed_parameters
from gossipd.models.char_transformer import CharTransformerConfig
from gossipd.models.mlp import MLPConfig
from gossipd.models.registry import build_model
from gossipd.task.schema import ModelSection, TrainSection
from gossipd.train.adam import Adam
from gossipd.train.device import DeviceError, pick_device
from gossipd.train.trainer import BatchSampler, Trainer, learning_rate

SPEC = InputSpec(kind="classification", input_shape=(20,), num_classes=3)
CPU = torch.device("cpu")


def dataset(n: int = 300, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return ArrayDataset(x, y)


def trainer(section: TrainSection | None = None, seed: int = 0) -> Trainer:
    model = build_model(ModelSection(name="mlp", options=MLPConfig(hidden=(32,))), SPEC, 0)
    return Trainer(model, section or TrainSection(), dataset(), kind="classification", device=CPU, seed=seed)


def params(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in mixed_parameters(t.model).items()}


def test_training_is_deterministic_for_a_seed_on_cpu() -> None:
    a, b, c = trainer(seed=1), trainer(seed=1), trainer(seed=2)
    for t in (a, b, c):
        t.train_steps(25)
    assert all(torch.equal(params(a)[k], params(b)[k]) for k in params(a))
    assert any(not torch.equal(params(a)[k], params(c)[k]) for k in params(a))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_learns(optimizer: str) -> None:
    lr = 0.05 if optimizer == "sgd" else 0.01
    t = trainer(TrainSection(optimizer=optimizer, lr=lr))  # type: ignore[arg-type]
    before = t.evaluate(t.data)
    stats = t.train_steps(150)
    after = t.evaluate(t.data)
    assert stats.samples == 150 * 32 and t.step == 150
    assert after.loss < before.loss * 0.7
    assert after.accuracy > 0.85


def test_learning_rate_schedule() -> None:
    section = TrainSection(lr=1.0, warmup_steps=10, lr_schedule="cosine", total_steps=110)
    assert learning_rate(section, 0) == pytest.approx(0.1 * (0.5 * (1 + math.cos(0))))
    assert learning_rate(section, 9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 110)))
    assert learning_rate(section, 110) == pytest.approx(0.0)
    assert learning_rate(TrainSection(lr=0.3), 1000) == 0.3


def test_cosine_needs_total_steps() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        trainer(TrainSection(lr_schedule="cosine"))


def test_resuming_from_a_state_dict_continues_exactly() -> None:
    straight = trainer(seed=3)
    straight.train_steps(30)
    first = trainer(seed=3)
    first.train_steps(12)
    saved = first.state_dict()
    resumed = trainer(seed=99)
    resumed.load_state_dict(saved)
    resumed.train_steps(18)
    assert resumed.step == 30
    assert all(torch.equal(params(straight)[k], params(resumed)[k]) for k in params(straight))


def test_apply_delta_adds_to_named_parameters() -> None:
    t = trainer()
    before = params(t)
    name = next(iter(before))
    t.apply_delta({name: torch.ones_like(before[name])})
    assert torch.equal(params(t)[name], before[name] + 1)


def test_evaluation_of_language_models_reports_perplexity() -> None:
    spec = InputSpec(kind="language", input_shape=(8,), num_classes=5)
    model = build_model(ModelSection(name="char-transformer", options=_small_gpt()), spec, 0)
    tokens = torch.randint(0, 5, (40, 9), generator=torch.Generator().manual_seed(0))
    data = ArrayDataset(tokens[:, :-1], tokens[:, 1:])
    t = Trainer(model, TrainSection(optimizer="adam", lr=0.01), data, kind="language", device=CPU, seed=0)
    result = t.evaluate(data, max_samples=16)
    assert result.samples == 16
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert 0.0 <= result.accuracy <= 1.0
    empty = t.evaluate(ArrayDataset(tokens[:0, :-1], tokens[:0, 1:]))
    assert empty.samples == 0 and math.isnan(empty.loss)


def _small_gpt() -> CharTransformerConfig:
    return CharTransformerConfig(n_layer=1, n_head=2, n_embd=16)


def test_batch_sampler_covers_each_epoch_without_replacement() -> None:
    sampler = BatchSampler(10, 3, seed=0)
    first_epoch = torch.cat([sampler.next() for _ in range(3)])
    assert len(set(first_epoch.tolist())) == 9
    sampler.next()
    assert sampler.epoch == 1
    with pytest.raises(ValueError, match="at least one"):
        BatchSampler(0, 3, seed=0)


def test_device_choice() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match=r"not supported|not one of"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            pick_device("cuda:0")


def test_batch_larger_than_the_shard_uses_the_whole_shard() -> None:
    t = trainer(dataclasses.replace(TrainSection(), batch_size=1000))
    assert t.train_steps(1).samples == 300


def test_a_checkpoint_still_resumes_when_the_local_data_changed_size() -> None:
    first = trainer(seed=3)
    first.train_steps(5)
    saved = first.state_dict()
    model = build_model(ModelSection(name="mlp", options=MLPConfig(hidden=(32,))), SPEC, 0)
    other = Trainer(model, TrainSection(), dataset(n=200), kind="classification", device=CPU, seed=0)
    other.load_state_dict(saved)
    assert other.step == 5
    assert all(torch.equal(params(first)[k], params(other)[k]) for k in params(first))


def test_steps_with_a_non_finite_loss_are_skipped_and_leave_the_model_intact() -> None:
    model = build_model(ModelSection(name="mlp", options=MLPConfig(hidden=(32,))), SPEC, 0)
    poisoned = ArrayDataset(torch.full((64, 20), float("nan")), torch.zeros(64, dtype=torch.long))
    t = Trainer(model, TrainSection(), poisoned, kind="classification", device=CPU, seed=0)
    before = params(t)
    stats = t.train_steps(5)
    assert t.skipped_steps == 5
    assert stats.steps == 0
    assert t.step == 0
    assert all(torch.equal(before[k], params(t)[k]) for k in before)


@pytest.mark.parametrize(
    ("optimizer", "swarm_batch", "expected"), [("adamw", True, 5.0), ("adamw", False, 1.0), ("adam", True, 5.0)]
)
def test_swarm_peers_reach_adam_unless_turned_off(optimizer: str, swarm_batch: bool, expected: float) -> None:
    t = trainer(TrainSection(optimizer=optimizer, lr=0.01, swarm_batch=swarm_batch))  # type: ignore[arg-type]
    t.set_swarm_peers(5)
    assert isinstance(t.optimizer, Adam) and t.optimizer.swarm_peers == expected
    t.set_swarm_peers(0)  # alone (no live neighbour counted): torch's Adam
    assert t.optimizer.swarm_peers == 1.0


def test_sgd_ignores_swarm_peers() -> None:
    """SGD's step is linear in the gradient: mixing already makes its swarm one model on the union batch."""
    a, b = trainer(seed=1), trainer(seed=1)
    a.set_swarm_peers(8)
    a.train_steps(5)
    b.train_steps(5)
    assert all(torch.equal(params(a)[k], params(b)[k]) for k in params(a))
