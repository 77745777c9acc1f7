"""Self-centred clipping of each exchange's reconstructed difference (ClippedGossip: He, Karimireddy and
Jaggi, arXiv 2202.01545): a peer moves towards a neighbour by at most w·τ, so a Byzantine neighbour that
sends a sign-flipped, scaled or noisy model can only nudge it. τ adapts to the distances this peer has seen
recently, or is fixed.

The adaptive τ is a multiple of a vote among neighbours: each neighbour's median distance over the recent
exchanges, then the lower median of those. A median over exchanges is not enough: one attacker can make half
of a peer's recent exchanges by chance (a window of 8 right after an auto edge switches mode), or by starting
exchanges with it as often as it can, and then drags τ up with its own distance. Each move it is allowed
pushes this peer further from its honest neighbours, whose distances, and so τ, grow in turn (a scaling
attacker took a simulated swarm of 8 from 91% to 57% that way). By neighbours, an attacker is one vote
however often it exchanges, and the lower median keeps τ an honest scale while attackers are under half
of the neighbours (with two neighbours, the nearer of them).

Distances are estimated differently by each exchange mode of an auto task (a rank-1 projection sees less of
the difference than a rank-8 one or whole models), so each mode (`kind`) keeps its own recent distances. A
mode an edge has just climbed to borrows, until it has enough of its own, the largest radius among the
modes that have: never 0 (a switch must not stop mixing), and no looser than the coarsest estimate's.
"""

from __future__ import annotations

import math
import statistics
import threading
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
        self._recent: dict[int | None, deque[tuple[bytes, float]]] = {}
        self.clipped = 0
        self._streak: dict[bytes, int] = {}
        # A daemon finishes exchanges in worker threads, several at once: one exchange's vote iterated the
        # distances while another's were appended ("deque mutated during iteration", a daemon lost in
        # `make bench-peers`, 2026-12-04).
        self._lock = threading.RLock()

    def recent(self, kind: int | None = None) -> deque[tuple[bytes, float]]:
        """The latest (neighbour, distance) of exchanges of one mode (None: a task with a single mode)."""
        with self._lock:
            return self._recent.setdefault(kind, deque(maxlen=self.section.window))

    def _scale(self, kind: int | None) -> float:
        """The neighbours' vote on this mode's distance (see the module's docstring)."""
        by_neighbour: dict[bytes, list[float]] = {}
        for peer, distance in self.recent(kind):
            by_neighbour.setdefault(peer, []).append(distance)
        return statistics.median_low([statistics.median(d) for d in by_neighbour.values()])

    def radius(self, kind: int | None = None) -> float:
        if not self.section.clip:
            return math.inf
        if self.section.radius is not None:
            return self.section.radius
        with self._lock:
            if self._trusted(kind):
                return self.section.multiplier * self._scale(kind)
            others = [self.section.multiplier * self._scale(k) for k in list(self._recent) if self._trusted(k)]
        # No trusted scale yet: move not at all rather than let an early attacker in unclipped.
        return max(others, default=0.0)

    def _trusted(self, kind: int | None) -> bool:
        return len(self.recent(kind)) >= self.section.min_samples

    def factor(self, distance: float, peer: bytes = b"", pull: float = 1.0, kind: int | None = None) -> float:
        """The scale for this exchange's delta (1 when within the radius), and remember the distance.

        `pull` is how much more than w this end moves (weighted mixing, `weigh_by`: up to 2 towards a peer
        that declares far more examples); the move is still at most w·τ, so a peer that declares a huge
        dataset pulls no further than any other. `kind`: the exchange's mode in an auto task."""
        with self._lock:
            return self._factor(distance, peer, pull, kind)

    def _factor(self, distance: float, peer: bytes, pull: float, kind: int | None) -> float:
        tau = self.radius(kind)
        borrowed = self.section.radius is None and not self._trusted(kind)
        if math.isfinite(distance):
            self.recent(kind).append((peer, distance))
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
        with self._lock:
            return self._streak.get(peer, 0) >= self.section.suspect_after

    def forgive(self, peer: bytes) -> None:
        """Start counting afresh (after the caller's back-off)."""
        with self._lock:
            self._streak.pop(peer, None)
