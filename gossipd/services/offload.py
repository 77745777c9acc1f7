"""Where an exchange's arithmetic runs: on the event loop when it is short, in a worker thread when not.

Handing a computation to a worker thread and back costs two thread wake-ups and a trip through the event
loop's wake-up socket; for a small model's low-rank round that hand-over costs more CPU than the round
(measured on the small CNN: about a third of an attached daemon's CPU went to it, on the core its script
trained on). A long computation, though, must not stall the loop: heartbeats, the control API and other
exchanges wait behind it. So `Offload` measures each run and keeps computations on the loop while they take
less than `inline_below` seconds, starting in a thread until it knows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")
INLINE_BELOW = 0.003  # seconds: a stall of the event loop no one notices


class Offload:
    def __init__(self, inline_below: float = INLINE_BELOW, clock: Callable[[], float] = time.perf_counter) -> None:
        self.inline_below = inline_below
        self.clock = clock
        self.estimate: float | None = None  # a running mean of the computations' durations
        self.inline_runs = 0
        self.thread_runs = 0

    @property
    def inline(self) -> bool:
        return self.estimate is not None and self.estimate < self.inline_below

    async def run(self, function: Callable[[], T]) -> T:
        if self.inline:
            self.inline_runs += 1
            started = self.clock()
            result = function()
            self._took(self.clock() - started)
            await trio.lowlevel.checkpoint()  # the loop's other tasks get their turn
            return result
        self.thread_runs += 1

        def timed() -> tuple[T, float]:
            started = self.clock()
            value = function()
            return value, self.clock() - started

        result, elapsed = await trio.to_thread.run_sync(timed)
        self._took(elapsed)
        return result

    def _took(self, seconds: float) -> None:
        self.estimate = seconds if self.estimate is None else 0.8 * self.estimate + 0.2 * seconds
