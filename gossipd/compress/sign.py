"""Sign compression with the mean magnitude: Q(v) = (‖v‖₁ / d) · sign(v), one bit per element.

`sign` uses one scale per tensor, as Choco-SGD's sign+norm; `sign:B` one scale per block of B elements.
Per-tensor scales are enough while SGD noise dominates, but in pure consensus the residual x − x̂ grows
spiky and a single scale stalls (measured: 2 peers plateau near 1% of the starting distance), while
blocks of 64-128 converge to float precision for 0.25-0.5 extra bits per element.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from gossipd.compress.base import Compressor, part_name
from gossipd.wire.tensors import TensorSpec, WireTensor, from_wire


class SignCompressor(Compressor):
    """ceil(d/8) bytes of packed signs plus ceil(d/B) float32 scales (B = d without a block size).

    Zeros are sent as +1: ⟨Q(v), v⟩ is still Σ_blocks ‖v_b‖₁²/|b|, so the error
    ‖Q(v) − v‖² = ‖v‖² − Σ_b ‖v_b‖₁²/|b| is exactly the published contraction.
    """

    def __init__(self, block: int | None = None) -> None:
        if block is not None and not 1 <= block <= 1 << 24:
            raise ValueError(f"sign block size must be in 1..{1 << 24}, found {block}")
        self.block = block
        self.spec = "sign" if block is None else f"sign:{block}"

    def _block(self, numel: int) -> int:
        return max(1, numel) if self.block is None else self.block

    def compress(self, name: str, tensor: torch.Tensor, rng: torch.Generator) -> list[WireTensor]:
        flat = tensor.detach().reshape(-1).to("cpu", torch.float32)
        numel = flat.numel()
        block = self._block(numel)
        blocks = math.ceil(numel / block)
        padded = torch.zeros(blocks * block)
        padded[:numel] = flat.abs()
        sizes = torch.full((blocks,), float(block))
        if blocks:
            sizes[-1] = numel - (blocks - 1) * block
        scales = padded.reshape(blocks, block).sum(dim=1) / sizes
        bits = np.packbits((flat >= 0).numpy(), bitorder="little")
        return [
            WireTensor(part_name(name, "signs"), "uint8", (int(bits.shape[0]),), bits.tobytes()),
            WireTensor(part_name(name, "scales"), "float32", (blocks,), scales.numpy().astype("<f4").tobytes()),
        ]

    def parts(self, name: str, shape: tuple[int, ...]) -> dict[str, TensorSpec]:
        numel = math.prod(shape)
        return {
            part_name(name, "signs"): TensorSpec("uint8", (math.ceil(numel / 8),)),
            part_name(name, "scales"): TensorSpec("float32", (math.ceil(numel / self._block(numel)),)),
        }

    def decompress(
        self, name: str, shape: tuple[int, ...], parts: Mapping[str, WireTensor], device: torch.device
    ) -> torch.Tensor:
        numel = math.prod(shape)
        packed = np.frombuffer(parts[part_name(name, "signs")].data, dtype=np.uint8)
        signs = np.unpackbits(packed, count=numel, bitorder="little").astype(np.float32) * 2.0 - 1.0
        scales = from_wire(parts[part_name(name, "scales")])
        per_element = scales.repeat_interleave(self._block(numel))[:numel]
        return (torch.from_numpy(signs) * per_element).reshape(shape).to(device)
