"""Sparsifiers: top-k and random-k, each sending k float32 values and their int32 indices (8k bytes).

Both are unscaled (biased) so they are contractions, E‖Q(v) − v‖² ≤ (1 − k/d)‖v‖², which Choco-SGD needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from gossipd.compress.base import Compressor, part_name
from gossipd.wire.errors import MalformedMessage, NonFiniteTensor
from gossipd.wire.tensors import TensorSpec, WireTensor, to_wire


class _Sparsifier(Compressor):
    kind: str

    def __init__(self, fraction: float) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"{self.kind} fraction must be in (0, 1], found {fraction}")
        self.fraction = fraction
        self.spec = f"{self.kind}:{fraction * 100:g}%"

    def k(self, numel: int) -> int:
        return min(numel, max(1, math.ceil(self.fraction * numel))) if numel else 0

    def _select(self, flat: torch.Tensor, k: int, rng: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def compress(self, name: str, tensor: torch.Tensor, rng: torch.Generator) -> list[WireTensor]:
        flat = tensor.detach().reshape(-1).to("cpu", torch.float32)
        indices = self._select(flat, self.k(flat.numel()), rng).to(torch.int32)
        return [
            to_wire(part_name(name, "indices"), indices),
            to_wire(part_name(name, "values"), flat[indices.long()]),
        ]

    def parts(self, name: str, shape: tuple[int, ...]) -> dict[str, TensorSpec]:
        k = self.k(math.prod(shape))
        return {
            part_name(name, "indices"): TensorSpec("int32", (k,)),
            part_name(name, "values"): TensorSpec("float32", (k,)),
        }

    def decompress(
        self, name: str, shape: tuple[int, ...], parts: Mapping[str, WireTensor], device: torch.device
    ) -> torch.Tensor:
        numel = math.prod(shape)
        indices = np.frombuffer(parts[part_name(name, "indices")].data, dtype="<i4")
        if indices.size and (indices.min() < 0 or indices.max() >= numel):
            raise MalformedMessage(f"tensor {name!r}: sparse index outside 0..{numel - 1}")
        values = np.frombuffer(parts[part_name(name, "values")].data, dtype="<f4")
        if not np.isfinite(values).all():
            raise NonFiniteTensor(f"tensor {name!r} holds NaN or Inf")
        out = torch.zeros(numel, dtype=torch.float32)
        out[torch.from_numpy(indices.astype(np.int64))] = torch.from_numpy(values.astype(np.float32))
        return out.reshape(shape).to(device)


class TopK(_Sparsifier):
    """The k largest magnitudes: the deterministic best k-sparse approximation."""

    kind = "top-k"

    def _select(self, flat: torch.Tensor, k: int, rng: torch.Generator) -> torch.Tensor:
        return torch.topk(flat.abs(), k, sorted=False).indices


class RandomK(_Sparsifier):
    """k coordinates drawn uniformly without replacement."""

    kind = "random-k"

    def _select(self, flat: torch.Tensor, k: int, rng: torch.Generator) -> torch.Tensor:
        return torch.randperm(flat.numel(), generator=rng)[:k]
