"""Which tensors of a model are mixed, and how a tensor is viewed as a matrix for low-rank compression."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gossipd.mixing.personal import Personal
from gossipd.wire.tensors import TensorSpec, to_wire

Params = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and wire dtypes of the mixed tensors, in a fixed order both ends share."""

    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]

    @classmethod
    def of(cls, params: Params) -> ParamLayout:
        shapes = {name: tuple(int(d) for d in t.shape) for name, t in params.items()}
        dtypes = {name: to_wire(name, t.reshape(-1)[:0]).dtype for name, t in params.items()}
        return cls(shapes, dtypes)

    def specs(self) -> dict[str, TensorSpec]:
        return {name: TensorSpec(self.dtypes[name], shape) for name, shape in self.shapes.items()}

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())


def mixed_parameters(model: nn.Module, personal: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """The tensors gossip mixes: trainable parameters only, less the `personal` ones (`[gossip] personal`,
    see gossipd.mixing.personal), which never leave the peer. Normalisation running statistics (buffers)
    stay local, as in PowerGossip's reference code; a joining peer copies them once with the full state."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad and name not in personal}


def personal_of(model: nn.Module, patterns: Sequence[str]) -> Personal:
    """What `[gossip] personal` keeps of this model; PersonalError if the patterns do not fit it."""
    trainable = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    return Personal.of(trainable, model.state_dict().keys(), patterns)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """A tensor as `shape[0] × rest` (a conv kernel (out, in, kh, kw) becomes out × in·kh·kw)."""
    return shape[0], math.prod(shape[1:])


def low_rank_pays(shape: tuple[int, ...], rank: int) -> bool:
    """Whether rank-`rank` factors are smaller than the tensor; 1-D tensors and thin matrices go whole."""
    if len(shape) < 2:
        return False
    m, n = matrix_shape(shape)
    return (m + n) * rank < m * n


def max_message_bytes(layout: ParamLayout) -> int:
    """The largest mix message a peer of this model accepts: twice the full model (a top-k message of
    100% sends an index per value) plus per-tensor framing."""
    full = sum(math.prod(s) * 8 for s in layout.shapes.values())
    return full + 512 * len(layout.shapes) + 4096
