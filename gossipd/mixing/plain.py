"""Plain gossip averaging, the uncompressed baseline: x ← x + w·(x_peer − x), one full swap per exchange.

Sent at half precision (an auto task's whole models, `AutoConfig.full_dtype`), each end computes with its own
values *as sent*: x ← x + w·(x̃_peer − x̃), where x̃ is x rounded to float16 (clamped to its range). Both ends
then hold the same two rounded vectors, so the pair's sum is still exactly unchanged; each copy keeps the
part of its values below float16's precision (about 2⁻¹¹ of each), which no exchange moves, so copies agree
to that precision, no further. hivemind averages in float16 by default too.
"""

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
from gossipd.wire.tensors import TensorSpec, as_float16, from_wire, to_wire


@dataclass(frozen=True, kw_only=True)
class PlainConfig:
    """Plain averaging has no settings of its own; `[gossip] weight` applies."""


class PlainGossip(Algorithm[None]):
    name = "plain"

    def __init__(self, config: PlainConfig, *, half: bool = False) -> None:
        """`half`: floating tensors travel as float16 (see the module's docstring)."""
        self.config = config
        self.half = half

    def reset_edge(self, epoch: int, layout: ParamLayout, device: torch.device) -> None:
        return None

    def rounds(self, ctx: ExchangeContext, edge: None) -> Rounds:
        if self.half:
            sent = {name: as_float16(t) for name, t in ctx.params.items()}
            mine = {name: sent[name].to(t.dtype) for name, t in ctx.params.items()}  # as the peer will see them
            outgoing = tuple(to_wire(name, t) for name, t in sent.items())
            expect = {r.name: TensorSpec(r.dtype, ctx.layout.shapes[r.name]) for r in outgoing}
        else:
            mine, outgoing, expect = dict(ctx.params), full_tensors(ctx.params), ctx.layout.specs()
        records = yield Outgoing(MessageType.FULL, 0, outgoing, expect)
        difference: Delta = {}
        for name, own in mine.items():
            # (theirs − mine) is exactly the negation of the peer's (mine − theirs): the pair sum is kept.
            difference[name] = from_wire(records[name], ctx.device).to(own.dtype) - own
        distance = norm(difference)
        for d in difference.values():
            d.mul_(ctx.weight)  # the difference becomes the delta in place: a whole model's copy saved
        return MixOutcome(difference, distance)
