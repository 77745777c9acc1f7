"""Mixing weights for one pairwise exchange, from the degrees both ends put in their message headers.

The degree a peer announces is its degree in the graph of exchanges it is running *now* (1 + the other
exchanges in flight), or more, not the size of its view: a lone exchange gets the full pairwise average
w = 1/2 (randomised gossip's optimum, Boyd et al. 2006), and weights from the view size would slow pairwise
mixing by the view size for no safety gain. Degrees at the start of each exchange alone do not keep a peer
that mixes with several neighbours at once from one stale snapshot to a convex combination (one that
started alone took 1/2, and the sample pull scales each step up to twice): the announced degree is raised
where needed by gossipd.mixing.pull_budget.
"""

from __future__ import annotations


def metropolis_hastings(degree_a: int, degree_b: int) -> float:
    """w = min(1/2, 1/(1 + max(deg_a, deg_b))): symmetric, so both ends compute the same weight and the
    pair's sum is preserved."""
    return min(0.5, 1.0 / (1 + max(degree_a, degree_b, 1)))


def edge_weight(fixed: float | None, degree_a: int, degree_b: int) -> float:
    """The task's fixed weight if it sets one, else Metropolis-Hastings."""
    return fixed if fixed is not None else metropolis_hastings(degree_a, degree_b)


def sample_pull(own_examples: int, peer_examples: int) -> float:
    """How much this end's step is scaled in a task weighted by samples: 2·n_peer / (n_own + n_peer).

    With x_own += c_own·w·(x_peer − x_own) and c_own = 2·n_peer/(n_own + n_peer) on both ends, n_own·Δx_own
    + n_peer·Δx_peer = 0: the sample-weighted sum is conserved, and at w = 1/2 both ends land on their
    weighted average. Equal sizes give 1 (plain mixing). A declared size of 0 counts as 1.
    """
    own, peer = max(1, own_examples), max(1, peer_examples)
    return 2.0 * peer / (own + peer)
