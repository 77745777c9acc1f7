"""Sgd and Adam: torch.optim.SGD's, Adam's and AdamW's updates and state dicts, bit for bit, without
importing torch._dynamo."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import pytest
import torch

from gossipd.train.adam import Adam
from gossipd.train.sgd import Sgd

# (ours, torch's, settings): each pair built with the same settings must step alike.
PAIRS: list[tuple[Any, Any, dict[str, Any]]] = [
    (Sgd, torch.optim.SGD, {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0}),
    (Sgd, torch.optim.SGD, {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0}),
    (Sgd, torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    (Adam, torch.optim.Adam, {"weight_decay": 0.0}),
    (Adam, torch.optim.Adam, {"weight_decay": 1e-2, "betas": (0.8, 0.99)}),
    (Adam, torch.optim.AdamW, {"weight_decay": 1e-2, "decoupled_weight_decay": True}),
]
IDS = ["sgd", "sgd-momentum", "sgd-nesterov-wd", "adam", "adam-wd-betas", "adamw"]


def torch_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """AdamW is its own class in torch; its flag is ours."""
    return {k: v for k, v in settings.items() if k != "decoupled_weight_decay"}


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
    for key, ours in a["state"].items():
        theirs = b["state"][key]
        if ours.keys() != theirs.keys():
            return False
        for name, tensor in ours.items():
            if not torch.equal(tensor, theirs[name]) or tensor.dtype != theirs[name].dtype:
                return False
            if tensor.device != theirs[name].device:
                return False
    return True


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(("ours_type", "torch_type", "settings"), PAIRS, ids=IDS)
def test_matches_torch_bit_for_bit(ours_type: Any, torch_type: Any, settings: dict[str, Any]) -> None:
    ours, theirs = model(), model()
    optimizer = ours_type(ours.parameters(), lr=0.1, **settings)
    reference = torch_type(theirs.parameters(), lr=0.1, **torch_settings(settings))
    train(ours, optimizer, 30)
    train(theirs, reference, 30)
    assert same_parameters(ours, theirs)
    assert same_state(optimizer.state_dict(), reference.state_dict())


@pytest.mark.parametrize(("ours_type", "torch_type", "settings"), PAIRS, ids=IDS)
def test_torch_state_resumes_in_ours(ours_type: Any, torch_type: Any, settings: dict[str, Any]) -> None:
    source = model()
    source_optimizer = torch_type(source.parameters(), lr=0.1, **torch_settings(settings))
    train(source, source_optimizer, 10)
    ours, theirs = copy.deepcopy(source), copy.deepcopy(source)
    # Built with other settings: the state dict's replace them, as torch's load_state_dict does.
    optimizer = ours_type(ours.parameters(), lr=0.5)
    reference = torch_type(theirs.parameters(), lr=0.5)
    # Copies: a loaded state dict's tensors become the optimiser's buffers, updated in place.
    optimizer.load_state_dict(copy.deepcopy(source_optimizer.state_dict()))
    reference.load_state_dict(copy.deepcopy(source_optimizer.state_dict()))
    train(ours, optimizer, 10, seed=2)
    train(theirs, reference, 10, seed=2)
    assert same_parameters(ours, theirs)
    assert same_state(optimizer.state_dict(), reference.state_dict())


@pytest.mark.parametrize(("ours_type", "torch_type", "settings"), PAIRS, ids=IDS)
def test_our_state_resumes_in_torch(ours_type: Any, torch_type: Any, settings: dict[str, Any]) -> None:
    source = model()
    optimizer = ours_type(source.parameters(), lr=0.1, **settings)
    train(source, optimizer, 10)
    theirs = copy.deepcopy(source)
    reference = torch_type(theirs.parameters(), lr=0.5)
    reference.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert same_state(reference.state_dict(), optimizer.state_dict())
    train(source, optimizer, 10, seed=2)
    train(theirs, reference, 10, seed=2)
    assert same_parameters(source, theirs)


def test_a_state_for_other_parameters_is_refused() -> None:
    source = model()
    sgd = Sgd(source.parameters(), lr=0.1, momentum=0.9)
    train(source, sgd, 1)
    fewer = Sgd(list(source.parameters())[:2], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="size"):
        fewer.load_state_dict(sgd.state_dict())


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_training_leaves_torch_dynamo_unimported(name: str) -> None:
    """The point: a daemon never imports torch._dynamo (~70 MB resident), whichever optimiser its task names."""
    script = f"""
import sys
import torch
from gossipd.task.schema import TrainSection
from gossipd.train.trainer import build_optimizer
net = torch.nn.Linear(4, 2)
optimizer = build_optimizer(TrainSection(optimizer="{name}", momentum=0.9), net.parameters())
net(torch.randn(3, 4)).sum().backward()
optimizer.step()
optimizer.load_state_dict(optimizer.state_dict())
optimizer.zero_grad(set_to_none=True)
print(sorted(m for m in ("torch._dynamo", "sympy") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"
