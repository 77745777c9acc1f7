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
class StartWait:
    limit: float  # seconds from `since` after which the peer trains anyway
    settle: float  # seconds without a new live neighbour that count as settled
    since: float  # when the wait began
    _seen: set[str] = field(default_factory=set)
    _last_new: float | None = None  # when the last new live neighbour appeared
    _first_step: dict[str, int] = field(default_factory=dict)  # the first step each neighbour declared

    def decide(self, now: float, live_steps: Mapping[str, int | None]) -> Start:
        """`live_steps`: each live neighbour's training step as its heartbeats declare it (None: unknown)."""
        for peer, step in live_steps.items():
            if step is not None:
                self._first_step.setdefault(peer, step)
        started = [peer for peer, step in live_steps.items() if step is not None and step > 0]
        if any(self._first_step[peer] > 0 for peer in started):
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

    @property
    def seen(self) -> int:
        """Distinct live neighbours seen while waiting."""
        return len(self._seen)
