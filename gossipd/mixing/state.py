"""Full-state transfer for a joining peer (`/gossipd/state/2.0.0`): every tensor of the model's state,
buffers included, as one FULL message, checked against the receiver's own model before allocation."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gossipd.wire.errors import ProtocolViolation
from gossipd.wire.messages import Message, MessageType
from gossipd.wire.tensors import TensorSpec, from_wire, pack_tensors, to_wire, unpack_tensors


def state_specs(state: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {name: TensorSpec(to_wire(name, t.reshape(-1)[:0]).dtype, tuple(t.shape)) for name, t in state.items()}


def state_message(state: Mapping[str, torch.Tensor], *, task: bytes, step: int, degree: int) -> Message:
    """The sender's whole model state. `round` carries the sender's training step."""
    records = tuple(to_wire(name, t) for name, t in state.items())
    return Message(
        type=MessageType.FULL,
        task=task,
        epoch=0,
        round=step,
        degree=degree,
        data=pack_tensors(records, state_specs(state)),
    )


def read_state(message: Message, expected: Mapping[str, TensorSpec], device: torch.device) -> dict[str, torch.Tensor]:
    """The state a FULL message carries, if it matches the receiver's model exactly."""
    if message.type is not MessageType.FULL:
        raise ProtocolViolation(f"expected a full state, received {message.type}")
    records = unpack_tensors(message.data, expected)
    return {name: from_wire(records[name], device) for name in expected}
