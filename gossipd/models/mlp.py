"""A fully connected network over the flattened input (the benchmark's MLP is 784-200-200-10)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from gossipd.data.spec import InputSpec
from gossipd.models.errors import check_at_least, check_dropout, check_spec
from gossipd.task.fields import bounds


@dataclass(frozen=True, kw_only=True)
class MLPConfig:
    """`[model] name = "mlp"`.

    hidden: the width of each hidden layer, input side first; `[]` is logistic regression.
    dropout: the probability of zeroing a hidden unit during training, after each ReLU.
    """

    hidden: tuple[int, ...] = field(default=(200, 200), metadata=bounds(min=1))
    dropout: float = field(default=0.0, metadata=bounds(min=0.0, max=0.99))


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, D)
        return self.net(x)  # type: ignore[no-any-return]  # (B, num_classes)


def build(config: MLPConfig, spec: InputSpec) -> nn.Module:
    check_spec(spec, model="mlp", kind="classification")
    for i, h in enumerate(config.hidden):
        check_at_least(h, 1, name=f"hidden[{i}]")
    check_dropout(config.dropout)
    return MLP(math.prod(spec.input_shape), config.hidden, spec.num_classes, config.dropout)
