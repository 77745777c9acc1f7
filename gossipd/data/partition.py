"""Splitting one dataset among N simulated peers, by peer index: IID, Dirichlet(α) over labels, label shards,
or contiguous blocks in the examples' own order (for text: slices by position, so different plays and speakers).

Every scheme is a function of the seed alone, so every peer of a local swarm computes the same split and takes
its own part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

Scheme = Literal["iid", "contiguous", "dirichlet", "shards"]
_SPEC = re.compile(r"^(iid|contiguous|dirichlet:(?P<alpha>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)|shards:(?P<shards>[0-9]+))$")
# Dirichlet draws that leave a peer with almost nothing are redrawn, as in Hsu et al. (2019) and FedML.
_MIN_PER_PEER = 10
_MAX_REDRAWS = 1000


@dataclass(frozen=True)
class PartitionSpec:
    scheme: Scheme
    alpha: float = 0.0
    shards_per_peer: int = 0

    def __str__(self) -> str:
        if self.scheme == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.scheme == "shards":
            return f"shards:{self.shards_per_peer}"
        return self.scheme


def parse_partition(text: str) -> PartitionSpec:
    """`iid`, `contiguous` (peer i takes the i-th block of examples in their order), `dirichlet:ALPHA`
    (ALPHA > 0; smaller is more skewed) or `shards:S` (S label shards a peer)."""
    match = _SPEC.match(text.strip())
    if match is None:
        raise ValueError(
            f"found {text!r}, expected 'iid', 'contiguous', 'dirichlet:ALPHA' (e.g. dirichlet:0.5) or 'shards:S'"
        )
    if match["alpha"] is not None:
        alpha = float(match["alpha"])
        if alpha <= 0:
            raise ValueError(f"found dirichlet alpha {alpha}, expected a number > 0")
        return PartitionSpec("dirichlet", alpha=alpha)
    if match["shards"] is not None:
        shards = int(match["shards"])
        if shards < 1:
            raise ValueError("found 0 shards per peer, expected at least 1")
        return PartitionSpec("shards", shards_per_peer=shards)
    if match[1] == "contiguous":
        return PartitionSpec("contiguous")
    return PartitionSpec("iid")


def partition_indices(
    spec: PartitionSpec, n_examples: int, peers: int, seed: int, labels: np.ndarray | None = None
) -> list[np.ndarray]:
    """Example indices for each of `peers` peers (sorted, disjoint, covering every example for iid, contiguous
    and shards)."""
    if peers < 1:
        raise ValueError(f"peer count must be at least 1, found {peers}")
    if n_examples < peers:
        raise ValueError(f"cannot split {n_examples} examples among {peers} peers")
    rng = np.random.default_rng([seed, 0x9A27])
    if spec.scheme == "iid":
        parts = np.array_split(rng.permutation(n_examples), peers)
    elif spec.scheme == "contiguous":
        # No randomness on purpose: the skew is the order itself (a text's windows follow the text, so
        # peer i reads the i-th stretch of it), and sizes differ by at most one, as for iid.
        parts = np.array_split(np.arange(n_examples), peers)
    else:
        if labels is None:
            raise ValueError(f"partition {spec} needs labelled examples; this dataset has none (use 'iid')")
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != n_examples:
            raise ValueError(f"{labels.shape[0]} labels for {n_examples} examples")
        if spec.scheme == "dirichlet":
            parts = _dirichlet(labels, peers, spec.alpha, rng)
        else:
            parts = _shards(labels, peers, spec.shards_per_peer, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(labels: np.ndarray, peers: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    floor = min(_MIN_PER_PEER, len(labels) // (2 * peers))
    for _ in range(_MAX_REDRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(peers)]
        for idx in by_class:
            share = rng.dirichlet(np.full(peers, alpha))
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(np.int64)
            for peer, piece in enumerate(np.split(idx, cuts)):
                parts[peer].append(piece)
        merged = [np.concatenate(p) for p in parts]
        if min(len(m) for m in merged) >= floor:
            return merged
    raise ValueError(f"could not draw a Dirichlet({alpha}) split giving every one of {peers} peers examples")


def _shards(labels: np.ndarray, peers: int, per_peer: int, rng: np.random.Generator) -> list[np.ndarray]:
    total = peers * per_peer
    if total > len(labels):
        raise ValueError(f"{total} shards requested but only {len(labels)} examples")
    # A stable sort after a shuffle: shards are label-pure runs with random members inside each label.
    shuffled = rng.permutation(len(labels))
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(order, total)
    assignment = rng.permutation(total).reshape(peers, per_peer)
    return [np.concatenate([shards[s] for s in row]) for row in assignment]
