"""`[gossip] algorithm = "auto"`: a ladder of exchange modes, one chosen per edge and per exchange.

An auto task mixes by PowerGossip at rank 1, 2, 4, … `max_rank` (float16 on the wire, one power iteration)
or, at the top of the ladder, by whole models (plain averaging). Which rung an edge uses is decided per
exchange by the end that starts it (`gossipd.mixing.link_budget`) and travels in every message (`mode`, see
protocols/mix-v2.md): the answering end follows, since the ladder is a function of the task alone (the
config is in the task hash, the layout in the model). A mode change restarts the edge's state, as any
disagreement about it does, so the pair's sum stays exactly conserved across switches.

Pure: the concrete algorithms do the mixing; this module names the rungs and what they send.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import torch

from gossipd.mixing.algorithm import Algorithm, ExchangeContext, Rounds
from gossipd.mixing.layout import ParamLayout, low_rank_pays, matrix_shape
from gossipd.mixing.plain import PlainConfig, PlainGossip
from gossipd.mixing.powergossip import PowerGossip, PowerGossipConfig, PowerGossipEdge
from gossipd.task.fields import LOCAL, bounds
from gossipd.wire.messages import MAX_MODE
from gossipd.wire.tensors import DTYPES

FULL = 0  # the mode of whole models; a mode r ≥ 1 is PowerGossip at rank r


@dataclass(frozen=True, kw_only=True)
class AutoConfig:
    """The bounds of the ladder and of what an edge may spend (see gossipd.mixing.link_budget).

    `time_share`: the share of the time between two of a peer's exchanges one exchange may take. All of it by
    default: an exchange runs beside training, which steps on while it is in flight, so what keeps mixing
    at training's pace is that each exchange ends before the next is due. (A quarter, the first default,
    held whole models back on loopback where they paid: 4 peers of either MNIST CNN took about twice as long
    to 98%, BENCHMARKS.md.) A lower share leaves training more of cores that mixing shares with it.
    `max_exchange_bytes` and
    `max_bytes_per_second` cap what one peer sends per exchange and per second on average; unset, the
    measured link and step times alone decide. These three are each peer's own (LOCAL: outside the task
    hash); the ladder's bounds, which both ends of an exchange must share, are in it.
    `probe`: coordinates per compressed tensor a low-rank exchange also sends, so that both ends estimate
    what share of the models' difference it captured (gossipd.mixing.probe; 0: none, and the controller
    then goes by time alone). In the task hash: both ends must send the same round layout.
    `full_dtype`: how whole models travel. Float16 by default, half the bytes of the ladder's dearest rung,
    with the pair's sum still kept exactly (gossipd.mixing.plain); "float32" sends them as they are. In the
    task hash: both ends must expect the same bytes.
    `warm_switch`: a switch between two ranks on an edge keeps the edge's warm start (its factors' leading
    columns, see `PowerGossip.carry_edge`) rather than restarting it from random factors. The controller
    moves an edge's rank whenever the measured times move: on the MNIST MLP with 8 simulated peers on
    Dirichlet(0.1) shards, 60% of exchanges restarted their edge. In the task hash: both ends must carry alike.
    `save`: skip intervals to afford dearer exchanges where the rung captures little per second
    (gossipd.mixing.link_budget). Off by default: it helped in the simulator, but daemons sharing two cores
    paid for the whole-model exchanges in training time (docs/bench-peers/experiments/captured-share). Each
    peer's own (LOCAL): only the opener's choice."""

    max_rank: int = field(default=16, metadata=bounds(min=1, max=MAX_MODE))
    full: bool = True
    full_dtype: Literal["float32", "float16"] = "float16"
    warm_switch: bool = True
    probe: int = field(default=32, metadata=bounds(min=0, max=4096))
    save: bool = field(default=False, metadata=LOCAL)
    time_share: float = field(default=1.0, metadata={**bounds(min=0.0, max=1.0, exclusive_min=True), **LOCAL})
    max_exchange_bytes: int | None = field(default=None, metadata={**bounds(min=1024), **LOCAL})
    max_bytes_per_second: float | None = field(default=None, metadata={**bounds(min=0.0, exclusive_min=True), **LOCAL})
    wire_dtype: Literal["float32", "float16"] = "float16"


def describe_mode(mode: int) -> str:
    return "full" if mode == FULL else f"rank {mode}"


class AutoGossip(Algorithm[Any]):
    """The family of rungs. The session asks `for_mode` for the concrete algorithm of an exchange; this
    object itself never runs rounds."""

    name = "auto"

    def __init__(self, config: AutoConfig) -> None:
        self.config = config
        self._ladders: tuple[ParamLayout, tuple[int, ...]] | None = None

    def ladder(self, layout: ParamLayout) -> tuple[int, ...]:
        """The modes from cheapest to dearest: ranks doubling while a higher rank still compresses some
        matrix and sends under half a whole model (past that, whole models mix better for the bytes), then
        whole models when the task allows them."""
        # Kept for the last layout asked about (a task has one): every message's mode is checked against
        # the ladder, and working it out walks every tensor at every rank (about 160 calls an exchange).
        if self._ladders is not None and self._ladders[0] is layout:
            return self._ladders[1]
        config = self.config
        ladder = _ladder(layout, config.max_rank, config.full, config.wire_dtype, config.full_dtype)
        self._ladders = (layout, ladder)
        return ladder

    def accepts(self, mode: int, layout: ParamLayout) -> bool:
        return mode in self.ladder(layout)

    def for_mode(self, mode: int) -> Algorithm[Any]:
        return _rung(mode, self.config.wire_dtype, self.config.probe, self.config.full_dtype)

    def message_bytes(self, mode: int, layout: ParamLayout) -> int:
        """About what one end sends in an exchange of `mode` (tensor data only; framing adds ~1%)."""
        return _message_bytes(mode, layout, self.config.wire_dtype, self.config.probe, self.config.full_dtype)

    def edge_type_for(self, mode: int | None) -> type[Any] | None:
        return None if mode is None else self.for_mode(mode).edge_type

    def reset_edge(self, epoch: int, layout: ParamLayout, device: torch.device) -> Any:
        raise TypeError("an auto edge is reset by its mode's algorithm (AutoGossip.for_mode)")

    def switch_edge(
        self, data: Any, old: int | None, new: int, epoch: int, layout: ParamLayout, device: torch.device
    ) -> Any | None:
        """The edge data for mode `new`, carried over from an edge in step at mode `old` (`warm_switch`);
        None where nothing carries (whole models on either side, or carrying is off): the edge then resets."""
        if not self.config.warm_switch or old in (None, FULL) or new == FULL or old == new:
            return None
        rung = self.for_mode(new)
        if not isinstance(rung, PowerGossip) or not isinstance(data, PowerGossipEdge):
            return None
        return rung.carry_edge(data, epoch, layout, device)

    def rounds(self, ctx: ExchangeContext, edge: Any) -> Rounds:
        raise TypeError("an auto exchange runs its mode's algorithm (AutoGossip.for_mode)")

    def edge_floats(self, layout: ParamLayout) -> int:
        top = max((mode for mode in self.ladder(layout) if mode != FULL), default=1)
        return self.for_mode(top).edge_floats(layout)


@cache
def _rung(mode: int, wire_dtype: Literal["float32", "float16"], probe: int, full_dtype: str) -> Algorithm[Any]:
    if mode == FULL:
        return PlainGossip(PlainConfig(), half=full_dtype == "float16")
    if not 1 <= mode <= MAX_MODE:
        raise ValueError(f"no exchange mode {mode}")
    return PowerGossip(PowerGossipConfig(rank=mode, iterations=1, wire_dtype=wire_dtype), probe=probe)


def _ladder(layout: ParamLayout, max_rank: int, full: bool, wire_dtype: str, full_dtype: str) -> tuple[int, ...]:
    whole = _message_bytes(FULL, layout, wire_dtype, 0, full_dtype)
    modes = [1]
    rank = 2
    while rank <= max_rank:
        compresses = any(low_rank_pays(shape, rank) for shape in layout.shapes.values())
        if not compresses or _message_bytes(rank, layout, wire_dtype, 0) * 2 > whole:
            break
        modes.append(rank)
        rank *= 2
    if full:
        modes.append(FULL)
    return tuple(modes)


def _full_itemsize(dtype: str, full_dtype: str) -> int:
    """Bytes a value of a whole model takes on the wire: floating tensors as `full_dtype`, others as they are."""
    own = DTYPES[dtype]
    return DTYPES[full_dtype].itemsize if own.kind == "f" and full_dtype == "float16" else own.itemsize


def _message_bytes(mode: int, layout: ParamLayout, wire_dtype: str, probe: int, full_dtype: str = "float32") -> int:
    if mode == FULL:
        return sum(
            math.prod(shape) * _full_itemsize(layout.dtypes[name], full_dtype) for name, shape in layout.shapes.items()
        )
    size = DTYPES[wire_dtype].itemsize
    total = 0
    for shape in layout.shapes.values():
        if low_rank_pays(shape, mode):
            m, n = matrix_shape(shape)
            total += (m + n) * mode * size // 2  # q alternates between n×r and m×r
            total += min(probe, m * n) * size
        else:
            total += math.prod(shape) * size
    return total
