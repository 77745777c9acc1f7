"""The state-transfer message: a joiner's copy of a neighbour's whole model state, exact in float32, half the
bytes in float16, checked against the receiver's own layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gossipd.mixing.plain import PlainConfig
from gossipd.mixing.powergossip import PowerGossipConfig
from gossipd.mixing.state import half_state, read_state, state_message, state_specs
from gossipd.wire.errors import ShapeMismatch
from gossipd.wire.messages import decode_message, encode_message

TASK = b"S" * 16
CPU = torch.device("cpu")


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    net.train()
    net(torch.randn(5, 1, 8, 8))  # running statistics and num_batches_tracked (int64) move off their defaults
    return net


def transfer(state: dict[str, torch.Tensor], *, half: bool) -> tuple[dict[str, torch.Tensor], int]:
    wire = encode_message(state_message(state, task=TASK, step=42, degree=1, half=half))
    message = decode_message(wire, max_size=1 << 20, task=TASK)
    assert message.round == 42
    return read_state(message, state_specs(state, half=half), CPU), len(wire)


def test_a_float32_copy_is_exact() -> None:
    donor = model(0).state_dict()
    received, _ = transfer(donor, half=False)
    assert list(received) == list(donor)
    assert all(torch.equal(received[k], donor[k]) for k in donor)


def test_a_float16_copy_is_half_the_bytes_and_loads_within_rounding() -> None:
    donor = model(0).state_dict()
    received, size = transfer(donor, half=True)
    _, full_size = transfer(donor, half=False)
    floats = sum(t.numel() for t in donor.values() if t.is_floating_point())
    assert full_size - size == 2 * floats  # two bytes saved per floating element, nothing else changes
    assert received["1.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(received["1.num_batches_tracked"], donor["1.num_batches_tracked"])
    joiner = model(1)
    joiner.load_state_dict(received)  # casts back to the joiner's own float32
    for name, value in joiner.state_dict().items():
        assert value.dtype == donor[name].dtype
        assert torch.allclose(value.float(), donor[name].float(), rtol=1e-3, atol=1e-4), name


def test_a_float16_copy_clamps_what_float16_cannot_hold() -> None:
    donor = model(0).state_dict()
    donor["1.running_var"] = torch.full_like(donor["1.running_var"], 1e6)
    received, _ = transfer(donor, half=True)
    assert bool(torch.isfinite(received["1.running_var"]).all())
    assert float(received["1.running_var"].max()) == float(torch.finfo(torch.float16).max)


def test_a_receiver_expecting_another_layout_rejects_the_copy() -> None:
    donor = model(0).state_dict()
    wire = encode_message(state_message(donor, task=TASK, step=1, degree=1, half=True))
    message = decode_message(wire, max_size=1 << 20, task=TASK)
    with pytest.raises(ShapeMismatch):
        read_state(message, state_specs(donor, half=False), CPU)


def test_only_a_float16_task_copies_its_state_in_float16() -> None:
    assert half_state(PowerGossipConfig(wire_dtype="float16"))
    assert not half_state(PowerGossipConfig())
    assert not half_state(PlainConfig())
    assert not half_state(None)
