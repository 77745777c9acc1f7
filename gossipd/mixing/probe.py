"""How far apart two models are, from a few coordinates both ends sample alike.

A compressed exchange knows what it captured of the difference of the two models (PowerGossip: the
projected difference, `MixOutcome.distance`), not what it left: the rest of ‖x_a − x_b‖ would take the
whole models to compute. Both ends therefore also send the values of their model at a few coordinates of
each compressed tensor, drawn alike from a seed of the tensor's name, and each end estimates the tensor's
squared difference as numel / k times the sum over the k sampled coordinates (unbiased for any sample
without replacement). Per tensor, so that a difference concentrated in one layer is still sampled.

What this buys (measured in the simulator, docs/bench-peers/experiments/captured-share): rank-1 PowerGossip
captures about 2.5% of a pair's squared difference per exchange on the small MNIST CNN and about 1% on
the 1.2M-parameter CNN, whose copies stay about 75% apart in norm; whole models capture all of it. The
link controller weighs modes by that share per second (gossipd.mixing.link_budget).

Pure: tensors in, tensors and floats out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from gossipd.mixing.edge import seed_for
from gossipd.mixing.layout import ParamLayout, Params
from gossipd.wire.tensors import as_float16

PROBE = "#probe"  # the probe's name among a round's tensors (never a parameter's: they have no '#')


@dataclass(frozen=True)
class Probe:
    """The sampled coordinates of each probed tensor, in layout order."""

    names: tuple[str, ...]
    indices: tuple[torch.Tensor, ...]  # flat indices into each tensor, int64, sorted
    scales: tuple[float, ...]  # numel / k per tensor

    @classmethod
    def of(cls, layout: ParamLayout, names: Iterable[str], per_tensor: int) -> Probe:
        """`per_tensor` coordinates of each of `names` (all of a smaller tensor), drawn as
        `torch.randperm(numel)[:k]` from a CPU generator seeded with seed_for(0, "<name>#probe", 0)."""
        if per_tensor < 1:
            raise ValueError(f"a probe samples at least one coordinate per tensor, not {per_tensor}")
        wanted = set(names)
        chosen = tuple(n for n in layout.shapes if n in wanted)
        indices = []
        scales = []
        for name in chosen:
            numel = math.prod(layout.shapes[name])
            k = min(per_tensor, numel)
            generator = torch.Generator().manual_seed(seed_for(0, f"{name}#probe", 0))
            picked = torch.randperm(numel, generator=generator)[:k].sort().values
            indices.append(picked)
            scales.append(numel / k)
        return cls(chosen, tuple(indices), tuple(scales))

    @property
    def size(self) -> int:
        return sum(int(i.numel()) for i in self.indices)

    def values(self, params: Params, *, half: bool) -> torch.Tensor:
        """This model's values at the sampled coordinates, as sent (float16, clamped, or float32)."""
        if not self.names:
            return torch.zeros(0, dtype=torch.float16 if half else torch.float32)
        parts = [
            params[name].detach().reshape(-1)[index.to(params[name].device)].float().cpu()
            for name, index in zip(self.names, self.indices, strict=True)
        ]
        joined = torch.cat(parts)
        return as_float16(joined) if half else joined

    def distance_squared(self, mine: torch.Tensor, theirs: torch.Tensor) -> float:
        """The estimate of Σ over the probed tensors of ‖x_theirs − x_mine‖², from both ends' `values`."""
        if mine.shape != theirs.shape or mine.numel() != self.size:
            raise ValueError(f"probe values of {mine.numel()} and {theirs.numel()} coordinates, expected {self.size}")
        squared = (theirs.float() - mine.float()).pow(2)
        total = 0.0
        start = 0
        for index, scale in zip(self.indices, self.scales, strict=True):
            k = int(index.numel())
            total += scale * float(squared[start : start + k].sum())
            start += k
        return total


def captured_share(captured_squared: float, total_squared: float) -> float | None:
    """The share of the squared difference an exchange captured, in [0, 1]; None when the models agree (or
    the estimate is zero) and no share is defined. The estimate is noisy: a sampled total below what was
    captured for certain means the exchange captured (nearly) all of it."""
    if total_squared <= 0 or not math.isfinite(total_squared) or not math.isfinite(captured_squared):
        return None
    return min(1.0, max(0.0, captured_squared / total_squared))
