"""PowerGossip (Vogels, Karimireddy, Jaggi, NeurIPS 2020): low-rank gossip by shared power iteration.

Per edge and per weight matrix M (a tensor viewed as shape[0] × rest) both ends hold the same rank-r factor
p. One iteration: orthogonalise p; send q = Mᵀp (even iterations) or Mp (odd); both ends then know
d = q_low − q_high, the difference of their models projected on p, and move by ∓ w·α·p dᵀ (transposed on odd
iterations). With warm start, d becomes the next p, so repeated exchanges run a power iteration on the
slowly changing difference. What a rank-r step misses stays in the next difference: no error feedback.
1-D tensors and matrices too thin to compress are averaged uncompressed in the first iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gossipd.mixing.algorithm import Algorithm, Delta, ExchangeContext, MixOutcome, Outgoing, Rounds
from gossipd.mixing.edge import seed_for
from gossipd.mixing.layout import ParamLayout, low_rank_pays, matrix_shape
from gossipd.task.fields import bounds
from gossipd.wire.messages import MessageType
from gossipd.wire.tensors import TensorSpec, WireTensor, from_wire, to_wire

_EPS = 1e-8


@dataclass(frozen=True, kw_only=True)
class PowerGossipConfig:
    """`rank` and `iterations` (power iterations, i.e. message rounds, per exchange) trade bytes for
    mixing speed; the reference settings are rank 1 with 1-2 iterations. `alpha` scales the low-rank step."""

    rank: int = field(default=1, metadata=bounds(min=1, max=64))
    iterations: int = field(default=1, metadata=bounds(min=1, max=16))
    warm_start: bool = True
    alpha: float = field(default=1.0, metadata=bounds(min=0.0, max=2.0, exclusive_min=True))


@dataclass
class PowerGossipEdge:
    """The shared factor per compressed matrix and how many power iterations this edge has run
    (its parity says whether the factor is m×r or n×r)."""

    epoch: int
    vectors: dict[str, torch.Tensor]
    iterations: int = 0


class PowerGossip(Algorithm[PowerGossipEdge]):
    name = "powergossip"
    edge_type = PowerGossipEdge

    def __init__(self, config: PowerGossipConfig) -> None:
        self.config = config

    def compressed(self, layout: ParamLayout) -> list[str]:
        return [name for name, shape in layout.shapes.items() if low_rank_pays(shape, self.config.rank)]

    def reset_edge(self, epoch: int, layout: ParamLayout, device: torch.device) -> PowerGossipEdge:
        vectors = {
            name: self._draw(epoch, name, 0, matrix_shape(layout.shapes[name])[0], device)
            for name in self.compressed(layout)
        }
        return PowerGossipEdge(epoch=epoch, vectors=vectors)

    def edge_floats(self, layout: ParamLayout) -> int:
        return sum(max(matrix_shape(layout.shapes[n])) * self.config.rank for n in self.compressed(layout))

    def rounds(self, ctx: ExchangeContext, edge: PowerGossipEdge) -> Rounds:
        compressed = self.compressed(ctx.layout)
        whole = [name for name in ctx.layout.shapes if name not in set(compressed)]
        delta: Delta = {}
        distance_squared = 0.0
        for iteration in range(self.config.iterations):
            even = edge.iterations % 2 == 0
            p: dict[str, torch.Tensor] = {}
            q: dict[str, torch.Tensor] = {}
            for name in compressed:
                matrix = self._current(ctx, delta, name)
                p[name] = self._orthogonalise(edge, name, ctx.device)
                q[name] = matrix.T @ p[name] if even else matrix @ p[name]
            projections = {name: to_wire(name, q[name]) for name in compressed}
            sent: list[WireTensor] = list(projections.values())
            expect = {name: TensorSpec("float32", tuple(q[name].shape)) for name in compressed}
            if iteration == 0:
                sent += [to_wire(name, ctx.params[name]) for name in whole]
                expect |= {name: TensorSpec(ctx.layout.dtypes[name], ctx.layout.shapes[name]) for name in whole}
            records = yield Outgoing(MessageType.POWER, iteration, tuple(sent), expect)

            scale = ctx.sign * ctx.weight * self.config.alpha
            for name in compressed:
                # q is float32, so its wire form decodes to exactly q: both ends hold the same two vectors.
                theirs = from_wire(records[name], ctx.device)
                d = q[name] - theirs if ctx.sign < 0 else theirs - q[name]  # q_low − q_high on both ends
                # ±w·α times the rank-r estimate of M_low − M_high; scaling the thin factor, not the matrix.
                step = (p[name] * scale) @ d.T if even else d @ (p[name] * scale).T  # (m, n)
                step = step.reshape(ctx.layout.shapes[name])
                # ‖p dᵀ‖ = ‖d‖ for orthonormal p: the projected difference's norm, at no cost.
                distance_squared += float(d.pow(2).sum())
                delta[name] = delta[name].add_(step) if name in delta else step
                edge.vectors[name] = (
                    d
                    if self.config.warm_start
                    else self._draw(edge.epoch, name, edge.iterations + 1, d.shape[0], ctx.device)
                )
            if iteration == 0:
                for name in whole:
                    difference = from_wire(records[name], ctx.device) - ctx.params[name]
                    distance_squared += float(difference.pow(2).sum())
                    delta[name] = difference * ctx.weight
            edge.iterations += 1
        return MixOutcome(delta, distance_squared**0.5)

    def _current(self, ctx: ExchangeContext, delta: Delta, name: str) -> torch.Tensor:
        """The matrix view of this end's model as updated by the exchange's earlier iterations."""
        value = ctx.params[name] + delta[name] if name in delta else ctx.params[name]
        return value.reshape(matrix_shape(ctx.layout.shapes[name])).float()

    def _draw(self, epoch: int, name: str, counter: int, rows: int, device: torch.device) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed_for(epoch, name, counter))
        return torch.randn(rows, self.config.rank, generator=generator).to(device)

    def _orthogonalise(self, edge: PowerGossipEdge, name: str, device: torch.device) -> torch.Tensor:
        """Gram-Schmidt on the factor's columns; a column that vanishes (the models already agree along
        it) is redrawn from the shared seed, so both ends redraw the same one."""
        p = edge.vectors[name]
        if p.shape[1] == 1:  # the common case, without the general loop's per-column overhead
            norm = float(torch.linalg.vector_norm(p))
            if norm > _EPS:
                return p / norm
        p = p.clone()
        for i in range(p.shape[1]):
            for attempt in range(3):
                column = p[:, i]
                for j in range(i):
                    column = column - (column @ p[:, j]) * p[:, j]
                norm = column.norm()
                if norm > _EPS:
                    p[:, i] = column / norm
                    break
                fresh = self._draw(edge.epoch, f"{name}#redraw{attempt}", edge.iterations, p.shape[0], device)
                p[:, i] = fresh[:, i % fresh.shape[1]]
        return p
