"""Choco-Gossip per edge (Koloskova, Stich, Jaggi 2019; Koloskova, Lin, Stich, Jaggi 2020).

Each end keeps a public copy of itself (x̂_self) and of its peer (x̂_peer) that both ends hold bit for bit.
An exchange sends q = Q(x − x̂_self), adds each side's q to the copies and moves x by γ·w·(x̂_peer − x̂_self).
A new or out-of-step edge starts with one full-precision swap that sets both copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gossipd.compress.registry import parse_compressor
from gossipd.mixing.algorithm import (
    Algorithm,
    Delta,
    ExchangeContext,
    MixOutcome,
    Outgoing,
    Rounds,
    full_tensors,
    norm,
)
from gossipd.mixing.layout import ParamLayout
from gossipd.task.fields import bounds
from gossipd.wire.messages import MessageType
from gossipd.wire.tensors import TensorSpec, WireTensor, from_wire


@dataclass(frozen=True, kw_only=True)
class ChocoConfig:
    """`compressor`: sign, sign:BLOCK, top-k:PCT%, random-k:PCT% or qsgd:BITS. `gamma`: the consensus step
    size (published tuned values on an 8-node ring: sign 0.45, top-1% 0.0375).

    `sign:64` (a scale per 64 values) by default, not per-tensor `sign`: each end's public copy trails its
    model by what the compressed messages have not yet carried, and per-tensor sign carries little of it (an
    exchange took 5-18% off on the MNIST CNN), so once peers come and go, and edges start afresh with full
    swaps, the trailing grows and the swarm blows up (the small CNN and the MLP in the simulator with churn,
    and a daemon that joined late; docs/bench-readings.md). With a scale per 64 values the copies keep up,
    for about 1.6× the bytes. A task that names its compressor keeps it (and its task hash)."""

    compressor: str = "sign:64"
    gamma: float = field(default=0.45, metadata=bounds(min=0.0, max=1.0, exclusive_min=True))


@dataclass
class ChocoEdge:
    x_hat_self: dict[str, torch.Tensor] | None = None
    x_hat_peer: dict[str, torch.Tensor] | None = None


class ChocoGossip(Algorithm[ChocoEdge]):
    name = "choco"
    edge_type = ChocoEdge

    def __init__(self, config: ChocoConfig) -> None:
        self.config = config
        self.compressor = parse_compressor(config.compressor)

    def reset_edge(self, epoch: int, layout: ParamLayout, device: torch.device) -> ChocoEdge:
        return ChocoEdge()

    def edge_floats(self, layout: ParamLayout) -> int:
        return 2 * layout.numel

    def rounds(self, ctx: ExchangeContext, edge: ChocoEdge) -> Rounds:
        if edge.x_hat_self is None or edge.x_hat_peer is None:
            records = yield Outgoing(MessageType.FULL, 0, full_tensors(ctx.params), ctx.layout.specs())
            edge.x_hat_self = {name: t.detach().clone() for name, t in ctx.params.items()}
            edge.x_hat_peer = {name: from_wire(records[name], ctx.device) for name in ctx.params}
        else:
            sent: list[WireTensor] = []
            expect: dict[str, TensorSpec] = {}
            for name, x in ctx.params.items():
                sent += self.compressor.compress(name, x - edge.x_hat_self[name], ctx.rng)
                expect |= self.compressor.parts(name, ctx.layout.shapes[name])
            mine = {t.name: t for t in sent}
            records = yield Outgoing(MessageType.CHOCO, 0, tuple(sent), expect)
            for name, shape in ctx.layout.shapes.items():
                # Both ends add the decoded parts, never the pre-compression values, so copies stay equal.
                edge.x_hat_self[name] += self.compressor.decompress(name, shape, mine, ctx.device)
                edge.x_hat_peer[name] += self.compressor.decompress(name, shape, records, ctx.device)
        difference: Delta = {name: edge.x_hat_peer[name] - edge.x_hat_self[name] for name in ctx.layout.shapes}
        step = self.config.gamma * ctx.weight
        return MixOutcome({name: d * step for name, d in difference.items()}, norm(difference))
