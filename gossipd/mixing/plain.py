"""Plain gossip averaging, the uncompressed baseline: x ← x + w·(x_peer − x), one full swap per exchange."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
from gossipd.wire.messages import MessageType
from gossipd.wire.tensors import from_wire


@dataclass(frozen=True, kw_only=True)
class PlainConfig:
    """Plain averaging has no settings of its own; `[gossip] weight` applies."""


class PlainGossip(Algorithm[None]):
    name = "plain"

    def __init__(self, config: PlainConfig) -> None:
        self.config = config

    def reset_edge(self, epoch: int, layout: ParamLayout, device: torch.device) -> None:
        return None

    def rounds(self, ctx: ExchangeContext, edge: None) -> Rounds:
        records = yield Outgoing(MessageType.FULL, 0, full_tensors(ctx.params), ctx.layout.specs())
        difference: Delta = {}
        for name, mine in ctx.params.items():
            # (theirs − mine) is exactly the negation of the peer's (mine − theirs): the pair sum is kept.
            difference[name] = from_wire(records[name], ctx.device) - mine
        delta: Delta = {name: d * ctx.weight for name, d in difference.items()}
        return MixOutcome(delta, norm(difference))
