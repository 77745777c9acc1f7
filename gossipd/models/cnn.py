"""The small MNIST CNN: a few conv-ReLU-pool stages, then a two-layer classifier head.

Sized to train quickly on a CPU: the default has about 0.11 M parameters on (1, 28, 28).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from gossipd.data.spec import InputSpec
from gossipd.models.errors import ModelError, check_at_least, check_dropout, check_spec
from gossipd.task.fields import bounds


@dataclass(frozen=True, kw_only=True)
class CNNConfig:
    """`[model] name = "cnn"`.

    channels: output channels of each conv stage; each stage halves the height and width.
    kernel_size: the side of every conv kernel (padded by kernel_size // 2, so odd sizes keep H and W).
    hidden: the width of the fully connected layer before the output.
    dropout: the probability of zeroing a hidden unit of that layer during training.
    """

    channels: tuple[int, ...] = field(default=(16, 32), metadata=bounds(min=1))
    kernel_size: int = field(default=5, metadata=bounds(min=1))
    hidden: int = field(default=64, metadata=bounds(min=1))
    dropout: float = field(default=0.0, metadata=bounds(min=0.0, max=0.99))


class CNN(nn.Module):
    def __init__(self, config: CNNConfig, in_channels: int, flat_features: int, num_classes: int) -> None:
        super().__init__()
        k = config.kernel_size
        stages: list[nn.Module] = []
        for c in config.channels:
            stages += [nn.Conv2d(in_channels, c, k, padding=k // 2), nn.ReLU(), nn.MaxPool2d(2)]
            in_channels = c
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Sequential(
            nn.Linear(flat_features, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C, H', W')
        x = x.flatten(1)  # (B, C * H' * W')
        return self.classifier(x)  # type: ignore[no-any-return]  # (B, num_classes)


def feature_size(config: CNNConfig, height: int, width: int) -> tuple[int, int]:
    """Height and width after the conv stages; ModelError if an image would shrink to nothing."""
    k = config.kernel_size
    for stage in range(len(config.channels)):
        # A conv with padding k // 2 keeps odd kernels' size and grows even ones' by one; the pool floors.
        height = (height + 2 * (k // 2) - k + 1) // 2
        width = (width + 2 * (k // 2) - k + 1) // 2
        if height < 1 or width < 1:
            raise ModelError(
                f"cnn: the input is too small for {len(config.channels)} pooling stages "
                f"(nothing is left after stage {stage + 1}); use fewer channels entries or larger images"
            )
    return height, width


def build(config: CNNConfig, spec: InputSpec) -> nn.Module:
    check_spec(spec, model="cnn", kind="classification", ndim=3)
    for i, c in enumerate(config.channels):
        check_at_least(c, 1, name=f"channels[{i}]")
    check_at_least(config.kernel_size, 1, name="kernel_size")
    check_at_least(config.hidden, 1, name="hidden")
    check_dropout(config.dropout)
    in_channels, height, width = spec.input_shape
    height, width = feature_size(config, height, width)
    last_channels = config.channels[-1] if config.channels else in_channels
    return CNN(config, in_channels, last_channels * height * width, spec.num_classes)
