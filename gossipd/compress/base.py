"""One small interface for the compressors Choco-SGD applies to each tensor's difference.

A compressor turns a tensor into a few wire records ("parts") and back. Both ends of an edge apply the
decompressed parts, the sender included, so the public copies they keep of each other stay bit-identical.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch

from gossipd.wire.tensors import TensorSpec, WireTensor


class Compressor(ABC):
    """Q(v): a (usually biased, contractive) compression of a tensor v."""

    #: The spec string that selects this compressor, e.g. "top-k:1%"; shown in status and reports.
    spec: str

    @abstractmethod
    def compress(self, name: str, tensor: torch.Tensor, rng: torch.Generator) -> list[WireTensor]:
        """The wire parts of Q(tensor). `rng` (a CPU generator) drives any randomness."""

    @abstractmethod
    def parts(self, name: str, shape: tuple[int, ...]) -> dict[str, TensorSpec]:
        """The parts a receiver expects for a tensor of `shape`, checked before anything is allocated."""

    @abstractmethod
    def decompress(
        self, name: str, shape: tuple[int, ...], parts: Mapping[str, WireTensor], device: torch.device
    ) -> torch.Tensor:
        """Q(tensor) rebuilt from checked parts, as float32 on `device`."""


def part_name(name: str, part: str) -> str:
    """Parts of one tensor travel as records named `<tensor>#<part>`."""
    return f"{name}#{part}"
