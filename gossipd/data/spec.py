"""What a loaded dataset looks like to the rest of gossipd: tensors plus a description of one example."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Kind = Literal["classification", "language"]


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """The shape of one example, which is all a model builder needs to know about the data.

    classification: x is float32 `(N, *input_shape)`, y is int64 `(N,)` with values in [0, num_classes).
    language: x and y are int64 `(N, block_size)` token ids in [0, num_classes); y is x shifted by one.
    """

    kind: Kind
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True)
class ArrayDataset:
    """Examples held in memory as two aligned tensors (x[i], y[i])."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} examples but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, indices: torch.Tensor) -> ArrayDataset:
        return ArrayDataset(self.x[indices], self.y[indices])

    def head(self, count: int) -> ArrayDataset:
        """The first `count` examples, copied: unlike a slice, it lets the rest be freed."""
        if count >= len(self):
            return self
        return ArrayDataset(self.x[:count].clone(), self.y[:count].clone())


@dataclass(frozen=True)
class DataBundle:
    """A task's data after loading: the training examples, the held-out ones, and their spec."""

    spec: InputSpec
    train: ArrayDataset
    validation: ArrayDataset
    # Human-readable class names or vocabulary, when the source has them (for reports and sampling text).
    class_names: tuple[str, ...] = ()
