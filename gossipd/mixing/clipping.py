"""Self-centred clipping of each exchange's reconstructed difference (ClippedGossip: He, Karimireddy and
Jaggi, arXiv 2202.01545): a peer moves towards a neighbour by at most w·τ, so a Byzantine neighbour that
sends a sign-flipped, scaled or noisy model can only nudge it. τ adapts to the distances this peer has seen
recently — a multiple of their median, which a minority of attackers cannot drag up — or is fixed.

Distances are estimated differently by each exchange mode of an auto task (a rank-1 projection sees less of
the difference than a rank-8 one or whole models), so each mode (`kind`) keeps its own recent distances. A
mode an edge has just climbed to borrows, until it has enough of its own, the largest radius among the
modes that have: never 0 (a switch must not stop mixing), and no looser than the coarsest estimate's.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from gossipd.task.fields import bounds


@dataclass(frozen=True, kw_only=True)
class RobustSection:
    """`[robust]`: clipping is on by default. `radius` fixes τ; otherwise τ = `multiplier` × the median of
    the last `window` distances, once `min_samples` have been seen (before that a peer only observes: its
    first exchanges measure distances but do not move its model)."""

    clip: bool = True
    radius: float | None = field(default=None, metadata=bounds(min=0.0, exclusive_min=True))
    multiplier: float = field(default=2.0, metadata=bounds(min=1.0))
    window: int = field(default=64, metadata=bounds(min=4, max=10000))
    min_samples: int = field(default=8, metadata=bounds(min=1))
    suspect_after: int = field(default=3, metadata=bounds(min=1))
    suspect_ratio: float = field(default=4.0, metadata=bounds(min=1.0))
    suspect_backoff: float = field(default=60.0, metadata=bounds(min=0.0))
    suspect_grace: float = field(default=60.0, metadata=bounds(min=0.0))


class Clipper:
    """A peer's clipping radius, fed with the distance estimate of every exchange it makes. A neighbour
    found `suspect_ratio` times beyond the radius `suspect_after` exchanges in a row is a suspect: honest
    neighbours rarely stray that far even while distances grow or compressed estimates fluctuate, while a
    sign-flipping or scaling attacker is far out every time and, clipped or not, keeps pulling the same wrong
    way. The caller leaves suspects alone for `suspect_backoff`, but judges none within `suspect_grace` of
    its first exchange with it: a newcomer whose data the swarm has not seen trains away from the swarm's
    model at first, as far as an attacker sits (in a daemon test a joiner was left alone by all three
    neighbours a second after it joined, its own data never mixed in); clipping bounds what either can do."""

    def __init__(self, section: RobustSection) -> None:
        self.section = section
        self._recent: dict[int | None, deque[float]] = {}
        self.clipped = 0
        self._streak: dict[bytes, int] = {}

    def recent(self, kind: int | None = None) -> deque[float]:
        """The latest distances of exchanges of one mode (None: a task with a single mode)."""
        return self._recent.setdefault(kind, deque(maxlen=self.section.window))

    def radius(self, kind: int | None = None) -> float:
        if not self.section.clip:
            return math.inf
        if self.section.radius is not None:
            return self.section.radius
        if self._trusted(kind):
            return self.section.multiplier * statistics.median(self.recent(kind))
        others = [self.section.multiplier * statistics.median(self.recent(k)) for k in self._recent if self._trusted(k)]
        # No trusted scale yet: move not at all rather than let an early attacker in unclipped.
        return max(others, default=0.0)

    def _trusted(self, kind: int | None) -> bool:
        return len(self.recent(kind)) >= self.section.min_samples

    def factor(self, distance: float, peer: bytes = b"", pull: float = 1.0, kind: int | None = None) -> float:
        """The scale for this exchange's delta (1 when within the radius), and remember the distance.

        `pull` is how much more than w this end moves (weighted mixing, `weigh_by`: up to 2 towards a peer
        that declares far more examples); the move is still at most w·τ, so a peer that declares a huge
        dataset pulls no further than any other. `kind`: the exchange's mode in an auto task."""
        tau = self.radius(kind)
        borrowed = self.section.radius is None and not self._trusted(kind)
        if math.isfinite(distance):
            self.recent(kind).append(distance)
        reach = distance * pull
        if math.isfinite(distance) and (reach <= tau or reach == 0):
            self._streak.pop(peer, None)
            return 1.0
        # A warm-up exchange (τ = 0) says nothing about the neighbour: only count real clips against it.
        # Nor does a radius borrowed from another mode, whose distances are not this one's.
        if not math.isfinite(distance) or (tau > 0 and not borrowed and distance > self.section.suspect_ratio * tau):
            self._streak[peer] = self._streak.get(peer, 0) + 1
        else:
            self._streak.pop(peer, None)
        self.clipped += 1
        return tau / reach if math.isfinite(reach) else 0.0

    def is_suspect(self, peer: bytes) -> bool:
        return self._streak.get(peer, 0) >= self.section.suspect_after

    def forgive(self, peer: bytes) -> None:
        """Start counting afresh (after the caller's back-off)."""
        self._streak.pop(peer, None)
