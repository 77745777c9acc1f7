"""Multinomial logistic regression: one linear layer over the flattened input."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gossipd.data.spec import InputSpec
from gossipd.models.errors import check_spec


@dataclass(frozen=True, kw_only=True)
class LogisticConfig:
    """`[model] name = "logistic"` has no options: its size follows from the data."""


class Logistic(nn.Module):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, D)
        return self.linear(x)  # type: ignore[no-any-return]  # (B, num_classes)


def build(config: LogisticConfig, spec: InputSpec) -> nn.Module:
    check_spec(spec, model="logistic", kind="classification")
    return Logistic(math.prod(spec.input_shape), spec.num_classes)
