"""Keeping mixing within a CPU budget while the cores it runs on are busy.

An exchange costs the daemon milliseconds of CPU even for a small model (messages through the libp2p stack,
the event loop, the low-rank rounds): about 7 ms for each exchange a daemon starts or answers on the small
CNN, 12 ms on the 1.2M-parameter one (`make bench-attach`). A step-paced peer of a model that takes 100 steps
a second, mixing every 2 steps, spends a third of a core on it; when training shares that core, training
loses that third. So the pace of a step-paced peer adapts: every few seconds the daemon
compares the CPU it spent on anything but training with what it may spend, and stretches or restores the
steps between its exchanges, never below the task's `steps_per_exchange`.

What it may spend: `budget` of one core (`[gossip] cpu_budget`), plus whatever the cores this process may run
on left idle beyond `SLACK` (kept free for whatever else runs there): idle time costs training nothing. Mixing
costs are about proportional to the exchange rate, so the steps per exchange scale with usage over allowance;
they rise at once (training is losing time now) and come back down halfway each window (a brief lull should
not bring the cost back in full).

Pure arithmetic over readings the caller takes (wall time, the process's CPU time less training's, idle
core time); see `gossipd.adapters.cpu_usage` for the readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SLACK = 0.25  # of a core: idle time below this is not counted as spare
MAX_STRETCH = 32  # at most this many times the task's steps per exchange
INTERVAL = 2.0  # seconds between readings (the caller's loop)


@dataclass(frozen=True)
class Reading:
    wall: float  # seconds the window lasted
    mixing_cpu: float  # CPU seconds this process spent in the window on anything but training
    idle: float | None  # idle core-seconds in the window on the CPUs this process may use; None: unknown


class CpuBudget:
    def __init__(self, every: int, budget: float, *, max_stretch: int = MAX_STRETCH) -> None:
        if every < 1 or budget <= 0:
            raise ValueError(f"a CPU budget needs steps per exchange ≥ 1 and a budget > 0 (got {every}, {budget})")
        self.base = every
        self.budget = budget
        self.max_every = every * max_stretch
        self._every = float(every)
        self.usage: float | None = None  # cores mixing used in the last window
        self.allowed: float | None = None  # cores it was allowed

    @property
    def every(self) -> int:
        return max(self.base, round(self._every))

    @property
    def stretched(self) -> bool:
        return self.every > self.base

    def update(self, reading: Reading) -> int:
        """The steps per exchange for the next window."""
        if reading.wall <= 0:
            return self.every
        usage = max(0.0, reading.mixing_cpu / reading.wall)
        allowed = self.budget
        if reading.idle is not None:
            allowed += max(0.0, reading.idle / reading.wall - SLACK)
        self.usage, self.allowed = usage, allowed
        target = self._every * usage / allowed
        if target > self._every:
            self._every = min(float(self.max_every), target)
        else:
            self._every = max(float(self.base), (self._every + target) / 2)
        if not math.isfinite(self._every):
            self._every = float(self.base)
        return self.every
