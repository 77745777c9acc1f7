"""The trainer of an attached task: the model lives in the user's script, which steps it; the daemon mixes it.

This stands where `TrainerService` stands for the daemon's own trainer, with the same contract towards the
exchange service and the task runtime (`gossipd.services.model_host.ModelHost`). Its *boundaries* are the
script's calls to `step()`: at a step the script publishes its step count in the shared memory and serves
what the daemon asked for, in the order asked (protocols/attach-v2.md): write its model into shared memory
(a sync), add a delta, load a whole state. It sends a message about its step only at the steps the daemon
named in its last `pace` (where an exchange falls due, or where it must wait for a mix) and about once a
second: a message per step would wake this event loop a hundred times a second on the core the script
trains on.

The daemon keeps a *mirror*, the script's model as of its last sync. An exchange mixes a snapshot: the mirror
plus every delta not yet in it (sent to the script after the sync was asked for, or not sent yet), so the
delta the exchange produces is computed from the model the script will have once it has applied them. Deltas
are added, never assigned, so the pair's sum is conserved whatever the script did in between, as with the
daemon's own trainer. A script slow to answer a sync (evaluating, saving) is mixed from the mirror as it is,
after `sync_wait` seconds, rather than holding up the neighbour.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import trio

from gossipd.adapters.shared_memory import SharedState
from gossipd.mixing.algorithm import Delta
from gossipd.mixing.pacing import StepPacer
from gossipd.mixing.personal import Personal
from gossipd.services.trainer_service import TrainerStatistics
from gossipd.wire import attach as proto

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger("gossipd.attached")
T = TypeVar("T")
_MAX_PENDING = 64
RATE_SECONDS = 0.5  # the script's rate is measured over at least this long


class Detached(RuntimeError):
    """The script is gone: nothing can be read from or sent to its model."""


class AttachedTrainer:
    def __init__(
        self,
        shared: SharedState,
        outbox: trio.MemorySendChannel[dict[str, Any]],
        *,
        step: int,
        budget: int | None = None,
        sync_wait: float = 2.0,
        state_wait: float = 30.0,
        personal: Personal | None = None,
    ) -> None:
        self.shared = shared
        self.layout = shared.layout
        # [gossip] personal: parameters the script keeps to itself. They are in the shared memory like the
        # rest (the memory is this machine's), but never in a snapshot, so never mixed; no delta touches them
        # (a delta's missing names are zeros), and a load writes back the script's own values (the mirror's).
        self.personal = personal or Personal()
        self.mixed = tuple(e for e in self.layout.parameters if e.name not in self.personal.parameters)
        self.outbox = outbox
        self.budget = budget
        self.sync_wait = sync_wait
        self.state_wait = state_wait
        self._reported_step = step  # the last step the script told of (its hello, or a step message)
        self._offset = 0  # a copied neighbour's step count minus the script's at the copy
        self._reported_samples = 0
        self._loss: float | None = None
        self._rate = 0.0
        self._last_report: tuple[float, int] | None = None
        self._changes = 0  # deltas and loads the script took: with its steps, the model's version
        self._ids = 0
        self.mirror: dict[str, torch.Tensor] = {
            e.name: torch.zeros(e.shape, dtype=_dtype(e)) for e in self.layout.entries
        }
        self._synced_at: int | None = None  # the script's step when it wrote the model the mirror holds
        self._sync: _Sync | None = None  # the sync asked for and not yet answered
        self._frozen: Delta | None = None  # deltas sent before the outstanding sync was asked for
        self._unsynced: Delta | None = None  # deltas sent since the last sync was asked for
        self._pending: list[Delta] = []  # deltas not sent yet (one delta or load is outstanding at a time)
        self._outstanding: int | None = None  # id of the delta or load the script has not acknowledged
        self._load_step: int | None = None  # a whole state (the mirror) waits to be sent
        self.pacer: StepPacer | None = None
        self._may_hold: Callable[[], bool] = lambda: False
        self._hold_limit = 0.0
        # What the script knows before any pace message: nothing to report, nowhere to wait.
        self._pace_sent: dict[str, Any] = {"t": proto.PACE, "report": None, "until": None, "wait": 0.0}
        self._holding_since: float | None = None
        self._held_seconds = 0.0
        self._paused = False
        self._stepped = trio.Event()
        self._wake = trio.Event()
        self._budget_logged = False
        self.closed = False
        self.diverged = trio.Event()  # never set: a script's model is its own to keep finite

    # -- what the script tells -------------------------------------------------------------------------

    def on_message(self, message: dict[str, Any]) -> None:
        """A message from the script (already checked for its type); AttachProtocolError if malformed."""
        kind = message["t"]
        if kind == proto.STEP:
            self._on_step(message)
        elif kind == proto.SYNCED:
            self._on_synced(proto.field(message, "id", int), proto.field(message, "n", int))
        elif kind in (proto.APPLIED, proto.LOADED):
            ident = proto.field(message, "id", int)
            if ident != self._outstanding:
                raise proto.AttachProtocolError(f"{kind} {ident}: nothing of that id was sent")
            self._outstanding = None
            self._changes += 1
            self._pump()

    def _on_step(self, message: dict[str, Any]) -> None:
        step = proto.field(message, "n", int)
        samples = proto.field(message, "samples", int)
        loss = proto.field(message, "loss", (int, float), optional=True)
        if step < self._reported_step or samples < 0:
            raise proto.AttachProtocolError(f"step: the step count went back from {self._reported_step} to {step}")
        now = trio.current_time()
        last = self._last_report
        if last is None or samples < last[1]:
            self._last_report = (now, samples)
        elif now - last[0] >= RATE_SECONDS:  # reports come at uneven steps: measure over spans of time
            rate = (samples - last[1]) / (now - last[0])
            self._rate = rate if self._rate == 0 else 0.7 * self._rate + 0.3 * rate
            self._last_report = (now, samples)
        if loss is not None and math.isfinite(loss):
            self._loss = float(loss) if self._loss is None else 0.7 * self._loss + 0.3 * float(loss)
        self._reported_step = step
        self._reported_samples = samples
        self._moved()
        if self.training_done:
            self._reached_budget()
        self._update_pace()

    def _on_synced(self, ident: int, step: int) -> None:
        sync = self._sync
        if sync is None or ident != sync.ident:
            raise proto.AttachProtocolError(f"synced {ident}: no such sync was asked for")
        self._sync = None
        if not sync.void:
            names = self.layout.entries if sync.full else self.layout.parameters
            for entry in names:
                self.mirror[entry.name].copy_(self.shared.out[entry.name])
            self._synced_at = step
            self._frozen = None
        sync.done.set()

    # -- the ModelHost contract ------------------------------------------------------------------------

    @property
    def script_step(self) -> int:
        """The script's step count, as it published it last (it may have told of none of those steps)."""
        return max(self._reported_step, self.shared.counters()[0])

    @property
    def samples(self) -> int:
        return max(self._reported_samples, self.shared.counters()[1])

    @property
    def step(self) -> int:
        return self.script_step + self._offset

    @property
    def version(self) -> int:
        return self.script_step + self._changes

    @property
    def training_done(self) -> bool:
        return self.budget is not None and self.step >= self.budget

    def pace(self, pacer: StepPacer, *, may_hold: Callable[[], bool], hold_limit: float) -> None:
        pacer.reset(self.step)
        self.pacer = pacer
        self._may_hold = may_hold
        self._hold_limit = hold_limit
        self._update_pace()

    def submit(self, delta: Delta, momentum: Delta | None = None) -> None:
        # `momentum` is dropped: the script's optimiser is its own, out of this daemon's reach.
        if self.pacer is not None:
            self.pacer.mixed(self.step)
        if len(self._pending) >= _MAX_PENDING:
            merged = self._pending.pop(0)
            _add_into(merged, delta)
            delta = merged
        self._pending.append(delta)
        self._pump()
        self._update_pace()

    def momentum(self) -> dict[str, torch.Tensor]:
        """None to offer: the script keeps its optimiser (its exchanges send zeros, which no end mixes)."""
        return {}

    async def snapshot(self) -> dict[str, torch.Tensor]:
        if not self._fresh():
            await self._synced(full=False, wait=self.sync_wait)
        params = {e.name: self.mirror[e.name].clone() for e in self.mixed}
        for extra in (self._frozen, self._unsynced, *self._pending):
            if extra is not None:
                _add_into(params, extra)
        return params

    async def at_boundary(self, action: Callable[[], T]) -> T:
        """Run `action` on the mirror once the script has synced its whole model (or `state_wait` passed)."""
        self._check_attached()
        await self._synced(full=True, wait=self.state_wait)
        self._check_attached()
        return action()

    def model_state(self) -> dict[str, torch.Tensor]:
        state = {name: tensor.clone() for name, tensor in self.mirror.items()}
        for extra in (self._frozen, self._unsynced, *self._pending):
            if extra is not None:
                _add_into(state, extra)
        return state

    def load_model_state(self, state: dict[str, torch.Tensor], step: int) -> None:
        """A neighbour's model replaces the script's (a joining script): deltas not yet sent are void."""
        for name, tensor in state.items():
            self.mirror[name].copy_(tensor)
        if self._sync is not None:
            self._sync.void = True  # its answer is the script's model from before the load
        self._frozen = self._unsynced = None
        self._pending.clear()
        self._offset = max(0, step - self.script_step)
        self._load_step = step
        self._changes += 1
        self._synced_at = self.script_step  # the mirror is what the script's model is about to be
        if self.pacer is not None:
            self.pacer.reset(self.step)
        self._pump()
        self._moved()
        self._update_pace()

    def capture(self) -> dict[str, Any]:
        raise RuntimeError("an attached task's model and optimiser are the script's to checkpoint")

    def epsilon(self) -> float | None:
        return None

    def training_cpu_seconds(self) -> float:
        return 0.0  # the script trains in its own process

    def statistics(self) -> TrainerStatistics:
        loss = self._loss if self._loss is not None else self.shared.counters()[2]
        return TrainerStatistics(
            step=self.step,
            samples=self.samples,
            loss=loss,
            samples_per_second=self._rate,
            evaluation=None,
            evaluated_at_step=None,
            held_seconds=self._held_seconds + self._holding_for(),
        )

    async def exchange_due(self) -> None:
        assert self.pacer is not None
        while not (self.pacer.due(self.step) or self.training_done):
            self._update_pace()  # the script reports at the step the exchange falls due
            await self._stepped.wait()

    def mix_failed(self) -> None:
        if self.pacer is not None:
            self.pacer.release(self.step)
            self._update_pace()

    def mix_declined(self) -> None:
        if self.pacer is not None:
            self.pacer.retry(self.step)
            self._moved()

    def evaluate_soon(self) -> None:
        """The script evaluates its own model: nothing to do."""

    def recovered(self) -> None:
        self.diverged = trio.Event()

    def pause(self) -> None:
        self._paused = True
        self._update_pace()

    def resume(self) -> None:
        self._paused = False
        self._update_pace()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Release a hold the mixes have not ended within the hold limit (as the daemon's trainer does), and
        follow what the script's steps do not announce (a neighbour to wait for appeared or went)."""
        task_status.started()
        while True:
            self._wake = trio.Event()
            since = self._holding_since
            timeout = 0.5 if since is None else min(0.5, max(0.0, since + self._hold_limit - trio.current_time()))
            with trio.move_on_after(timeout):
                await self._wake.wait()
            self._update_pace()
            since = self._holding_since
            if since is not None and not self._paused and trio.current_time() - since >= self._hold_limit:
                if self.pacer is not None:
                    log.debug("no mix for %.1f s: the script trains on", self._hold_limit)
                    self.pacer.release(self.step)
                self._update_pace()

    async def sync_all(self) -> None:
        """Wait for the script's whole model (the first thing a session does: the mirror starts empty)."""
        await self._synced(full=True, wait=math.inf)
        self._check_attached()

    def detach(self) -> None:
        """The script went away: wake whoever waits for it."""
        self.closed = True
        if self._sync is not None:
            self._sync.done.set()
        self._moved()

    # -- internals -------------------------------------------------------------------------------------

    def _fresh(self) -> bool:
        """Whether the mirror holds the script's model as of its current step (deltas aside)."""
        return self._synced_at is not None and self._synced_at >= self.script_step

    def _check_attached(self) -> None:
        if self.closed:
            raise Detached("the script detached")

    def _send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.outbox.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("the script does not read its messages: detaching it")
            self.detach()

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    async def _synced(self, *, full: bool, wait: float) -> None:
        """Ask the script for its model (unless a sync that will do is outstanding) and wait at most `wait`."""
        with trio.move_on_after(wait):
            while not self.closed:
                sync = self._sync
                if sync is None:
                    if self._fresh() and not full:
                        return
                    sync = self._sync = _Sync(self._next_id(), full)
                    self._frozen = _sum(self._frozen, self._unsynced)
                    self._unsynced = None
                    self._send({"t": proto.SYNC, "id": sync.ident, "full": full})
                await sync.done.wait()
                if sync.full or not full:
                    return

    def _pump(self) -> None:
        """Send the next load or delta if the script has acknowledged the last one."""
        if self._outstanding is not None or self.closed:
            return
        inward = self.shared.inward
        if self._load_step is not None:
            for name, tensor in self.mirror.items():
                inward[name].copy_(tensor)
            self._outstanding = self._next_id()
            self._send({"t": proto.LOAD, "id": self._outstanding, "step": self._load_step})
            self._load_step = None
            return
        if not self._pending:
            return
        total = self._pending[0]
        for delta in self._pending[1:]:
            _add_into(total, delta)
        self._pending.clear()
        for entry in self.layout.parameters:
            change = total.get(entry.name)
            if change is None:
                inward[entry.name].zero_()
            else:
                inward[entry.name].copy_(change)
        self._unsynced = _sum(self._unsynced, total)
        self._outstanding = self._next_id()
        self._send({"t": proto.DELTA, "id": self._outstanding})

    def _update_pace(self) -> None:
        """Tell the script (when it changed) at which step to report, and at which to wait for a mix.

        It reports where the next exchange falls due, where the training budget ends and where it must
        wait; it waits once `lag` steps passed since the last mix it took part in, while there is a
        neighbour to mix with (as the daemon's own trainer does), or at once while the task is paused."""
        pacer, step = self.pacer, self.step
        marks: list[int] = []
        hold: int | None = None
        if self._paused:
            hold = step
        elif pacer is not None and not self.training_done:
            marks.append(pacer.next_start)
            if self._may_hold():
                hold = pacer.last_mix + pacer.lag
        if self.budget is not None and not self.training_done:
            marks.append(self.budget)
        if hold is not None:
            marks.append(hold)
        upcoming = [mark for mark in marks if mark > step]
        holding = hold is not None and step >= hold
        if holding and self._holding_since is None:
            self._holding_since = trio.current_time()
            self._wake.set()  # the hold limit's clock starts
        elif not holding and self._holding_since is not None:
            self._held_seconds += self._holding_for()
            self._holding_since = None
        message = {
            "t": proto.PACE,
            "report": None if not upcoming else self._script_step_of(min(upcoming)),
            "until": None if hold is None else self._script_step_of(hold),
            "wait": 3600.0 if self._paused else self._hold_limit,
        }
        if message != self._pace_sent:
            self._pace_sent = message
            self._send(message)

    def _script_step_of(self, step: int) -> int:
        return max(0, step - self._offset)

    def _holding_for(self) -> float:
        return 0.0 if self._holding_since is None else trio.current_time() - self._holding_since

    def _reached_budget(self) -> None:
        if not self._budget_logged:
            self._budget_logged = True
            log.info("training budget of %d steps reached: the script's steps no longer pace mixing", self.budget)

    def _moved(self) -> None:
        self._stepped.set()
        self._stepped = trio.Event()


class _Sync:
    def __init__(self, ident: int, full: bool) -> None:
        self.ident = ident
        self.full = full
        self.void = False
        self.done = trio.Event()


def _dtype(entry: proto.Entry) -> torch.dtype:
    dtype: torch.dtype = getattr(torch, entry.shared_dtype)
    return dtype


def _add_into(target: dict[str, torch.Tensor], delta: Delta) -> None:
    for name, change in delta.items():
        if name in target:
            target[name] = target[name] + change.to(target[name].dtype)
        else:
            target[name] = change.clone()


def _sum(a: Delta | None, b: Delta | None) -> Delta | None:
    if a is None:
        return None if b is None else dict(b)
    if b is None:
        return a
    merged = dict(a)
    _add_into(merged, b)
    return merged
