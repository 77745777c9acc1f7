"""Plain gossip averaging, the uncompressed baseline: x ← x + w·(x_peer − x), one full swap per exchange.

Sent at half precision (an auto task's whole models, `AutoConfig.full_dtype`), each end computes with its own
values *as sent*: x ← x + w·(x̃_peer − x̃), where x̃ is x rounded to float16 (clamped to its range). Both ends
then hold the same two rounded vectors, so the pair's sum is still exactly unchanged; each copy keeps the
part of its values below float16's precision (about 2⁻¹¹ of each), which no exchange moves, so copies agree
to that precision, no further. hivemind averages in float16 by default too.

Where the task mixes momentum (`[gossip] momentum_every`), the message also carries the optimiser's momentum
of every tensor, after the parameters, and each end moves its momentum the same way: m ← m + w·(m_peer − m).
On label-skewed shards each copy's momentum keeps pushing it towards its own labels after a mix has pulled
it back; mixed, it points along the neighbourhood's gradient instead (docs/bench-quality.md, *Mixing momentum*).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gossipd.mixing.algorithm import (
    MOMENTUM,
    Algorithm,
    Delta,
    ExchangeContext,
    MixOutcome,
    Outgoing,
    Records,
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
        momentum: dict[str, torch.Tensor] = {}
        if ctx.momentum is not None:
            # After the parameters, the optimiser's momentum of each, sent and mixed as they are (the names
            # only key this end's records: the wire carries none).
            for name, value in ctx.momentum.items():
                wire = as_float16(value) if self.half else value
                record = to_wire(name + MOMENTUM, wire)
                outgoing += (record,)
                expect[record.name] = TensorSpec(record.dtype, ctx.layout.shapes[name])
                momentum[name] = wire.to(value.dtype)
        records = yield Outgoing(MessageType.FULL, 0, outgoing, expect)
        difference: Delta = {}
        for name, own in mine.items():
            # (theirs − mine) is exactly the negation of the peer's (mine − theirs): the pair sum is kept.
            difference[name] = from_wire(records[name], ctx.device).to(own.dtype).sub_(own)
        distance = norm(difference)
        for d in difference.values():
            d.mul_(ctx.weight)  # the difference becomes the delta in place: a whole model's copy saved
        if ctx.momentum is None:
            return MixOutcome(difference, distance)
        return MixOutcome(difference, distance, momentum=_momentum_delta(momentum, records, ctx))


def _momentum_delta(own: dict[str, torch.Tensor], records: Records, ctx: ExchangeContext) -> Delta:
    """w·(m_peer − m_own) per tensor, skipping any that either end sent as zeros: that end has no momentum
    for it (no step taken yet, or an optimiser without momentum), and mixing its zeros in would only damp the
    other's. Both ends see the same two tensors, so both skip alike."""
    delta: Delta = {}
    for name, mine in own.items():
        theirs = from_wire(records[name + MOMENTUM], ctx.device).to(mine.dtype)
        if bool(mine.any()) and bool(theirs.any()):
            delta[name] = theirs.sub_(mine).mul_(ctx.weight)
    return delta
