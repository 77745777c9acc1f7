"""QSGD with b bits per element (1 sign bit, b−1 level bits) and one float32 norm per tensor.

Stochastic rounding to s = 2^(b−1) − 1 levels of ‖v‖₂ is unbiased but not a contraction at low b, so, as in
Choco-SGD, the result is divided by τ = 1 + min(d/s², √d/s), which makes E‖Q(v) − v‖² ≤ (1 − 1/τ)‖v‖².
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from gossipd.compress.base import Compressor, part_name
from gossipd.wire.errors import MalformedMessage
from gossipd.wire.tensors import TensorSpec, WireTensor, from_wire


class QSGD(Compressor):
    def __init__(self, bits: int, *, scaled: bool = True) -> None:
        if not 2 <= bits <= 8:
            raise ValueError(f"qsgd bits must be in 2..8, found {bits}")
        self.bits = bits
        self.levels = (1 << (bits - 1)) - 1
        self.scaled = scaled
        self.spec = f"qsgd:{bits}"

    def tau(self, numel: int) -> float:
        if not self.scaled or numel == 0:
            return 1.0
        s = self.levels
        return 1.0 + min(numel / s**2, math.sqrt(numel) / s)

    def compress(self, name: str, tensor: torch.Tensor, rng: torch.Generator) -> list[WireTensor]:
        flat = tensor.detach().reshape(-1).to("cpu", torch.float32)
        norm = flat.norm()
        if norm > 0:
            scaled = flat.abs() / norm * self.levels
            noise = torch.rand(flat.shape, generator=rng)
            level = torch.clamp(torch.floor(scaled + noise), 0, self.levels).to(torch.int64)
        else:
            level = torch.zeros(flat.shape, dtype=torch.int64)
        code = (level | ((flat < 0).to(torch.int64) << (self.bits - 1))).numpy()
        bit_matrix = ((code[:, None] >> np.arange(self.bits)) & 1).astype(np.uint8)
        packed = np.packbits(bit_matrix.reshape(-1), bitorder="little")
        return [
            WireTensor(part_name(name, "codes"), "uint8", (int(packed.shape[0]),), packed.tobytes()),
            WireTensor(part_name(name, "norm"), "float32", (1,), np.float32(norm.item()).tobytes()),
        ]

    def parts(self, name: str, shape: tuple[int, ...]) -> dict[str, TensorSpec]:
        return {
            part_name(name, "codes"): TensorSpec("uint8", (math.ceil(math.prod(shape) * self.bits / 8),)),
            part_name(name, "norm"): TensorSpec("float32", (1,)),
        }

    def decompress(
        self, name: str, shape: tuple[int, ...], parts: Mapping[str, WireTensor], device: torch.device
    ) -> torch.Tensor:
        numel = math.prod(shape)
        norm = from_wire(parts[part_name(name, "norm")])
        if norm.item() < 0:
            raise MalformedMessage(f"tensor {name!r}: negative QSGD norm")
        packed = np.frombuffer(parts[part_name(name, "codes")].data, dtype=np.uint8)
        bit_matrix = np.unpackbits(packed, count=numel * self.bits, bitorder="little").reshape(numel, self.bits)
        code = (bit_matrix.astype(np.int64) << np.arange(self.bits)).sum(axis=1)
        level = code & ((1 << (self.bits - 1)) - 1)
        if level.size and level.max() > self.levels:
            raise MalformedMessage(f"tensor {name!r}: QSGD level above {self.levels}")
        sign = 1.0 - 2.0 * (code >> (self.bits - 1))
        values = torch.from_numpy((sign * level).astype(np.float32))
        scale = norm / (self.levels * self.tau(numel))
        return (values * scale).reshape(shape).to(device)
