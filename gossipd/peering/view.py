"""A peer's small active view of neighbours (4-8 by default), sampled and rewired at random.

Random pairings over a bounded, slowly rewired view behave like time-varying random matchings, which mix
well in practice (Vogels et al., "Beyond spectral gap") while each peer keeps per-edge state for only a
few neighbours. Pure: the caller supplies candidates and the random generator.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

PeerId = TypeVar("PeerId", bound=Hashable)


class PeerView(Generic[PeerId]):
    def __init__(self, capacity: int, rng: random.Random) -> None:
        if capacity < 1:
            raise ValueError(f"view capacity must be at least 1, found {capacity}")
        self.capacity = capacity
        self.rng = rng
        self.members: list[PeerId] = []

    def __contains__(self, peer: object) -> bool:
        return peer in self.members

    def __len__(self) -> int:
        return len(self.members)

    @property
    def degree(self) -> int:
        """The degree announced in message headers (at least 1, so weights stay defined)."""
        return max(1, len(self.members))

    def fill(self, candidates: Iterable[PeerId]) -> list[PeerId]:
        """Add random candidates not yet in the view until it is full; returns those added."""
        fresh = [c for c in dict.fromkeys(candidates) if c not in self.members]
        self.rng.shuffle(fresh)
        added = fresh[: self.capacity - len(self.members)]
        self.members.extend(added)
        return added

    def remove(self, peer: PeerId) -> bool:
        if peer in self.members:
            self.members.remove(peer)
            return True
        return False

    def rewire(
        self, candidates: Iterable[PeerId], droppable: Callable[[PeerId], bool] = lambda _: True
    ) -> tuple[PeerId | None, PeerId] | None:
        """Swap one random `droppable` member for one random outside candidate (or just add it while the view
        has room); returns (dropped or None, added), or None when there is no outside candidate or, the view
        being full, no member to drop."""
        outside = [c for c in dict.fromkeys(candidates) if c not in self.members]
        if not outside:
            return None
        replaceable = [i for i, member in enumerate(self.members) if droppable(member)]
        if len(self.members) >= self.capacity and not replaceable:
            return None
        added = self.rng.choice(outside)
        dropped = None
        if len(self.members) >= self.capacity:
            dropped = self.members.pop(self.rng.choice(replaceable))
        self.members.append(added)
        return dropped, added

    def prefer(
        self, candidates: Iterable[PeerId], eligible: Callable[[PeerId], bool], minimum: int
    ) -> tuple[PeerId | None, PeerId] | None:
        """While the view holds fewer than `minimum` eligible members (or, smaller, its capacity), swap one
        ineligible member for a random eligible outside candidate; returns what `rewire` does, None when
        nothing changed."""
        if sum(1 for member in self.members if eligible(member)) >= min(minimum, self.capacity):
            return None
        return self.rewire([c for c in candidates if eligible(c)], droppable=lambda member: not eligible(member))

    def sample(self, eligible: Callable[[PeerId], bool] = lambda _: True) -> PeerId | None:
        """A uniformly random eligible member, or None."""
        choices = [m for m in self.members if eligible(m)]
        return self.rng.choice(choices) if choices else None
