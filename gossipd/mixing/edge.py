"""What a peer keeps per neighbour between exchanges, and how two ends agree to start an edge afresh."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any


@dataclass
class EdgeState:
    """An edge as one end sees it. Two ends are in step when their (epoch, round) are equal; anything else
    (a new edge, a restart, an exchange one side finished and the other did not) makes both reset to a
    fresh epoch derived from both sides' values, so they agree on it without another message."""

    epoch: int
    round: int = 0
    synced: bool = False  # False until both ends have agreed on this epoch
    data: Any = None  # the algorithm's per-edge state, set when the edge is synchronised
    mode: int | None = None  # an auto task's exchange mode the state belongs to (gossipd.mixing.auto)

    @classmethod
    def fresh(cls, rng: random.Random) -> EdgeState:
        return cls(epoch=rng.getrandbits(64))

    @property
    def key(self) -> tuple[int, int]:
        return (self.epoch, self.round)


def derive_epoch(mine: tuple[int, int], theirs: tuple[int, int]) -> int:
    """A 64-bit epoch both ends compute alike from their two (epoch, round) pairs (order-independent)."""
    low, high = sorted((mine, theirs))
    blob = b"gossipd-edge-epoch\0" + b"".join(v.to_bytes(8, "big") for v in (*low, *high))
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def seed_for(*parts: int | str) -> int:
    """A 63-bit generator seed both ends derive alike from the same parts (epoch, tensor name, counter)."""
    text = "\0".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(b"gossipd-seed\0" + text).digest()[:8], "big") >> 1
