"""Local differential privacy for a peer's examples: DP-SGD (Abadi et al. 2016) with a Rényi-DP accountant.

Each step samples examples independently with probability q (Poisson sampling, which the accountant's
analysis assumes), computes every example's gradient, clips each to norm C, adds Gaussian noise of standard
deviation σ·C to their sum and divides by the expected batch size q·N. Everything a peer sends afterwards —
compressed or not, to any neighbour — is post-processing of the noised model, so the (ε, δ) the accountant
reports bounds what the whole swarm can learn about any one of this peer's examples.

Per-example gradients come from `torch.func` (vmap over grad); the accountant is Opacus's RDP analysis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from gossipd.task.fields import bounds


# Opacus (through scipy and sympy) costs ~2 s of import; only tasks with [privacy] pay it, when first used.
def compute_rdp(*, q: float, noise_multiplier: float, steps: int, orders: list[float]) -> Any:
    from opacus.accountants.analysis.rdp import compute_rdp as opacus_compute_rdp

    return opacus_compute_rdp(q=q, noise_multiplier=noise_multiplier, steps=steps, orders=orders)


def get_privacy_spent(*, orders: list[float], rdp: Any, delta: float) -> tuple[float, float]:
    from opacus.accountants.analysis.rdp import get_privacy_spent as opacus_privacy_spent

    eps, order = opacus_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps), float(order)


# The Rényi orders the accountant optimises over (Opacus's and TF Privacy's default set).
ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


@dataclass(frozen=True, kw_only=True)
class PrivacySection:
    """`[privacy]`: DP-SGD on this peer's examples. `noise_multiplier` is σ, `max_grad_norm` the per-example
    clipping norm C, `delta` the δ that ε is reported at; with `target_epsilon`, training stops once ε would
    exceed it (mixing goes on)."""

    noise_multiplier: float = field(metadata=bounds(min=0.0, exclusive_min=True))
    max_grad_norm: float = field(default=1.0, metadata=bounds(min=0.0, exclusive_min=True))
    delta: float = field(default=1e-5, metadata=bounds(min=0.0, max=0.1, exclusive_min=True))
    target_epsilon: float | None = field(default=None, metadata=bounds(min=0.0, exclusive_min=True))


class PrivacyError(ValueError):
    """The model or data cannot be trained with DP-SGD as configured."""


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε after `steps` Poisson-subsampled Gaussian steps, at δ (RDP, converted as in Opacus)."""
    if steps == 0:
        return 0.0
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=list(ORDERS))
    eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def epsilon_classic(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The same RDP curve with the classic conversion ε = min_α RDP(α) + log(1/δ)/(α − 1) (Mironov 2017),
    which TF Privacy's published figures use; looser than `epsilon_spent`."""
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=list(ORDERS))
    return float(min(r + math.log(1 / delta) / (a - 1) for a, r in zip(ORDERS, rdp, strict=True)))


def check_model(model: nn.Module) -> None:
    """Per-example gradients need every example to be processed on its own: batch norm mixes them."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise PrivacyError(
                f"[privacy] needs a model without batch normalisation; {name or 'the model'} is "
                f"{type(module).__name__} (use a model with layer norm or none, e.g. cnn, mlp, char-transformer)"
            )


@dataclass
class DPState:
    """What the accountant needs, kept in checkpoints: (σ, q, steps) runs."""

    history: list[tuple[float, float, int]] = field(default_factory=list)

    def record(self, noise_multiplier: float, sample_rate: float) -> None:
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, steps = self.history[-1]
            self.history[-1] = (sigma, q, steps + 1)
        else:
            self.history.append((noise_multiplier, sample_rate, 1))

    def epsilon(self, delta: float) -> float:
        if not self.history:
            return 0.0
        total = [0.0] * len(ORDERS)
        for sigma, q, steps in self.history:
            rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(ORDERS))
            total = [t + float(r) for t, r in zip(total, rdp, strict=True)]
        eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=total, delta=delta)
        return float(eps)

    @property
    def steps(self) -> int:
        return sum(steps for _, _, steps in self.history)

    def to_state(self) -> list[list[float]]:
        return [[sigma, q, float(steps)] for sigma, q, steps in self.history]

    @classmethod
    def from_state(cls, state: Any) -> DPState:
        return cls([(float(s), float(q), int(n)) for s, q, n in state])


def private_gradients(
    model: nn.Module,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    section: PrivacySection,
    expected_batch: float,
    generator: torch.Generator | None = None,
    frozen: frozenset[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Clipped, noised, averaged gradients for a Poisson-sampled batch (which may be empty), for every
    trainable parameter but the `frozen` ones (held still: the model's own values, out of the clipping norm)."""
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad and name not in frozen}
    buffers = dict(model.named_buffers())

    def one_example(p: Mapping[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (dict(p), buffers), (xi.unsqueeze(0),))
        return loss_of(out, yi.unsqueeze(0))

    clip = section.max_grad_norm
    summed = {name: torch.zeros_like(p) for name, p in params.items()}
    if x.shape[0] > 0:
        per_example = vmap(grad(one_example), in_dims=(None, 0, 0), randomness="different")(params, x, y)
        squares = sum(g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in per_example.values())
        scale = (clip / (torch.sqrt(squares) + 1e-6)).clamp(max=1.0)  # (B,)
        for name, g in per_example.items():
            summed[name] = torch.einsum("b,b...->...", scale, g)
    noised = {}
    for name, total in summed.items():
        noise = torch.normal(0.0, section.noise_multiplier * clip, total.shape, generator=generator)
        noised[name] = (total + noise.to(total.device)) / expected_batch
    return noised


def steps_within_budget(
    state: DPState, noise_multiplier: float, sample_rate: float, target: float, delta: float
) -> int:
    """How many more (σ, q) steps keep ε at or below `target`, by bisection on the accountant."""

    def fits(extra: int) -> bool:
        trial = DPState(list(state.history))
        if extra:
            trial.history.append((noise_multiplier, sample_rate, extra))
        return trial.epsilon(delta) <= target

    if not fits(0):
        return 0
    high = 1
    while fits(high):
        high *= 2
        if high > 1 << 40:
            return high
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low
