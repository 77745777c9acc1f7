"""What each neighbour has contributed to this peer, as far as this peer saw it: exchanges it started with us
and answered, bytes each way, time it was seen, messages of its we rejected, and the training steps and
dataset size it declares in its heartbeats. Pure: time comes from an injected wall clock.

Declared figures are the neighbour's word: nothing checks them (`declared_` prefixes say so). The rest this
peer measured itself. Unlike the peer table, which forgets a peer gone quiet, the ledger keeps departed
neighbours (bounded by `capacity`, least recently seen dropped first) and is saved with the checkpoint, so a
restart does not erase who contributed what.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CAPACITY = 4096
MAX_REASONS = 32  # distinct rejection reasons kept per neighbour (reasons are our own short names)


@dataclass
class Contribution:
    peer_id: str
    first_seen: float  # unix time
    last_seen: float
    seen_seconds: float = 0.0  # time it was heard from without a gap longer than the ledger's `gap`
    started: int = 0  # exchanges it started that completed
    answered: int = 0  # exchanges we started that it answered and completed
    failed: int = 0  # exchanges with it that failed (either end starting)
    bytes_sent: int = 0  # to it: exchanges (completed or not) and model copies
    bytes_received: int = 0
    state_bytes_sent: int = 0  # full models it copied from us (part of bytes_sent)
    state_bytes_received: int = 0
    rejections: dict[str, int] = field(default_factory=dict)  # its messages we rejected, by reason
    declared_step: int | None = None  # its training step, as its last heartbeat said
    declared_dataset: int | None = None  # its number of training examples, as its last heartbeat said

    @property
    def exchanges(self) -> int:
        return self.started + self.answered

    @property
    def rejected(self) -> int:
        return sum(self.rejections.values())


@dataclass(frozen=True)
class LedgerTotals:
    neighbours: int
    started: int
    answered: int
    failed: int
    bytes_sent: int
    bytes_received: int
    rejected: int


class Ledger:
    """`clock` is unix seconds. A neighbour heard again within `gap` seconds of the last time adds the time
    between to `seen_seconds`; a longer silence (it left, or we did) adds nothing."""

    def __init__(self, *, clock: Callable[[], float], gap: float = 15.0, capacity: int = CAPACITY) -> None:
        self.clock = clock
        self.gap = gap
        self.capacity = capacity
        self._entries: dict[str, Contribution] = {}

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._entries

    def get(self, peer_id: str) -> Contribution | None:
        return self._entries.get(peer_id)

    def entries(self) -> list[Contribution]:
        return sorted(self._entries.values(), key=lambda c: c.peer_id)

    def heard(self, peer_id: str, *, step: int | None = None, dataset: int | None = None) -> Contribution:
        """A sign of life: a heartbeat (with what it declares) or an exchange."""
        entry = self._entry(peer_id)
        now = self.clock()
        since = now - entry.last_seen
        if 0 < since <= self.gap:
            entry.seen_seconds += since
        entry.last_seen = max(entry.last_seen, now)
        if step is not None:
            entry.declared_step = step
        if dataset is not None:
            entry.declared_dataset = dataset
        return entry

    def exchanged(self, peer_id: str, *, started_by_us: bool) -> None:
        entry = self.heard(peer_id)
        if started_by_us:
            entry.answered += 1
        else:
            entry.started += 1

    def failed(self, peer_id: str) -> None:
        self._entry(peer_id).failed += 1

    def traffic(self, peer_id: str, *, sent: int = 0, received: int = 0, state: bool = False) -> None:
        entry = self._entry(peer_id)
        entry.bytes_sent += sent
        entry.bytes_received += received
        if state:
            entry.state_bytes_sent += sent
            entry.state_bytes_received += received

    def rejected(self, peer_id: str, reason: str) -> None:
        """A message of this neighbour's we rejected. Only neighbours already in the ledger are charged:
        anyone can make up peer ids, and a flood of made-up ones must not push real neighbours out."""
        entry = self._entries.get(peer_id)
        if entry is None:
            return
        if reason in entry.rejections or len(entry.rejections) < MAX_REASONS:
            entry.rejections[reason] = entry.rejections.get(reason, 0) + 1

    def totals(self) -> LedgerTotals:
        entries = self._entries.values()
        return LedgerTotals(
            neighbours=len(self._entries),
            started=sum(e.started for e in entries),
            answered=sum(e.answered for e in entries),
            failed=sum(e.failed for e in entries),
            bytes_sent=sum(e.bytes_sent for e in entries),
            bytes_received=sum(e.bytes_received for e in entries),
            rejected=sum(e.rejected for e in entries),
        )

    # -- persistence -----------------------------------------------------------------------------------

    def to_state(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(entry) for entry in self.entries()]

    def restore(self, records: Iterable[Any]) -> int:
        """Entries saved by `to_state` (a checkpoint's); a malformed one is skipped. Returns how many loaded."""
        loaded = 0
        for record in records:
            entry = _contribution(record)
            if entry is not None and entry.peer_id not in self._entries:
                self._entries[entry.peer_id] = entry
                loaded += 1
        self._bound()
        return loaded

    def _entry(self, peer_id: str) -> Contribution:
        entry = self._entries.get(peer_id)
        if entry is None:
            now = self.clock()
            entry = self._entries[peer_id] = Contribution(peer_id=peer_id, first_seen=now, last_seen=now)
            self._bound()
        return entry

    def _bound(self) -> None:
        if len(self._entries) <= self.capacity:
            return
        by_age = sorted(self._entries.values(), key=lambda c: c.last_seen)
        for entry in by_age[: len(self._entries) - self.capacity]:
            del self._entries[entry.peer_id]


_COUNTS = ("started", "answered", "failed", "bytes_sent", "bytes_received", "state_bytes_sent", "state_bytes_received")


def _contribution(record: Any) -> Contribution | None:
    if not isinstance(record, Mapping):
        return None
    try:
        peer_id = record["peer_id"]
        times = [float(record[key]) for key in ("first_seen", "last_seen", "seen_seconds")]
        counts = {key: record[key] for key in _COUNTS}
        rejections = record.get("rejections", {})
        step, dataset = record.get("declared_step"), record.get("declared_dataset")
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(peer_id, str) or not peer_id or not all(t >= 0 for t in times):
        return None
    if not all(_is_count(v) for v in counts.values()) or not all(v is None or _is_count(v) for v in (step, dataset)):
        return None
    if not isinstance(rejections, Mapping) or not all(
        isinstance(k, str) and _is_count(v) for k, v in rejections.items()
    ):
        return None
    return Contribution(
        peer_id=peer_id,
        first_seen=times[0],
        last_seen=times[1],
        seen_seconds=times[2],
        rejections=dict(rejections),
        declared_step=step,
        declared_dataset=dataset,
        **counts,
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
