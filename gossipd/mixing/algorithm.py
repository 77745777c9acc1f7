"""The interface every mixing algorithm implements: a per-edge state and the rounds of one exchange.

An algorithm's exchange is written as a generator: it yields the message it wants to send (and what it
expects back), receives the peer's checked tensors, and finally returns the delta to add to the local model.
Both ends run the same generator, so the messages of each round cross in flight (full duplex).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch

from gossipd.mixing.layout import ParamLayout, Params
from gossipd.wire.messages import MessageType
from gossipd.wire.tensors import TensorSpec, WireTensor, to_wire

Delta = dict[str, torch.Tensor]
Records = Mapping[str, WireTensor]
# A tensor's momentum among a round's records is keyed by its name with this suffix (the wire carries no
# names: both ends derive the same records from the layout).
MOMENTUM = "#momentum"


@dataclass(frozen=True)
class Outgoing:
    """One round: what this end sends, and the message type, phase and tensors it must receive. Both ends
    send the same layout, so `tensors` match `expect` name for name, in order (the wire carries no names)."""

    type: MessageType
    phase: int
    tensors: tuple[WireTensor, ...]
    expect: Mapping[str, TensorSpec]


@dataclass(frozen=True, kw_only=True)
class ExchangeContext:
    """Everything the rounds of one exchange may read. `sign` is −1 at the edge's lower end (which
    subtracts the shared update) and +1 at the upper end (which adds it): the pair's sum is unchanged."""

    params: Params
    layout: ParamLayout
    weight: float
    sign: float
    epoch: int
    device: torch.device
    rng: torch.Generator
    # The optimiser's momentum of the same tensors, where this exchange mixes it too (`[gossip]
    # momentum_every`; whole-model exchanges only); zeros stand for momentum this end does not have.
    momentum: Params | None = None


@dataclass(frozen=True)
class MixOutcome:
    """What an exchange leaves this end with: the delta to add to its model, and its estimate of the
    distance ‖x_peer − x_self‖ reconstructed from what it received (exact for plain gossip, a projection
    for PowerGossip, the public copies' distance for Choco). `total`, where the exchange also estimated the
    whole distance (an auto task's PowerGossip rungs, gossipd.mixing.probe), says how much of it `distance`
    captured."""

    delta: Delta
    distance: float
    total: float | None = None
    momentum: Delta | None = None  # the change to this end's momentum, where the exchange mixed it


Rounds = Generator[Outgoing, Records, MixOutcome]
EdgeData = TypeVar("EdgeData")


class Algorithm(ABC, Generic[EdgeData]):
    """A mixing algorithm, configured once per task; per-edge state lives in `EdgeState.data`."""

    name: ClassVar[str]
    #: The dataclass of per-edge state, rebuilt from its fields when a checkpoint is loaded (None: stateless).
    edge_type: ClassVar[type[Any] | None] = None

    @abstractmethod
    def reset_edge(self, epoch: int, layout: ParamLayout, device: torch.device) -> EdgeData:
        """Per-edge state for an edge starting at `epoch` (same on both ends)."""

    @abstractmethod
    def rounds(self, ctx: ExchangeContext, edge: EdgeData) -> Rounds:
        """The exchange's rounds; mutates `edge` in place (a failed exchange discards the whole edge)."""

    def edge_floats(self, layout: ParamLayout) -> int:
        """Floats of per-edge state, for memory reports."""
        return 0

    def edge_type_for(self, mode: int | None) -> type[Any] | None:
        """The per-edge state's dataclass for an edge of `mode` (an auto task's; None elsewhere)."""
        return self.edge_type


def full_tensors(params: Params) -> tuple[WireTensor, ...]:
    """Every tensor at full precision, in layout order."""
    return tuple(to_wire(name, t) for name, t in params.items())


def _squared_norm(tensor: torch.Tensor) -> float:
    floating = tensor if tensor.is_floating_point() else tensor.float()
    return float(torch.linalg.vector_norm(floating, dtype=torch.float32)) ** 2


def norm(tensors: Delta) -> float:
    """‖·‖ over a set of tensors, as if they were one vector."""
    # One pass per tensor and no squared copy: this runs on every whole model an exchange receives.
    return math.sqrt(sum(_squared_norm(t) for t in tensors.values()))
