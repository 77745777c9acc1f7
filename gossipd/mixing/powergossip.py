"""PowerGossip (Vogels, Karimireddy, Jaggi, NeurIPS 2020): low-rank gossip by shared power iteration.

Per edge and per weight matrix M (a tensor viewed as shape[0] × rest) both ends hold the same rank-r factor
p. One iteration: orthogonalise p; send q = Mᵀp (even iterations) or Mp (odd); both ends then know
d = q_low − q_high, the difference of their models projected on p, and move by ∓ w·α·p dᵀ (transposed on odd
iterations). With warm start, d becomes the next p, so repeated exchanges run a power iteration on the
slowly changing difference. What a rank-r step misses stays in the next difference: no error feedback.
1-D tensors and matrices too thin to compress are averaged uncompressed in the first iteration.

With `wire_dtype = "float16"` everything is sent at half precision and each end computes with its *own value
as sent*, not the one it had: both ends then hold the same two rounded vectors, so the pair's sum is still
unchanged and only the step's direction carries rounding noise (hivemind averages in float16 by default too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from gossipd.mixing.algorithm import Algorithm, Delta, ExchangeContext, MixOutcome, Outgoing, Rounds
from gossipd.mixing.edge import seed_for
from gossipd.mixing.layout import ParamLayout, low_rank_pays, matrix_shape
from gossipd.mixing.probe import PROBE, Probe
from gossipd.task.fields import bounds
from gossipd.wire.messages import MessageType
from gossipd.wire.tensors import TensorSpec, WireTensor, as_float16, from_wire, to_wire

_EPS = 1e-8


@dataclass(frozen=True, kw_only=True)
class PowerGossipConfig:
    """`rank` and `iterations` (power iterations, i.e. message rounds, per exchange) trade bytes for
    mixing speed; the reference settings are rank 1 with 1-2 iterations. Two by default: at the same rank
    they mixed better on every model measured (an MLP, two CNNs, a transformer; IID and skewed splits) and
    reached 98% sooner between daemons, for 1.6-2× the bytes of one (docs/bench-quality.md, "Two power
    iterations"). `alpha` scales the low-rank step. `wire_dtype = "float16"` sends every tensor at half the
    bytes."""

    rank: int = field(default=1, metadata=bounds(min=1, max=64))
    iterations: int = field(default=2, metadata=bounds(min=1, max=16))
    warm_start: bool = True
    alpha: float = field(default=1.0, metadata=bounds(min=0.0, max=2.0, exclusive_min=True))
    wire_dtype: Literal["float32", "float16"] = "float32"


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

    def __init__(self, config: PowerGossipConfig, *, probe: int = 0) -> None:
        """`probe`: coordinates per compressed tensor sent in the first round to estimate the whole difference
        (gossipd.mixing.probe; an auto task's rungs send them, a fixed PowerGossip task does not)."""
        self.config = config
        self.probe = probe
        self._probes: dict[tuple[tuple[str, tuple[int, ...]], ...], Probe] = {}

    def _probe_for(self, layout: ParamLayout, compressed: list[str]) -> Probe:
        key = tuple(layout.shapes.items())
        probe = self._probes.get(key)
        if probe is None:
            probe = self._probes[key] = Probe.of(layout, compressed, self.probe)
        return probe

    def compressed(self, layout: ParamLayout) -> list[str]:
        return [name for name, shape in layout.shapes.items() if low_rank_pays(shape, self.config.rank)]

    def reset_edge(self, epoch: int, layout: ParamLayout, device: torch.device) -> PowerGossipEdge:
        vectors = {
            name: self._draw(epoch, name, 0, matrix_shape(layout.shapes[name])[0], device)
            for name in self.compressed(layout)
        }
        return PowerGossipEdge(epoch=epoch, vectors=vectors)

    def carry_edge(
        self, edge: PowerGossipEdge, epoch: int, layout: ParamLayout, device: torch.device
    ) -> PowerGossipEdge:
        """An edge at this rank, new `epoch`, that keeps the warm start of `edge` (another rank's): each
        factor's leading columns, which the power iteration has turned towards the difference's top
        directions, and where this rank has more columns, columns drawn from the new epoch's seed; a matrix
        the other rank did not compress starts afresh. Both ends of a switch in step hold the same `edge`, so
        they carry alike. Without it a switch between ranks would restart the power iteration from random
        factors, and an edge whose rank moves often would never warm up."""
        even = edge.iterations % 2 == 0
        vectors: dict[str, torch.Tensor] = {}
        for name in self.compressed(layout):
            rows, columns = matrix_shape(layout.shapes[name])
            fresh = self._draw(epoch, name, 0, rows if even else columns, device)
            old = edge.vectors.get(name)
            if old is not None and old.shape[0] == fresh.shape[0]:
                keep = min(old.shape[1], fresh.shape[1])
                fresh[:, :keep] = old[:, :keep].to(device)
            vectors[name] = fresh
        return PowerGossipEdge(epoch=epoch, vectors=vectors, iterations=edge.iterations)

    def edge_floats(self, layout: ParamLayout) -> int:
        return sum(max(matrix_shape(layout.shapes[n])) * self.config.rank for n in self.compressed(layout))

    def rounds(self, ctx: ExchangeContext, edge: PowerGossipEdge) -> Rounds:
        compressed = self.compressed(ctx.layout)
        whole = [name for name in ctx.layout.shapes if name not in set(compressed)]
        delta: Delta = {}
        distance_squared = 0.0
        whole_squared = 0.0  # the uncompressed tensors' part: exact
        estimated: float | None = None  # the compressed tensors' whole difference, from the probe
        half = self.config.wire_dtype == "float16"
        probe = self._probe_for(ctx.layout, compressed) if self.probe else None
        for iteration in range(self.config.iterations):
            even = edge.iterations % 2 == 0
            p: dict[str, torch.Tensor] = {}
            q: dict[str, torch.Tensor] = {}
            sent: list[WireTensor] = []
            expect: dict[str, TensorSpec] = {}
            for name in compressed:
                matrix = self._current(ctx, delta, name)
                p[name] = self._orthogonalise(edge, name, ctx.device)
                wire = _as_sent(matrix.T @ p[name] if even else matrix @ p[name], half)
                sent.append(to_wire(name, wire))
                expect[name] = TensorSpec(sent[-1].dtype, tuple(wire.shape))
                q[name] = wire.float()  # exactly what the peer decodes: both ends hold the same two vectors
            mine: dict[str, torch.Tensor] = {}
            if iteration == 0:
                for name in whole:
                    wire = _as_sent(ctx.params[name], half)
                    sent.append(to_wire(name, wire))
                    expect[name] = TensorSpec(sent[-1].dtype, ctx.layout.shapes[name])
                    mine[name] = wire.to(ctx.params[name].dtype)
                if probe is not None:
                    sample = probe.values(ctx.params, half=half)
                    sent.append(to_wire(PROBE, sample))
                    expect[PROBE] = TensorSpec(sent[-1].dtype, (probe.size,))
            records = yield Outgoing(MessageType.POWER, iteration, tuple(sent), expect)
            if iteration == 0 and probe is not None:
                estimated = probe.distance_squared(sample, from_wire(records[PROBE]))

            scale = ctx.sign * ctx.weight * self.config.alpha
            for name in compressed:
                theirs = from_wire(records[name], ctx.device).float()
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
                    # Against this end's value as sent: with float16 the pair's sum is still unchanged.
                    difference = from_wire(records[name], ctx.device).to(mine[name].dtype) - mine[name]
                    whole_squared += float(difference.pow(2).sum())
                    delta[name] = difference * ctx.weight
            edge.iterations += 1
        total = None if estimated is None else (estimated + whole_squared) ** 0.5
        return MixOutcome(delta, (distance_squared + whole_squared) ** 0.5, total)

    def _current(self, ctx: ExchangeContext, delta: Delta, name: str) -> torch.Tensor:
        """The matrix view of this end's model as updated by the exchange's earlier iterations."""
        value = ctx.params[name] + delta[name] if name in delta else ctx.params[name]
        return value.reshape(matrix_shape(ctx.layout.shapes[name])).float()

    def _draw(self, epoch: int, name: str, counter: int, rows: int, device: torch.device) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed_for(epoch, name, counter))
        return torch.randn(rows, self.config.rank, generator=generator).to(device)

    def _orthogonalise(self, edge: PowerGossipEdge, name: str, device: torch.device) -> torch.Tensor:
        """Gram-Schmidt on the factor's columns; a column that vanishes (the models already agree along
        it) is redrawn from the shared seed, so both ends redraw the same one.

        Gram-Schmidt's result is the Q of the QR factorisation whose R has a positive diagonal (R's diagonal
        holds the norms Gram-Schmidt divides by), so one LAPACK call with the signs set gives it: the loop
        below costs r(r-1)/2 small torch calls a tensor, 2.9 ms an exchange-end at rank 16 on the small MNIST
        CNN against 0.13 ms (docs/bench-readings.md), CPU that `auto` counts against the higher ranks. The
        loop stays for a vanishing column."""
        p = edge.vectors[name]
        if p.shape[1] == 1:  # the common case, without the general loop's per-column overhead
            norm = float(torch.linalg.vector_norm(p))
            if norm > _EPS:
                return p / norm
        else:
            q, r = torch.linalg.qr(p)
            diagonal = r.diagonal()
            if bool((diagonal.abs() > _EPS).all()):
                orthonormal: torch.Tensor = q * diagonal.sign()
                return orthonormal
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


def _as_sent(tensor: torch.Tensor, half: bool) -> torch.Tensor:
    """The tensor as it goes on the wire: float16 (clamped) or unchanged."""
    return as_float16(tensor) if half else tensor
