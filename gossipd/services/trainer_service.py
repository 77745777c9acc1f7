"""The trainer as a trio service: torch steps run in a worker thread, a chunk at a time, and the event loop
stays free for the network. Between chunks (a *step boundary*) the service applies the deltas exchanges
produced, runs anything that must see the model at rest (snapshots, checkpoints, loading a full state), and
evaluates on schedule. Nothing else touches the model, so mixing never races with training.

With step pacing (`[gossip] steps_per_exchange`) a chunk also stops where the next exchange is due, and the
trainer holds at a boundary once it is the pacer's lag ahead of its last mix, until an exchange finishes or
fails, or `hold_limit` seconds pass; it never holds while the peer has no neighbour to mix with.

With a training budget (`[train] total_steps`) the trainer stops at that step for good; it still applies the
deltas of exchanges and serves the model at boundaries, so mixing goes on (the exchange service's finish).
With personal parameters ([gossip] personal) and `[train] personal_steps`, once the peer has finished the
runtime calls `start_personal`: the trainer then fine-tunes those parameters alone, a chunk at a time
between boundaries, and the task stays `finishing` until it is done.

A model can blow up (lr 0.05 with momentum 0.9 is at the edge of stability for the MNIST CNN: a peer training
alone for a few hundred steps sometimes does). Its weights are then finite but so large that every batch's
loss overflows, every step is skipped, and no exchange can pull it back (the pull per exchange is clipped). The
trainer stops after DIVERGED_AFTER skipped steps in a row and sets `diverged`; the task runtime replaces the
model with a neighbour's and calls `recovered`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import trio

from gossipd.data.spec import ArrayDataset
from gossipd.mixing.algorithm import Delta
from gossipd.mixing.layout import mixed_parameters
from gossipd.mixing.pacing import StepPacer
from gossipd.train.trainer import Evaluation, Trainer

if TYPE_CHECKING:
    # trio-typing's stubs (pulled in by libp2p) shadow trio's own annotations and lack TaskStatus.
    from trio_typing import TaskStatus

log = logging.getLogger("gossipd.trainer")
T = TypeVar("T")
_MAX_PENDING = 64  # deltas queued beyond this are merged into one, so a stalled trainer cannot hoard memory
FRESH_VERSIONS = 2  # a published snapshot this many model changes old is still served at once
WANTED_FOR = 10.0  # seconds after an exchange asked for a snapshot that one is published at every boundary
DIVERGED_AFTER = 50  # skipped steps in a row (non-finite loss) that mean the model itself is broken


@dataclass(frozen=True)
class TrainerStatistics:
    step: int
    samples: int
    loss: float | None
    samples_per_second: float
    evaluation: Evaluation | None
    evaluated_at_step: int | None
    held_seconds: float  # time spent waiting for a mix (step pacing)


class TrainerService:
    def __init__(
        self,
        trainer: Trainer,
        validation: ArrayDataset,
        *,
        eval_every: int,
        eval_samples: int,
        chunk_seconds: float = 0.1,
        limiter: trio.CapacityLimiter | None = None,
        budget: int | None = None,
        personal: frozenset[str] = frozenset(),
        personal_steps: int = 0,
        mixed_peers: Callable[[], int] = lambda: 1,
    ) -> None:
        self.trainer = trainer
        # This peer and its live view neighbours, read before every chunk ([train] swarm_batch).
        self.mixed_peers = mixed_peers
        self.budget = budget
        self.personal = personal  # [gossip] personal: never in a snapshot, so never mixed
        self._mixed: dict[str, torch.Tensor] | None = None
        self.personal_steps = personal_steps if personal else 0
        self._personalising = False
        self.validation = validation
        self.eval_every = eval_every
        self.eval_samples = eval_samples
        self.chunk_seconds = chunk_seconds
        self.limiter = limiter or trio.CapacityLimiter(1)
        self._pending: list[Delta] = []
        self._pending_momentum: list[Delta] = []
        self._at_boundary: list[tuple[Callable[[], Any], trio.MemorySendChannel[tuple[bool, Any]]]] = []
        self._wake = trio.Event()
        self._running = trio.Event()
        self._paused = False
        self._steps_per_chunk = 1
        self._loss: float | None = None
        self._rate = 0.0
        self._evaluation: Evaluation | None = None
        self._evaluated_at: int | None = None
        # The model's version counts every change (a chunk of steps, applied deltas, a loaded state), so a
        # snapshot is republished whenever the model moved, even while training is paused.
        self._version = 0
        self._snapshot: dict[str, torch.Tensor] = self._clone_params()
        self._snapshot_version = 0
        self._wanted_at: float | None = None  # when an exchange last asked for a snapshot
        self._stepped = trio.Event()
        self.pacer: StepPacer | None = None
        self._may_hold: Callable[[], bool] = lambda: False
        self._hold_limit = 0.0
        self._held_since: float | None = None
        self._held_seconds = 0.0
        self._evaluate_now = False
        self._budget_logged = False
        self.diverged = trio.Event()  # set when the model blew up; the runtime replaces it

    @property
    def version(self) -> int:
        """Changes whenever the model does (steps, applied deltas, a loaded state); read it at a boundary."""
        return self._version

    @property
    def step(self) -> int:
        return self.trainer.step

    def epsilon(self) -> float | None:
        """The privacy budget DP-SGD has spent ([privacy]); None without it."""
        return self.trainer.epsilon()

    def training_cpu_seconds(self) -> float:
        return self.trainer.cpu_seconds

    @property
    def training_done(self) -> bool:
        """Whether the trainer has taken its budget of steps (it takes no more)."""
        return self.budget is not None and self.trainer.step >= self.budget

    def pace(self, pacer: StepPacer, *, may_hold: Callable[[], bool], hold_limit: float) -> None:
        """Pace training by mixing: `may_hold` says whether there is anyone to mix with right now."""
        pacer.reset(self.trainer.step)
        self.pacer = pacer
        self._may_hold = may_hold
        self._hold_limit = hold_limit

    # -- what other services call ---------------------------------------------------------------------

    def submit(self, delta: Delta, momentum: Delta | None = None) -> None:
        """Queue the result of a finished exchange; it is added to the model (and `momentum` to the
        optimiser's momentum) at the next step boundary."""
        if momentum:
            if len(self._pending_momentum) >= _MAX_PENDING:  # a paused trainer: keep one sum, not a list
                merged = self._pending_momentum.pop(0)
                for name, change in momentum.items():
                    merged[name] = merged[name] + change if name in merged else change
                momentum = merged
            self._pending_momentum.append(momentum)
        if self.pacer is not None:
            self.pacer.mixed(self.trainer.step)
        if len(self._pending) >= _MAX_PENDING:
            merged = self._pending.pop(0)
            for name, change in delta.items():
                merged[name] = merged[name] + change if name in merged else change
            delta = merged
        self._pending.append(delta)
        self._wake.set()

    async def snapshot(self) -> dict[str, torch.Tensor]:
        """The mixed parameters as of a recent step boundary, plus the deltas not yet added to the model (a
        copy nothing will modify).

        Served at once while the published copy is at most FRESH_VERSIONS changes old (while exchanges ask,
        one is published at every boundary), else at the next boundary. Waiting for a boundary cost an
        answering peer half a chunk on average, and that wait counted in every exchange's time: on the
        1.2M-parameter CNN (steps of ~90 ms, an exchange every 2) it was as long as the whole budget `auto`
        gives an exchange, which then never left rank 1. The pair's sum is conserved whatever the copy's
        age: each end adds the opposite of the other's delta."""
        self._wanted_at = trio.current_time()
        if self._version - self._snapshot_version > FRESH_VERSIONS:
            await self.at_boundary(self._publish)
        if not self._pending:
            return self._snapshot
        mixed = {name: tensor.clone() for name, tensor in self._snapshot.items()}
        for delta in self._pending:
            for name, change in delta.items():
                if name in mixed:
                    mixed[name] += change.to(mixed[name].device)
        return mixed

    async def at_boundary(self, action: Callable[[], T]) -> T:
        """Run `action` in the event loop at the next step boundary, when the model is at rest."""
        send, receive = trio.open_memory_channel[tuple[bool, Any]](1)
        self._at_boundary.append((action, send))
        self._wake.set()
        async with receive:
            ok, value = await receive.receive()
        if not ok:
            raise value
        result: T = value
        return result

    def mix_failed(self) -> None:
        """An exchange failed: a held trainer goes on rather than wait for a mix that may not come."""
        if self.pacer is not None:
            self.pacer.release(self.trainer.step)
            self._wake.set()

    def mix_declined(self) -> None:
        """A neighbour declined an exchange this peer started (it was busy): the exchange is due again now."""
        if self.pacer is not None:
            self.pacer.retry(self.trainer.step)
            self._moved()

    async def exchange_due(self) -> None:
        """Return once the pacer says this peer should start an exchange, or training is done (the pacer's
        steps will not come: the caller paces the rest by the clock)."""
        assert self.pacer is not None
        while not (self.pacer.due(self.trainer.step) or self.training_done):
            await self._stepped.wait()

    def evaluate_soon(self) -> None:
        """Evaluate on the held-out examples at the next boundary, due or not (the finished model)."""
        self._evaluate_now = True
        self._wake.set()

    def _moved(self) -> None:
        """The step or the pacer changed: wake whoever waits for an exchange to fall due."""
        self._stepped.set()
        self._stepped = trio.Event()

    def recovered(self) -> None:
        """The runtime replaced the diverged model (see `load_model_state`): train on."""
        self.trainer.skipped_in_a_row = 0
        self.diverged = trio.Event()
        self._wake.set()

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake.set()

    def statistics(self) -> TrainerStatistics:
        return TrainerStatistics(
            step=self.trainer.step,
            samples=self.trainer.samples,
            loss=self._loss,
            samples_per_second=self._rate,
            evaluation=self._evaluation,
            evaluated_at_step=self._evaluated_at,
            held_seconds=self._held_seconds + self._holding_for(),
        )

    # -- the loop --------------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                self._boundary()
                if self._paused or self.training_done or self.diverged.is_set():
                    if self.training_done:
                        self._reached_budget()
                        if self._personalising and not self.personalised and not self._paused:
                            await self._train_personal_chunk()
                            continue
                        if self._evaluate_now:
                            await self._evaluate()
                            continue  # deltas may have come in meanwhile: back to a boundary first
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                steps = self._chunk_steps()
                if steps == 0:
                    await self._hold()
                    continue
                self._end_hold()
                await self._train_chunk(steps)
                await self._maybe_evaluate()
        finally:
            # Whoever waits on a boundary must not wait forever once the trainer is gone.
            for _, send in self._at_boundary:
                with contextlib.suppress(trio.BrokenResourceError):
                    send.send_nowait((False, RuntimeError("the trainer stopped")))
            self._at_boundary.clear()

    def momentum(self) -> dict[str, torch.Tensor]:
        """The optimiser's momentum, live: an exchange copies it where it mixes it. Read from the event loop
        while the trainer may be stepping, a copy can mix one step's update with the last; the pair's
        parameters stay exact, and momentum needs no exact sum."""
        return self.trainer.momentum()

    def _boundary(self) -> None:
        for momentum in self._pending_momentum:
            self.trainer.add_momentum(momentum)
        self._pending_momentum.clear()
        if self._pending:
            for delta in self._pending:
                self.trainer.apply_delta(delta)
            self._pending.clear()
            self._version += 1
        wanted = self._wanted_at is not None and trio.current_time() - self._wanted_at < WANTED_FOR
        if wanted and self._snapshot_version != self._version:
            self._publish()  # exchanges are asking: keep a copy ready, so they need not wait for a boundary
        actions, self._at_boundary = self._at_boundary, []
        for action, send in actions:
            try:
                outcome: tuple[bool, Any] = (True, action())
            except Exception as exc:  # handed to the waiting caller, which re-raises it
                outcome = (False, exc)
            with contextlib.suppress(trio.BrokenResourceError):  # the caller gave up (its deadline passed)
                send.send_nowait(outcome)

    def _chunk_steps(self) -> int:
        steps = self._steps_per_chunk
        if self.budget is not None:
            steps = min(steps, self.budget - self.trainer.step)
        if self.pacer is None or not self._may_hold():
            return steps
        return self.pacer.chunk(self.trainer.step, steps)

    @property
    def personalised(self) -> bool:
        """Whether the personal fine-tuning ([train] personal_steps) is done (or there is none)."""
        return self.trainer.personal_steps >= self.personal_steps

    def start_personal(self) -> None:
        """The peer has finished (past its budget, done finishing): fine-tune the personal parameters now.
        Exchanges it still answers go on between chunks; they never touch the personal parameters."""
        if not self._personalising and not self.personalised:
            self._personalising = True
            log.info("finished: fine-tuning the personal parameters for %d steps", self.personal_steps)
            self._wake.set()

    async def _train_personal_chunk(self) -> None:
        steps = min(self._steps_per_chunk, self.personal_steps - self.trainer.personal_steps)
        stats = await trio.to_thread.run_sync(
            self.trainer.train_personal, steps, self.personal, self.personal_steps, limiter=self.limiter
        )
        self._version += 1
        if math.isfinite(stats.loss):
            self._loss = stats.loss if self._loss is None else 0.9 * self._loss + 0.1 * stats.loss
        if self.personalised:
            log.info("personal fine-tuning done (%d steps): evaluating the personalised model", self.personal_steps)
            self._evaluate_now = True

    def _reached_budget(self) -> None:
        if not self._budget_logged:
            self._budget_logged = True
            self._end_hold()
            self._moved()  # an exchange loop waiting for the pacer's next step: it will not come
            log.info("training budget of %d steps reached: training stops, mixing goes on", self.budget)

    async def _hold(self) -> None:
        """Wait for a mix (the pacer's lag is used up): until an exchange ends, the model must be looked at,
        or the hold limit passes; then the caller looks again."""
        now = trio.current_time()
        if self._held_since is None:
            self._held_since = now
        remaining = self._held_since + self._hold_limit - now
        if remaining <= 0:
            assert self.pacer is not None
            log.debug("no mix for %.1f s: training on", self._hold_limit)
            self.pacer.release(self.trainer.step)
            self._end_hold()
            return
        self._wake = trio.Event()
        # Woken by a mix, a failure or a boundary action; otherwise looked at again every 0.5 s, in case
        # the last neighbour went away.
        with trio.move_on_after(min(remaining, 0.5)):
            await self._wake.wait()

    def _holding_for(self) -> float:
        return 0.0 if self._held_since is None else trio.current_time() - self._held_since

    def _end_hold(self) -> None:
        self._held_seconds += self._holding_for()
        self._held_since = None

    async def _train_chunk(self, steps: int) -> None:
        skipped = self.trainer.skipped_steps
        started = trio.current_time()
        self.trainer.set_swarm_peers(self.mixed_peers())
        stats = await trio.to_thread.run_sync(self.trainer.train_steps, steps, limiter=self.limiter)
        self._version += 1
        self._moved()
        if self.trainer.skipped_in_a_row >= DIVERGED_AFTER:
            log.error(
                "the model diverged: %d training steps in a row had a non-finite loss (is the learning rate too "
                "high?); training stops until it is replaced by a neighbour's",
                self.trainer.skipped_in_a_row,
            )
            self.diverged.set()
        elif self.trainer.skipped_steps > skipped:
            log.warning(
                "skipped %d training steps whose loss was not finite (is the learning rate too high?)",
                self.trainer.skipped_steps - skipped,
            )
        elapsed = max(trio.current_time() - started, 1e-6)
        if math.isfinite(stats.loss):
            self._loss = stats.loss if self._loss is None else 0.9 * self._loss + 0.1 * stats.loss
        rate = stats.samples / elapsed
        self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
        # Aim each chunk at ~chunk_seconds: short enough to apply deltas promptly, long enough that the
        # thread hand-off costs nothing measurable.
        per_step = elapsed / steps
        self._steps_per_chunk = max(1, min(1000, int(self.chunk_seconds / per_step)))

    async def _maybe_evaluate(self) -> None:
        due = self._evaluated_at is None or self.trainer.step - self._evaluated_at >= self.eval_every
        if due:
            await self._evaluate()

    async def _evaluate(self) -> None:
        self._evaluate_now = False
        if len(self.validation) == 0:
            return
        step = self.trainer.step
        self._evaluation = await trio.to_thread.run_sync(
            self.trainer.evaluate, self.validation, self.eval_samples, limiter=self.limiter
        )
        self._evaluated_at = step

    def _publish(self) -> None:
        self._snapshot = self._clone_params()
        self._snapshot_version = self._version

    def _clone_params(self) -> dict[str, torch.Tensor]:
        # The mixed tensors are looked up once: the model is built once and its parameters are only ever
        # updated in place (a loaded state is copied into them), so walking its modules at every publish
        # found the same tensors again.
        if self._mixed is None:
            self._mixed = mixed_parameters(self.trainer.model, self.personal)
        return {name: t.clone() for name, t in self._mixed.items()}

    # -- whole-state operations (run at a boundary) ----------------------------------------------------

    def capture(self) -> dict[str, Any]:
        """The trainer's full state, copied (for checkpoints)."""
        state: dict[str, Any] = _clone_tree(self.trainer.state_dict())
        return state

    def model_state(self) -> dict[str, torch.Tensor]:
        """The model's state dict (parameters and buffers), copied (for state transfer and export)."""
        return {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}

    def load_model_state(self, state: dict[str, torch.Tensor], step: int) -> None:
        """Replace the model by a neighbour's (a joining peer): pending deltas are void, the optimiser
        restarts, and the step counter takes the donor's so status and catch-up compare like with like."""
        self.trainer.model.load_state_dict(state)
        self.trainer.reset_optimizer()
        self.trainer.step = max(self.trainer.step, step)
        self._pending.clear()
        self._pending_momentum.clear()
        self._version += 1
        self._publish()
        if self.pacer is not None:
            self.pacer.reset(self.trainer.step)
        self._moved()


def _clone_tree(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone_tree(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_clone_tree(v) for v in value)
    return value
