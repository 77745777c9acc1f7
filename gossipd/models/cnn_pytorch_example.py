"""The CNN of the official PyTorch MNIST example (pytorch/examples, mnist/main.py, `Net`).

Two 3x3 convolutions, one 2x2 max-pool, dropout, and a 128-wide fully connected layer: 1,199,882 parameters
on (1, 28, 28), ten times the small `cnn`, almost all of them (1,179,776) in fc1. The layers keep the
example's names, so its state dict (`mnist_cnn.pt`) loads into this model and the other way round.

The example ends in `log_softmax` and trains with `nll_loss`; gossipd's models return logits and the trainer
applies `cross_entropy`, which is the same loss, so `forward` stops at fc2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gossipd.data.spec import InputSpec
from gossipd.models.errors import ModelError, check_spec


@dataclass(frozen=True, kw_only=True)
class CNNPyTorchExampleConfig:
    """`[model] name = "cnn-pytorch-example"` has no options: the architecture is the example's, and only
    the input channels, the size of fc1's input and the number of classes follow from the data."""


class CNNPyTorchExample(nn.Module):
    def __init__(self, in_channels: int, flat_features: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(flat_features, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))  # (B, 32, H-2, W-2)
        x = F.relu(self.conv2(x))  # (B, 64, H-4, W-4)
        x = F.max_pool2d(x, 2)  # (B, 64, (H-4)/2, (W-4)/2): (B, 64, 12, 12) on MNIST
        x = self.dropout1(x)
        x = x.flatten(1)  # (B, 64 * (H-4)/2 * (W-4)/2): (B, 9216) on MNIST
        x = F.relu(self.fc1(x))  # (B, 128)
        x = self.dropout2(x)
        return self.fc2(x)  # type: ignore[no-any-return]  # (B, num_classes), logits


def build(config: CNNPyTorchExampleConfig, spec: InputSpec) -> nn.Module:
    check_spec(spec, model="cnn-pytorch-example", kind="classification", ndim=3)
    in_channels, height, width = spec.input_shape
    # Two unpadded 3x3 convs take 4 off each side, then the pool halves it (flooring).
    pooled_height, pooled_width = (height - 4) // 2, (width - 4) // 2
    if pooled_height < 1 or pooled_width < 1:
        raise ModelError(
            f"cnn-pytorch-example: the input is too small, it needs images of at least 6x6, found {height}x{width}"
        )
    return CNNPyTorchExample(in_channels, 64 * pooled_height * pooled_width, spec.num_classes)
