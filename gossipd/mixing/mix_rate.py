"""How much mixing a peer gets per training step: the sum of the shares `w·c` its exchanges moved it
towards their neighbours (after clipping), per step it trained, over its last WINDOW steps.

Gossip keeps non-IID copies together only when this sum keeps up with the drift of local steps, and the
exchange count alone does not say so: exchanges that overlap in time share one pull (gossipd.mixing.
pull_budget), so their weights shrink as they last longer. On the MNIST MLP's Dirichlet(0.1) split (8 peers,
simulator, plain gossip, every share fixed, one exchange per step a peer) a share of 1/3 ended 0.7 points
from centralised training and 0.2 two points; 8 daemons on one 2-core machine, their exchanges lasting
several steps each, mixed about 0.1 per step and ended about as far off (docs/bench-quality.md).

Pure bookkeeping over step counts; the exchange service feeds it the exchanges it lands while training.
"""

from __future__ import annotations

from collections import deque

WINDOW = 200  # training steps the rate is taken over


class MixRate:
    def __init__(self, window: int = WINDOW) -> None:
        if window < 1:
            raise ValueError(f"the window must be at least one step, not {window}")
        self.window = window
        self._landed: deque[tuple[int, float]] = deque()  # (step, share), oldest first
        self._first: int | None = None  # the step of the first exchange counted
        self._last: float | None = None

    def landed(self, step: int, share: float) -> None:
        """An exchange moved this peer by `share` of the way to its neighbour, at training step `step`."""
        if self._first is None:
            self._first = step
        self._landed.append((step, max(0.0, share)))
        self._forget_before(step)  # bounded whether or not anyone reads the rate

    def per_step(self, step: int) -> float | None:
        """The shares landed over the last `window` steps (or since the first counted, if fewer), per step;
        None before any exchange landed. Past `step`'s window the old exchanges drop out."""
        if self._first is None:
            return None
        self._forget_before(step)
        steps = min(self.window, step - self._first)
        if steps <= 0:
            return self._last
        self._last = sum(share for _, share in self._landed) / steps
        return self._last

    def _forget_before(self, step: int) -> None:
        while self._landed and self._landed[0][0] <= step - self.window:
            self._landed.popleft()
