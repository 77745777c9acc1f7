"""The CIFAR ResNet of He et al. 2016 (section 4.2), as used by the PowerGossip and Choco-SGD papers.

A 3x3 stem, three stages of basic blocks at widths w, 2w, 4w (the last two halve H and W), global average
pooling and a linear classifier: 6n + 2 layers.

Shortcuts that change shape are "option B", a strided 1x1 conv and BatchNorm, as in the papers' code
(epfml/ChocoSGD `pcode/models/resnet.py`, copied into epfml/powergossip). Their 272,474 parameters for
CIFAR-10 count these shortcuts (2,752 of them); He et al.'s option A, zero-padding the identity, has none
and gives 269,722, so peers built from option A could not mix with the papers' checkpoints or match their
communication volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gossipd.data.spec import InputSpec
from gossipd.models.errors import ModelError, check_at_least, check_spec
from gossipd.task.fields import bounds


@dataclass(frozen=True, kw_only=True)
class ResNet20Config:
    """`[model] name = "resnet20"`.

    depth: weighted layers, 6n + 2 for n blocks per stage: 20, 32, 44, 56, 110.
    width: channels of the first stage; the second and third have twice and four times as many.
    """

    depth: int = field(default=20, metadata=bounds(min=8))
    width: int = field(default=16, metadata=bounds(min=1))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H', W')
        out = self.bn2(self.conv2(out))  # (B, C_out, H', W')
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, width: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        channels = width
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, stage_width, stride))
                channels = stage_width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He et al. initialise convolutions for ReLU (their ref. [13]); BatchNorm starts as the identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, w, H, W)
        x = self.blocks(x)  # (B, 4w, H/4, W/4)
        x = x.mean(dim=(2, 3))  # (B, 4w)
        return self.head(x)  # type: ignore[no-any-return]  # (B, num_classes)


def build(config: ResNet20Config, spec: InputSpec) -> nn.Module:
    check_spec(spec, model="resnet20", kind="classification", ndim=3)
    check_at_least(config.width, 1, name="width")
    if config.depth < 8 or (config.depth - 2) % 6 != 0:
        raise ModelError(f"resnet20: depth must be 6n + 2 (8, 14, 20, 32, ...), found {config.depth}")
    # Any H, W ≥ 1 works: a stride-2 3x3 conv (padding 1) and a stride-2 1x1 conv both give ceil(H / 2).
    return ResNet((config.depth - 2) // 6, config.width, spec.input_shape[0], spec.num_classes)
