"""When a fresh peer of a task with a training budget takes its first step (`[train] start_wait`).

A daemon loads its task in seconds, but finding its neighbours takes a few heartbeats. A peer that trains
meanwhile may spend a small budget alone: on Titanic, four daemons of 300 steps each trained apart in well
under a second each, and the finish averaged four models trained apart (55.6%, against 76.4% for the same
daemons started together; docs/bench-quality.md). So a fresh peer of a budgeted task first waits:

- for a neighbour that has already trained (the first step its heartbeats declare is above 0): the swarm
  is running, and the peer joins it by copying a model, as any late joiner does;
- for its neighbours to *settle*: at least one live, and no new one for `settle` seconds (swarms are started
  together, so their peers appear within a few heartbeats of each other); they then start together from the
  task's model. A neighbour that this peer saw at step 0 and that has begun to train is one of them, whose
  own wait ended a moment sooner: the peer starts too (copying its model would take its first steps along
  with the step count, and leave fewer of the budget's steps for this peer's own data);
- at most `limit` seconds: a peer that finds nobody, or a swarm that keeps growing, trains anyway.

A quorum (`[train] min_peers`) waits instead for enough live neighbours; its peers then start together by the
same rule (`FirstSteps`): neighbours first seen at step 0 are co-starters, not a swarm to copy from.

Pure: the caller passes the time and what it sees; `decide` says whether to go on waiting.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Start(enum.Enum):
    WAIT = "wait"
    JOIN = "join"  # a neighbour has trained: copy a model (the runtime's join)
    TOGETHER = "together"  # live neighbours, none trained, no newcomer for `settle` seconds
    ALONE = "alone"  # the limit passed: train with whoever is there, maybe nobody


@dataclass
class FirstSteps:
    """The first training step each neighbour declared while this peer waited to start: one first seen at
    step 0 started with this peer (its wait ended a moment sooner), whatever step it has reached since."""

    _first: dict[str, int] = field(default_factory=dict)

    def note(self, live_steps: Mapping[str, int | None]) -> None:
        """`live_steps`: each live neighbour's training step as its heartbeats declare it (None: unknown)."""
        for peer, step in live_steps.items():
            if step is not None:
                self._first.setdefault(peer, step)

    def trained_before_us(self, peer: str) -> bool:
        """Whether `peer` had trained when first heard of (unknown until its heartbeats declare a step)."""
        first = self._first.get(peer)
        return first is not None and first > 0

    def co_starters(self, live_steps: Mapping[str, int | None]) -> bool:
        """Whether there are live neighbours, every one first seen at step 0: nobody has a trained model to
        copy. A neighbour whose step is unknown may have one."""
        self.note(live_steps)
        return bool(live_steps) and all(peer in self._first and self._first[peer] == 0 for peer in live_steps)


@dataclass
class StartWait:
    limit: float  # seconds from `since` after which the peer trains anyway
    settle: float  # seconds without a new live neighbour that count as settled
    since: float  # when the wait began
    _seen: set[str] = field(default_factory=set)
    _last_new: float | None = None  # when the last new live neighbour appeared
    first_steps: FirstSteps = field(default_factory=FirstSteps)

    def decide(self, now: float, live_steps: Mapping[str, int | None]) -> Start:
        """`live_steps`: each live neighbour's training step as its heartbeats declare it (None: unknown)."""
        self.first_steps.note(live_steps)
        started = [peer for peer, step in live_steps.items() if step is not None and step > 0]
        if any(self.first_steps.trained_before_us(peer) for peer in started):
            return Start.JOIN
        if started:
            return Start.TOGETHER  # seen at step 0, now training: a neighbour that started with us
        new = set(live_steps) - self._seen
        if new:
            self._seen |= new
            self._last_new = now
        if now - self.since >= self.limit:
            return Start.ALONE
        if live_steps and self._last_new is not None and now - self._last_new >= self.settle:
            return Start.TOGETHER
        return Start.WAIT
