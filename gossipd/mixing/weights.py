"""Mixing weights for one pairwise exchange, from the degrees both ends put in their message headers.

The degree a peer announces is its degree in the graph of exchanges it is running *now* (1 + the other
exchanges in flight), not the size of its view: Metropolis-Hastings weights on that time-varying graph keep
every update a convex combination even when a peer mixes with several neighbours at once from one stale
snapshot, while a lone exchange gets the full pairwise average w = 1/2 (randomised gossip's optimum,
Boyd et al. 2006). Weights from the view size would slow pairwise mixing by the view size for no safety gain.
"""

from __future__ import annotations


def metropolis_hastings(degree_a: int, degree_b: int) -> float:
    """w = min(1/2, 1/(1 + max(deg_a, deg_b))): symmetric, so both ends compute the same weight and the
    pair's sum is preserved."""
    return min(0.5, 1.0 / (1 + max(degree_a, degree_b, 1)))


def edge_weight(fixed: float | None, degree_a: int, degree_b: int) -> float:
    """The task's fixed weight if it sets one, else Metropolis-Hastings."""
    return fixed if fixed is not None else metropolis_hastings(degree_a, degree_b)
