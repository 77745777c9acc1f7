"""Keeping mixing within a CPU budget while the cores it runs on are busy.

An exchange costs the daemon milliseconds of CPU even for a small model (messages through the libp2p stack,
the event loop, the low-rank rounds): about 7 ms for each exchange a daemon starts or answers on the small
CNN, 12 ms on the 1.2M-parameter one (`make bench-attach`). A step-paced peer of a model that takes 100 steps
a second, mixing every 2 steps, spends a third of a core on it; when training shares that core, training
loses that third. So a step-paced peer adapts what it spends: every few seconds the daemon compares the CPU
it spent on anything but training with what it may spend and, while over, first makes each exchange cheaper,
then makes exchanges rarer:

1. *Cheaper exchanges* (auto tasks): the time an exchange may take (gossipd.mixing.link_budget) is divided by
   `shrink`, so each edge steps down its ladder to lower ranks at the same pace. Fewer steps between mixes
   beat fuller mixes: on the 1.2M-parameter CNN, four peers needed 952 steps to 98% exchanging whole models
   every ~10 steps (the pace stretched alone, docs/bench-peers/experiments/cpu-budget-0.1) against 582 at
   PowerGossip rank 1 every 2 steps, at a fraction of the CPU per exchange.
2. *Rarer exchanges*, once every edge is at its cheapest mode (or the algorithm is fixed): the steps between
   exchanges stretch, never below the task's `steps_per_exchange`.

Under the budget the order reverses: the pace comes back first, then the exchanges' time. Both move by the
ratio of usage to allowance (mixing's cost is about proportional to the exchange rate and to what each
exchange sends): at once while over (training is losing time now), halfway back each window while under (a
brief lull should not bring the cost back in full).

What it may spend: `budget` of one core (`[gossip] cpu_budget`), plus whatever the cores this process may run
on left idle beyond `SLACK` (kept free for whatever else runs there): idle time costs training nothing.

Pure arithmetic over readings the caller takes (wall time, the process's CPU time less training's, idle
core time); see `gossipd.adapters.cpu_usage` for the readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SLACK = 0.25  # of a core: idle time below this is not counted as spare
MAX_STRETCH = 32  # at most this many times the task's steps per exchange
MAX_SHRINK = 64.0  # an exchange's time budget is divided by at most this much
INTERVAL = 2.0  # seconds between readings (the caller's loop)


@dataclass(frozen=True)
class Reading:
    wall: float  # seconds the window lasted
    mixing_cpu: float  # CPU seconds this process spent in the window on anything but training
    idle: float | None  # idle core-seconds in the window on the CPUs this process may use; None: unknown


class CpuBudget:
    def __init__(
        self, every: int, budget: float, *, max_stretch: int = MAX_STRETCH, max_shrink: float = MAX_SHRINK
    ) -> None:
        if every < 1 or budget <= 0:
            raise ValueError(f"a CPU budget needs steps per exchange ≥ 1 and a budget > 0 (got {every}, {budget})")
        self.base = every
        self.budget = budget
        self.max_every = every * max_stretch
        self._every = float(every)
        self.max_shrink = max_shrink
        self.shrink = 1.0  # what an exchange's time budget is divided by (cheaper modes before rarer exchanges)
        self.usage: float | None = None  # cores mixing used in the last window
        self.allowed: float | None = None  # cores it was allowed

    @property
    def every(self) -> int:
        return max(self.base, round(self._every))

    @property
    def stretched(self) -> bool:
        return self.every > self.base

    def update(self, reading: Reading, *, cheapest: bool = True) -> int:
        """The steps per exchange for the next window; `cheapest`: whether every edge already exchanges at its
        cheapest mode (always, for a fixed algorithm), so only a slower pace can cut mixing's cost further."""
        if reading.wall <= 0:
            return self.every
        usage = max(0.0, reading.mixing_cpu / reading.wall)
        allowed = self.budget
        if reading.idle is not None:
            allowed += max(0.0, reading.idle / reading.wall - SLACK)
        self.usage, self.allowed = usage, allowed
        ratio = usage / allowed
        if not math.isfinite(ratio):
            ratio = 1.0
        if ratio > 1:
            if not cheapest and self.shrink < self.max_shrink:
                self.shrink = min(self.max_shrink, self.shrink * ratio)
            else:
                self._every = min(float(self.max_every), self._every * ratio)
        elif self.stretched:
            self._every = max(float(self.base), self._every * (1 + ratio) / 2)
        else:
            self._every = float(self.base)
            self.shrink = max(1.0, self.shrink * (1 + ratio) / 2)
        if not math.isfinite(self._every):
            self._every = float(self.base)
        return self.every
