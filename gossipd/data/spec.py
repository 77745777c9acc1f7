"""What a loaded dataset looks like to the rest of gossipd: tensors plus a description of one example."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Kind = Literal["classification", "language"]


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """The shape of one example, which is all a model builder needs to know about the data.

    classification: inputs are float32 `(N, *input_shape)` (stored as bytes for images: ArrayDataset.pixels),
    y is int64 `(N,)` with values in [0, num_classes).
    language: x and y are int64 `(N, block_size)` token ids in [0, num_classes); y is x shifted by one.
    """

    kind: Kind
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True)
class Pixels:
    """How stored bytes become a model's float32 input: `(raw / divisor − mean) / std`. Image datasets keep
    their pixels as the bytes they came in and decode a batch at a time: full MNIST is 47 MB as bytes and
    188 MB as float32, every peer's share and held-out set likewise a quarter. The arithmetic is float32,
    step by step, as the images were once converted whole, so a batch is the same to the bit."""

    divisor: float = 255.0
    mean: float = 0.0
    std: float = 1.0

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.to(torch.float32).div_(self.divisor)
        if self.mean != 0.0 or self.std != 1.0:
            x.sub_(self.mean).div_(self.std)
        return x


@dataclass(frozen=True)
class ArrayDataset:
    """Examples held in memory as two aligned tensors (x[i], y[i]). `x` holds the model's inputs as they are,
    or, with `pixels`, bytes that `inputs` decodes: read inputs through `inputs`, never `x` directly."""

    x: torch.Tensor
    y: torch.Tensor
    pixels: Pixels | None = None

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} examples but y has {self.y.shape[0]}")
        if self.pixels is not None and self.x.dtype != torch.uint8:
            raise ValueError(f"pixels decode bytes, found {self.x.dtype} inputs")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def inputs(self, index: torch.Tensor | slice | None = None, device: torch.device | None = None) -> torch.Tensor:
        """The model's inputs for `index` (all of them: None), moved to `device` before decoding (bytes
        travel, floats are made where they are used)."""
        raw = self.x if index is None else self.x[index]
        if device is not None:
            raw = raw.to(device)
        return raw if self.pixels is None else self.pixels.decode(raw)

    def to(self, device: torch.device) -> ArrayDataset:
        return ArrayDataset(self.x.to(device), self.y.to(device), self.pixels)

    def decoded(self) -> ArrayDataset:
        """The same examples with the inputs as the model takes them (for code that reads `x` whole)."""
        return self if self.pixels is None else ArrayDataset(self.inputs(), self.y)

    def subset(self, indices: torch.Tensor) -> ArrayDataset:
        return ArrayDataset(self.x[indices], self.y[indices], self.pixels)

    def head(self, count: int) -> ArrayDataset:
        """The first `count` examples, copied: unlike a slice, it lets the rest be freed."""
        if count >= len(self):
            return self
        return ArrayDataset(self.x[:count].clone(), self.y[:count].clone(), self.pixels)


@dataclass(frozen=True)
class DataBundle:
    """A task's data after loading: the training examples, the held-out ones, and their spec."""

    spec: InputSpec
    train: ArrayDataset
    validation: ArrayDataset
    # Human-readable class names or vocabulary, when the source has them (for reports and sampling text).
    class_names: tuple[str, ...] = ()
