"""Local DP-SGD: per-example clipping, Gaussian noise, and an RDP accountant checked against published ε."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gossipd.data.spec import ArrayDataset, InputSpec
from gossipd.models.mlp import MLPConfig
from gossipd.models.registry import build_model
from gossipd.models.resnet20 import ResNet20Config
from gossipd.task.fields import TaskError
from gossipd.task.loader import parse_task
from gossipd.task.schema import ModelSection, TrainSection
from gossipd.train.privacy import (
    DPState,
    PrivacyError,
    PrivacySection,
    epsilon_classic,
    epsilon_spent,
    private_gradients,
    steps_within_budget,
)
from gossipd.train.trainer import Trainer, loss_and_hits
from tests.conftest import DEFAULT_TASK

SPEC = InputSpec(kind="classification", input_shape=(20,), num_classes=2)
CPU = torch.device("cpu")


def test_the_accountant_reproduces_tf_privacy_published_mnist_epsilon() -> None:
    # TF Privacy's README: N=60000, batch 256, σ=1.1, 60 epochs, δ=1e-5 "satisfies differential privacy
    # with eps = 3.01" (RDP with the classic conversion). 60 epochs of 256 out of 60000 = 14062 steps.
    q, steps = 256 / 60000, int(60 * 60000 / 256)
    assert epsilon_classic(1.1, q, steps, 1e-5) == pytest.approx(3.01, abs=0.01)
    # The reported ε uses the tighter RDP-to-DP conversion (Balle et al. 2020): never larger.
    assert epsilon_spent(1.1, q, steps, 1e-5) < 3.01


def test_epsilon_grows_with_steps_and_shrinks_with_noise() -> None:
    q = 0.01
    assert epsilon_spent(1.0, q, 100, 1e-5) < epsilon_spent(1.0, q, 1000, 1e-5)
    assert epsilon_spent(2.0, q, 1000, 1e-5) < epsilon_spent(1.0, q, 1000, 1e-5)
    assert epsilon_spent(1.0, q, 0, 1e-5) == 0.0


def test_the_ledger_composes_runs_and_finds_the_budget() -> None:
    state = DPState()
    for _ in range(50):
        state.record(1.0, 0.01)
    assert state.history == [(1.0, 0.01, 50)]
    assert state.epsilon(1e-5) == pytest.approx(epsilon_spent(1.0, 0.01, 50, 1e-5))
    left = steps_within_budget(state, 1.0, 0.01, 2.0, 1e-5)
    assert epsilon_spent(1.0, 0.01, 50 + left, 1e-5) <= 2.0 < epsilon_spent(1.0, 0.01, 51 + left, 1e-5)
    assert DPState.from_state(state.to_state()).history == state.history


def model() -> nn.Module:
    return build_model(ModelSection(name="mlp", options=MLPConfig(hidden=(16,))), SPEC, 0)


def test_each_example_is_clipped_and_the_noise_has_the_stated_scale() -> None:
    net = model()
    x, y = torch.randn(8, 20) * 100, torch.randint(0, 2, (8,))

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_and_hits("classification", logits, target)[0]

    quiet = PrivacySection(noise_multiplier=1e-9, max_grad_norm=0.5)
    grads = private_gradients(net, loss, x, y, section=quiet, expected_batch=8.0)
    total = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
    assert total <= 0.5 + 1e-4  # the mean of 8 clipped gradients can be no longer than the clip
    noisy = PrivacySection(noise_multiplier=2.0, max_grad_norm=0.5)
    empty = private_gradients(net, loss, x[:0], y[:0], section=noisy, expected_batch=4.0)
    values = torch.cat([g.reshape(-1) for g in empty.values()])
    assert float(values.std()) == pytest.approx(2.0 * 0.5 / 4.0, rel=0.1)


def separable(n: int = 2000) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 20, generator=g)
    return ArrayDataset(x, (x[:, 0] > 0).long())


def test_private_training_learns_and_spends_epsilon_until_its_target() -> None:
    privacy = PrivacySection(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=3.0)
    trainer = Trainer(
        model(), TrainSection(lr=0.1), separable(), kind="classification", device=CPU, seed=0, privacy=privacy
    )
    trainer.train_steps(150)
    assert trainer.evaluate(separable()).accuracy > 0.85
    spent = trainer.epsilon()
    assert spent is not None
    assert 0 < spent <= 3.0
    trainer.train_steps(100_000)  # stops at the budget
    assert trainer.budget_spent
    assert (trainer.epsilon() or 0.0) <= 3.0
    saved = trainer.state_dict()
    again = Trainer(model(), TrainSection(), separable(), kind="classification", device=CPU, seed=1, privacy=privacy)
    again.load_state_dict(saved)
    assert again.epsilon() == pytest.approx(trainer.epsilon())


def test_batch_norm_models_are_refused_with_a_clear_error() -> None:
    spec = InputSpec(kind="classification", input_shape=(3, 8, 8), num_classes=2)
    resnet = build_model(ModelSection(name="resnet20", options=ResNet20Config()), spec, 0)
    data = ArrayDataset(torch.randn(16, 3, 8, 8), torch.zeros(16, dtype=torch.long))
    with pytest.raises(PrivacyError, match="batch normalisation"):
        Trainer(resnet, TrainSection(), data, kind="classification", device=CPU, seed=0,
                privacy=PrivacySection(noise_multiplier=1.0))  # fmt: skip


def test_privacy_section_in_a_task_file() -> None:
    text = DEFAULT_TASK.read_text() + "\n[privacy]\nnoise_multiplier = 1.2\ndelta = 1e-6\n"
    task = parse_task(text, file="t.toml", base_dir=DEFAULT_TASK.parent)
    assert task.privacy == PrivacySection(noise_multiplier=1.2, delta=1e-6)
    with pytest.raises(TaskError, match=r"privacy\.noise_multiplier: missing"):
        parse_task(DEFAULT_TASK.read_text() + "\n[privacy]\ndelta = 1e-6\n", file="t.toml")
