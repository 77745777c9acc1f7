"""Mixing the optimisers' momentum with the parameters (`[gossip] momentum_every`); pure.

On label-skewed shards a copy's momentum remembers its own labels' gradients: after an exchange has pulled the
copy towards its neighbour, the momentum goes on pushing it back for about 1/(1 − β) steps. Mixing the momentum
too, m ← m + w·(m_peer − m) beside x ← x + w·(x_peer − x), points it along the neighbourhood's gradient
instead (docs/bench-quality.md, *Mixing momentum*). It rides in whole-model exchanges only, every
`momentum_every`-th round of an edge: both ends know the edge's round, so both send it or neither does.
Off by default: those exchanges send twice the bytes, which on loopback cost IID races more time than the
momentum won.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

Delta = dict[str, torch.Tensor]


def mixes_momentum(every: int, edge_round: int) -> bool:
    """Whether the exchange at `edge_round` of an edge also mixes momentum (`every` 0: never)."""
    return every > 0 and edge_round % every == 0


def clip_momentum(delta: Delta, own: Mapping[str, torch.Tensor]) -> Delta:
    """`delta` scaled back where it would leave this end's momentum longer than it was (the mixed tensors
    together): averaging honest momenta turns them and seldom lengthens them, while a neighbour that sent a
    huge momentum could otherwise grow this one exchange after exchange. The result turns the momentum as
    far as the neighbour asked, at the length it had."""
    if not delta:
        return delta
    before = math.sqrt(sum(float(own[name].pow(2).sum()) for name in delta))
    mixed = {name: own[name] + change for name, change in delta.items()}
    after = math.sqrt(sum(float(value.pow(2).sum()) for value in mixed.values()))
    if after <= before:
        return delta
    scale = before / after
    return {name: value.mul_(scale).sub_(own[name]) for name, value in mixed.items()}
