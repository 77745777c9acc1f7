"""How far the exchanges one peer runs at once may pull its model, together.

An exchange moves this end's model by `a·(x_peer − x_own)`, with `a = w·c`: `w` the pair's weight
(gossipd.mixing.weights) and `c` this end's sample pull (up to 2 in a task weighted by samples, towards a
neighbour with more examples). Its difference is taken from a snapshot of the model made when the exchange
started, so exchanges that overlap in time each move the model from about the same point and their `a` add
up. While they sum to at most 1 the result is a convex combination of the copies; past 1 the model
overshoots its neighbours' average, away from its own copy. Each pair's (weighted) sum stays conserved, but
the copies no longer contract towards each other (a simulator run altered to apply every exchange two rounds
late, pulls summing to about 2, fell to chance accuracy). Measured on 8 daemons of the MNIST MLP on one 2-core machine,
Dirichlet(0.1) shards: an exchange took ~90 ms there and most ran beside 2 others; for the three daemons with
the fewest examples (whose pulls are the largest), 9-26% of exchanges began while those in flight summed past
1 with it, up to 1.4.

Metropolis-Hastings weights from the degree an end announces (1 + the exchanges in flight) bound the sum only
for exchanges that start together: one that started alone took `w = 1/2` and the later ones add to it. So
each end keeps the `a` of its exchanges in flight (reserved when one starts, from the bound on `c` it can
know then, and made exact once the weight is agreed) and announces for a new exchange a degree high enough
that its `a` fits what is left: a lone exchange still gets the full pairwise average, later ones less, and
one for which the room left would mean a weight under 1/(1 + MAX_DEGREE) is not started (or is answered
"busy"): it would cost its bytes for little mixing. An opener takes `c` from the size the neighbour
declared in their last exchange (2 before any); should that size have changed, the agreed `a` is booked as
it is and the sum may pass 1 for that exchange's time. The announced degree is only ever raised, which every
implementation of the protocol takes as it is (protocols/mix-v2.md).

Pure bookkeeping: the exchange service reserves, settles and releases; the session computes the weight.
"""

from __future__ import annotations

import math

from gossipd.mixing.weights import metropolis_hastings, sample_pull

MAX_DEGREE = 7  # the highest degree announced: weights under 1/8 are not worth an exchange's bytes
MAX_PULL = 2.0  # the sample pull's bound (2·n_peer / (n_own + n_peer) < 2)
_EPS = 1e-9


def pull_bound(own_examples: int | None, peer_examples: int | None, *, known: bool) -> float:
    """The most this end's sample pull can be in an exchange (the session computes it as this does). `known`:
    `peer_examples` is what the neighbour declares in this exchange (None: it declares no size), as the
    answering end reads it in the hello; otherwise it is a guess from an earlier exchange, or None for no
    guess, and the bound is MAX_PULL. 1 where this end declares no size (a task not weighted by samples)."""
    if own_examples is None:
        return 1.0
    if peer_examples is None:
        return 1.0 if known else MAX_PULL
    return sample_pull(own_examples, peer_examples)


class PullBudget:
    """The pulls (`a`) of one peer's exchanges in flight, keyed by neighbour."""

    def __init__(self, fixed_weight: float | None = None) -> None:
        self.fixed_weight = fixed_weight  # the task's [gossip] weight: the degree then changes nothing
        self.reserved: dict[str, float] = {}
        self.declined = 0  # exchanges not started or answered "busy" for want of room

    def room(self) -> float:
        """What the exchanges in flight leave of a total pull of 1."""
        return 1.0 - sum(self.reserved.values())

    def degree_for(self, pull: float, floor: int) -> int | None:
        """The degree to announce for an exchange whose pull is at most `pull`, at least `floor` (1 + the
        other exchanges in flight); None when the room left does not take it at any degree up to MAX_DEGREE."""
        room = self.room()
        degree = max(1, floor)
        if self.fixed_weight is not None:
            fits = pull * self.fixed_weight <= room + _EPS
        elif pull * _weight(degree) <= room + _EPS:
            fits = True
        else:
            fits = room > _EPS
            degree = max(degree, math.ceil(pull / room - 1 - _EPS)) if fits else degree
        return degree if fits and degree <= MAX_DEGREE else None

    def fits(self, pull: float, floor: int) -> bool:
        return self.degree_for(pull, floor) is not None

    def reserve(self, key: str, pull: float, floor: int) -> int | None:
        """Reserve room for a new exchange with `key`; the degree to announce, or None (no room: counted)."""
        degree = self.degree_for(pull, floor)
        if degree is None:
            self.declined += 1
            return None
        weight = self.fixed_weight if self.fixed_weight is not None else _weight(degree)
        self.reserved[key] = pull * weight
        return degree

    def settle(self, key: str, applied: float) -> None:
        """The exchange's agreed `a` (its weight × this end's pull), once both degrees are known."""
        if key in self.reserved:
            self.reserved[key] = applied

    def release(self, key: str) -> None:
        """The exchange ended: its delta is submitted (later snapshots include it) or it failed."""
        self.reserved.pop(key, None)


def _weight(degree: int) -> float:
    """The most weight an exchange announcing `degree` can get: the neighbour's degree only lowers it."""
    return metropolis_hastings(degree, 1)
