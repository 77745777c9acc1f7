"""Full-state transfer for a joining peer (`/gossipd/state/2.0.0`): every tensor of the model's state,
buffers included, as one FULL message, checked against the receiver's own model before allocation.

With `half` (a task whose `[gossip] wire_dtype` is float16) every floating tensor travels as float16: a
join then costs half the bytes, and the joiner's model starts within float16 rounding of the donor's, which
its own training and the next exchanges absorb."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gossipd.wire.errors import ProtocolViolation
from gossipd.wire.messages import Message, MessageType
from gossipd.wire.tensors import TensorSpec, as_float16, from_wire, pack_tensors, to_wire, unpack_tensors


def half_state(algorithm_config: object) -> bool:
    """Whether a task copies its state in float16: when its algorithm sends float16 (`wire_dtype`)."""
    return getattr(algorithm_config, "wire_dtype", "float32") == "float16"


def state_specs(state: Mapping[str, torch.Tensor], *, half: bool = False) -> dict[str, TensorSpec]:
    return {name: TensorSpec(_wire_dtype(name, t, half), tuple(t.shape)) for name, t in state.items()}


def state_message(
    state: Mapping[str, torch.Tensor], *, task: bytes, step: int, degree: int, half: bool = False
) -> Message:
    """The sender's whole model state. `round` carries the sender's training step."""
    records = tuple(to_wire(name, as_float16(t) if half else t) for name, t in state.items())
    return Message(
        type=MessageType.FULL,
        task=task,
        epoch=0,
        round=step,
        degree=degree,
        data=pack_tensors(records, state_specs(state, half=half)),
    )


def read_state(message: Message, expected: Mapping[str, TensorSpec], device: torch.device) -> dict[str, torch.Tensor]:
    """The state a FULL message carries, if it matches the receiver's model exactly (in the wire's dtypes:
    `load_state_dict` casts them to the model's own)."""
    if message.type is not MessageType.FULL:
        raise ProtocolViolation(f"expected a full state, received {message.type}")
    records = unpack_tensors(message.data, expected)
    return {name: from_wire(records[name], device) for name in expected}


def _wire_dtype(name: str, tensor: torch.Tensor, half: bool) -> str:
    return "float16" if half and tensor.is_floating_point() else to_wire(name, tensor.reshape(-1)[:0]).dtype
