"""Progress of a long simulation, as lines for a person watching (the CLI prints them on stderr, so `--json`
output stays one object on stdout). At most one line every `every` seconds while rounds go by, and one per
phase (the finish rounds, the final evaluation, the centralised baseline), which can each take minutes."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    def __init__(
        self,
        total: int,
        emit: Callable[[str], None],
        *,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.emit = emit
        self.every = every
        self.clock = clock
        self.started = clock()
        self._last = self.started

    def rounds(self, done: int, note: str = "") -> None:
        """`done` of the `total` rounds are over; says so if `every` seconds passed since the last line."""
        now = self.clock()
        if now - self._last < self.every or done <= 0:
            return
        self._last = now
        elapsed = now - self.started
        left = elapsed / done * (self.total - done)
        extra = f", {note}" if note else ""
        self.emit(
            f"round {done}/{self.total} ({done / self.total:.0%}), {elapsed:.0f} s so far, about {left:.0f} s of "
            f"rounds left{extra}"
        )

    def phase(self, text: str) -> None:
        """A phase after the rounds begins (it may take long)."""
        self._last = self.clock()
        self.emit(f"{text} ({self._last - self.started:.0f} s so far)")
