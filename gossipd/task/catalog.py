"""The tasks peers offer, gathered from their adverts: one entry per task hash with every peer offering it,
and the choice of a task by what a user types (`gossipd join --from TASK`). No I/O.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from gossipd.wire.task_advert import TaskAdvert

_V = TypeVar("_V", str, int, tuple[int, ...])
MIN_HASH_PREFIX = 4  # hex characters: shorter prefixes match too much to mean anything


class NoSuchTask(LookupError):
    """No peer offers a task by that id or hash prefix."""


class AmbiguousTask(LookupError):
    """Several offered tasks match; the message lists them by hash so the user can pick one."""


@dataclass(frozen=True, kw_only=True)
class Offer:
    """One task as the peers that advertise it describe it."""

    task_id: str
    task_hash: bytes
    description: str
    model: str
    parameters: int
    input_shape: tuple[int, ...]
    algorithm: str
    offered_by: tuple[TaskAdvert, ...]  # the latest advert of each peer, most connected peer first

    @property
    def swarm_size(self) -> int:
        """Peers in the task as far as anyone heard: those offering it, or more if one of them sees more."""
        return max(len(self.offered_by), *(a.peers + 1 for a in self.offered_by))


class Catalog:
    """Adverts as they arrive (pubsub and stream answers alike); the latest one per (task, peer) counts."""

    def __init__(self) -> None:
        self._adverts: dict[tuple[bytes, str], TaskAdvert] = {}
        self.rejections: dict[str, int] = {}  # adverts refused, by reason

    def add(self, advert: TaskAdvert) -> None:
        self._adverts[(advert.task_hash, advert.peer)] = advert

    def rejected(self, reason: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def offers(self) -> list[Offer]:
        """Every task, most offered first, then by id and hash (a stable order for listings)."""
        by_hash: dict[bytes, list[TaskAdvert]] = collections.defaultdict(list)
        for advert in self._adverts.values():
            by_hash[advert.task_hash].append(advert)
        offers = [_offer(adverts) for adverts in by_hash.values()]
        return sorted(offers, key=lambda o: (-len(o.offered_by), o.task_id, o.task_hash))


def _offer(adverts: list[TaskAdvert]) -> Offer:
    adverts = sorted(adverts, key=lambda a: (-a.peers, a.peer))
    # The hash pins the id, model and algorithm, but not the description or the summary a peer computed:
    # take what most peers say (ties: the smallest), so one odd peer cannot relabel a task for everyone.
    first = adverts[0]
    return Offer(
        task_id=first.task_id,
        task_hash=first.task_hash,
        description=_most_common(a.description for a in adverts),
        model=_most_common(a.model for a in adverts),
        parameters=_most_common(a.parameters for a in adverts),
        input_shape=_most_common(a.input_shape for a in adverts),
        algorithm=_most_common(a.algorithm for a in adverts),
        offered_by=tuple(adverts),
    )


def _most_common(values: Iterable[_V]) -> _V:
    counts = collections.Counter(values)
    return min(counts, key=lambda v: (-counts[v], v))


def select(offers: list[Offer], wanted: str) -> Offer:
    """The offer whose task id is `wanted`, or whose hash (hex) starts with it. A task id that several
    swarms use (with different models or settings) is ambiguous: the user names one by its hash."""
    wanted = wanted.strip().lower()
    by_id = [o for o in offers if o.task_id == wanted]
    by_hash = [o for o in offers if o.task_hash.hex().startswith(wanted)] if len(wanted) >= MIN_HASH_PREFIX else []
    matches = by_id or by_hash
    if not matches:
        known = ", ".join(f"{o.task_id} ({o.task_hash.hex()[:12]})" for o in offers) or "none"
        raise NoSuchTask(f"no peer offers a task {wanted!r}; offered: {known}")
    if len(matches) > 1:
        listed = "; ".join(f"{o.task_hash.hex()[:12]}: {o.task_id}, {o.model}, {o.algorithm}" for o in matches)
        raise AmbiguousTask(f"{len(matches)} offered tasks match {wanted!r}, pick one by its hash: {listed}")
    return matches[0]
