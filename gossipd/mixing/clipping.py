"""Self-centred clipping of each exchange's reconstructed difference (ClippedGossip: He, Karimireddy and
Jaggi, arXiv 2202.01545): a peer moves towards a neighbour by at most w·τ, so a Byzantine neighbour that
sends a sign-flipped, scaled or noisy model can only nudge it. τ adapts to the distances this peer has seen
recently — a multiple of their median, which a minority of attackers cannot drag up — or is fixed.
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


class Clipper:
    """A peer's clipping radius, fed with the distance estimate of every exchange it makes. A neighbour
    found `suspect_ratio` times beyond the radius `suspect_after` exchanges in a row is a suspect: honest
    neighbours rarely stray that far even while distances grow or compressed estimates fluctuate, while a
    sign-flipping or scaling attacker is far out every time and, clipped or not, keeps pulling the same wrong
    way. The caller leaves suspects alone for `suspect_backoff`."""

    def __init__(self, section: RobustSection) -> None:
        self.section = section
        self.recent: deque[float] = deque(maxlen=section.window)
        self.clipped = 0
        self._streak: dict[bytes, int] = {}

    def radius(self) -> float:
        if not self.section.clip:
            return math.inf
        if self.section.radius is not None:
            return self.section.radius
        if len(self.recent) < self.section.min_samples:
            # No trusted scale yet: move not at all rather than let an early attacker in unclipped.
            return 0.0
        return self.section.multiplier * statistics.median(self.recent)

    def factor(self, distance: float, peer: bytes = b"", pull: float = 1.0) -> float:
        """The scale for this exchange's delta (1 when within the radius), and remember the distance.

        `pull` is how much more than w this end moves (weighted mixing, `weigh_by`: up to 2 towards a peer
        that declares far more examples); the move is still at most w·τ, so a peer that declares a huge
        dataset pulls no further than any other."""
        tau = self.radius()
        if math.isfinite(distance):
            self.recent.append(distance)
        reach = distance * pull
        if math.isfinite(distance) and (reach <= tau or reach == 0):
            self._streak.pop(peer, None)
            return 1.0
        # A warm-up exchange (τ = 0) says nothing about the neighbour: only count real clips against it.
        if not math.isfinite(distance) or (tau > 0 and distance > self.section.suspect_ratio * tau):
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
