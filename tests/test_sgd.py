"""Sgd: torch.optim.SGD's updates and state dicts, bit for bit, without importing torch._dynamo."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import pytest
import torch

from gossipd.train.sgd import Sgd

SETTINGS = [
    {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
]


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def train(net: torch.nn.Module, optimizer: Any, steps: int, seed: int = 1) -> None:
    """Steps on seeded batches, the learning rate set before each as the trainer sets it."""
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 0.1 / (1 + step)
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()  # type: ignore[no-untyped-call]
        optimizer.step()


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    return all(torch.equal(a["state"][k]["momentum_buffer"], b["state"][k]["momentum_buffer"]) for k in a["state"])


@pytest.mark.parametrize("settings", SETTINGS)
def test_sgd_matches_torch_bit_for_bit(settings: dict[str, Any]) -> None:
    ours, theirs = model(), model()
    sgd = Sgd(ours.parameters(), lr=0.1, **settings)
    reference = torch.optim.SGD(theirs.parameters(), lr=0.1, **settings)
    train(ours, sgd, 30)
    train(theirs, reference, 30)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))
    assert same_state(sgd.state_dict(), reference.state_dict())


@pytest.mark.parametrize("settings", SETTINGS)
def test_torch_state_resumes_in_sgd(settings: dict[str, Any]) -> None:
    source = model()
    source_optimizer = torch.optim.SGD(source.parameters(), lr=0.1, **settings)
    train(source, source_optimizer, 10)
    ours, theirs = copy.deepcopy(source), copy.deepcopy(source)
    # Built with other settings: the state dict's replace them, as torch's load_state_dict does.
    sgd = Sgd(ours.parameters(), lr=0.5)
    reference = torch.optim.SGD(theirs.parameters(), lr=0.5)
    # Copies: a loaded state dict's tensors become the optimiser's buffers, updated in place.
    sgd.load_state_dict(copy.deepcopy(source_optimizer.state_dict()))
    reference.load_state_dict(copy.deepcopy(source_optimizer.state_dict()))
    train(ours, sgd, 10, seed=2)
    train(theirs, reference, 10, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))
    assert same_state(sgd.state_dict(), reference.state_dict())


@pytest.mark.parametrize("settings", SETTINGS)
def test_sgd_state_resumes_in_torch(settings: dict[str, Any]) -> None:
    source = model()
    sgd = Sgd(source.parameters(), lr=0.1, **settings)
    train(source, sgd, 10)
    theirs = copy.deepcopy(source)
    reference = torch.optim.SGD(theirs.parameters(), lr=0.5)
    reference.load_state_dict(copy.deepcopy(sgd.state_dict()))
    assert same_state(reference.state_dict(), sgd.state_dict())
    train(source, sgd, 10, seed=2)
    train(theirs, reference, 10, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), theirs.parameters(), strict=True))


def test_a_state_for_other_parameters_is_refused() -> None:
    source = model()
    sgd = Sgd(source.parameters(), lr=0.1, momentum=0.9)
    train(source, sgd, 1)
    fewer = Sgd(list(source.parameters())[:2], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="size"):
        fewer.load_state_dict(sgd.state_dict())


def test_sgd_training_leaves_torch_dynamo_unimported() -> None:
    """The point of Sgd: a daemon training with SGD never imports torch._dynamo (~70 MB resident)."""
    script = """
import sys
import torch
from gossipd.task.schema import TrainSection
from gossipd.train.trainer import build_optimizer
net = torch.nn.Linear(4, 2)
optimizer = build_optimizer(TrainSection(optimizer="sgd", momentum=0.9), net.parameters())
net(torch.randn(3, 4)).sum().backward()
optimizer.step()
optimizer.load_state_dict(optimizer.state_dict())
optimizer.zero_grad(set_to_none=True)
print(sorted(m for m in ("torch._dynamo", "sympy") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"
