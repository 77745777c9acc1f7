"""Pacing mixing by training steps rather than by the clock.

With a time-paced schedule (`exchange_interval`), how many local steps a peer takes between two mixes depends
on how fast its model trains: an MLP on a fast core takes 20+ steps per 0.2 s, a CNN on a loaded one 5.
Compressed gossip falls behind when peers drift that far apart between mixes, worst on non-IID shards,
where every local step pulls towards a different optimum. A step-paced peer instead starts an exchange every
`every` of its own steps and lets its trainer run at most `lag` steps past the last exchange it took part in
(started here or answered); beyond that the trainer waits for a mix, as a synchronous all-reduce waits for
its round, but only for a bounded time, so a lone or cut-off peer keeps training.

Pure bookkeeping over step counts; the trainer and exchange services consult it and keep the clock.
"""

from __future__ import annotations


class StepPacer:
    def __init__(self, every: int, lag: int | None = None, *, step: int = 0) -> None:
        if every < 1:
            raise ValueError(f"steps per exchange must be at least 1, not {every}")
        self.every = every
        # Twice the interval: with each peer starting one exchange per `every` steps and answering about as
        # many, a peer mixes every ~every/2 steps, so the trainer waits only when exchanges run well behind.
        self.lag = 2 * every if lag is None else lag
        if self.lag < every:
            raise ValueError(f"the lag ({self.lag}) must be at least the steps per exchange ({every})")
        self._lag_ratio = self.lag / every
        self.reset(step)

    def set_every(self, every: int) -> None:
        """A new number of steps per exchange (the CPU budget stretched or restored it); the lag keeps its
        ratio to it. The exchange already due stays due; the next one follows the new pace."""
        if every < 1:
            raise ValueError(f"steps per exchange must be at least 1, not {every}")
        self.every = every
        self.lag = max(every, round(self._lag_ratio * every))

    def reset(self, step: int) -> None:
        """Start afresh at `step` (at start-up, and after the model was replaced by a neighbour's)."""
        self.next_start = step + self.every
        self.last_mix = step

    def due(self, step: int) -> bool:
        """Whether this peer should start its next exchange, at `step`."""
        return step >= self.next_start

    def started(self, step: int) -> None:
        """This peer started an exchange at `step`; the next one is due `every` steps later."""
        self.next_start = step + self.every

    def retry(self, step: int) -> None:
        """The exchange started last was declined: the next one is due at once."""
        self.next_start = min(self.next_start, step)

    def mixed(self, step: int) -> None:
        """An exchange this peer took part in finished at `step`."""
        self.last_mix = max(self.last_mix, step)

    def expect(self, step: int, steps: int) -> None:
        """An exchange predicted to take `steps` training steps' time starts at `step`, its time saved from
        intervals in which this peer started none (gossipd.mixing.link_budget): mixing is not behind, so the
        trainer may step through it and holds only past its predicted end."""
        self.last_mix = max(self.last_mix, step + steps - self.lag)

    def repeats(self, mixed_at: int | None, step: int) -> bool:
        """Whether an exchange due at `step` would repeat a mix with the neighbour (`repeats`, below)."""
        return repeats(mixed_at, step, self.every)

    def allowance(self, step: int) -> int:
        """How many steps the trainer may take from `step` before it must wait for a mix (0: wait now)."""
        return max(0, self.last_mix + self.lag - step)

    def chunk(self, step: int, wanted: int) -> int:
        """How many of `wanted` steps the trainer should take now: no further than the lag allows, and
        stopping where the next exchange is due, so that it starts on time rather than a chunk late."""
        steps = min(wanted, self.allowance(step))
        if step < self.next_start:
            steps = min(steps, self.next_start - step)
        return steps

    def release(self, step: int) -> None:
        """The trainer waited long enough without a mix: let it run another `lag` steps."""
        self.mixed(step)


def repeats(mixed_at: int | None, step: int, every: int) -> bool:
    """Whether an exchange due at `step` with a neighbour whose last exchange with this peer landed at step
    `mixed_at` (None: never) would repeat that mix: it landed within this interval, fewer than `every` steps
    ago. Right after a mix the pair's copies differ only by the few steps since, so a second exchange moves
    them little for a whole exchange's cost; with one neighbour, every other exchange was such a repeat. A
    step count that has gone back (a model copied from a neighbour) repeats nothing."""
    return mixed_at is not None and 0 <= step - mixed_at < every
