"""The daemon's side of an attached script's model (`AttachedTrainer`), against a scripted fake of the script:
what exchanges mix (the snapshot), that every delta reaches the model exactly once, loads, holds, bad input."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import trio
import trio.testing

from gossipd.adapters.shared_memory import SharedState, create_memory
from gossipd.mixing.pacing import StepPacer
from gossipd.services.attached_trainer import AttachedTrainer, Detached
from gossipd.wire import attach as proto

ENTRIES = (
    proto.Entry("w", (3, 2), "float32", True),
    proto.Entry("b", (3,), "float32", True),
    proto.Entry("running", (3,), "float32", False),
)


class FakeScript:
    """The script's end: a model as a dict of tensors, serving the daemon's messages when told to."""

    def __init__(self, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.model = {e.name: torch.randn(e.shape, generator=generator) for e in ENTRIES}
        self.layout = proto.SharedLayout.of(ENTRIES)
        fd = create_memory(self.layout.total_bytes)
        try:
            self.shared = SharedState(fd, self.layout)  # the daemon's mapping
            self.mine = SharedState(fd, self.layout)  # the script's own mapping of the same memory
        finally:
            os.close(fd)
        send, self.inbox = trio.open_memory_channel[dict[str, Any]](64)
        self.host = AttachedTrainer(self.shared, send, step=0, sync_wait=0.5, state_wait=1.0)
        self.steps = 0
        self.pace = proto.ScriptPace()
        self.now = 0.0  # the script's clock for its pacing: still, so it reports only where asked (and once)
        self.applied = 0
        self.trained = {e.name: torch.zeros(e.shape) for e in ENTRIES}  # the sum of every local step's change

    def serve(self) -> list[str]:
        """Handle every message queued for the script, as `Attached._serve` does; their types."""
        seen: list[str] = []
        while True:
            try:
                message = self.inbox.receive_nowait()
            except trio.WouldBlock:
                return seen
            kind = message["t"]
            seen.append(kind)
            if kind == proto.SYNC:
                names = [e.name for e in ENTRIES if message["full"] or e.parameter]
                for name in names:
                    self.mine.out[name].copy_(self.model[name])
                self.host.on_message({"t": proto.SYNCED, "id": message["id"], "n": self.steps})
            elif kind == proto.DELTA:
                for e in ENTRIES:
                    if e.parameter:
                        self.model[e.name] += self.mine.inward[e.name]
                self.applied += 1
                self.host.on_message({"t": proto.APPLIED, "id": message["id"]})
            elif kind == proto.LOAD:
                for e in ENTRIES:
                    self.model[e.name].copy_(self.mine.inward[e.name])
                self.host.on_message({"t": proto.LOADED, "id": message["id"]})
            elif kind == proto.PACE:
                self.pace.on_pace(message)

    def holding(self) -> bool:
        return self.pace.hold_remaining(self.steps, self.now) is not None

    def train(self, scale: float = 0.1, *, serve: bool = True) -> None:
        """One local step, as `Attached.step` takes it: the parameters move (and the move is recorded), the
        step count goes into the shared memory, the daemon's messages are served (unless `serve` is False)
        and the step is reported if the daemon asked for it."""
        for e in ENTRIES:
            if e.parameter:
                change = scale * torch.randn(e.shape)
                self.model[e.name] += change
                self.trained[e.name] += change
        self.steps += 1
        self.mine.publish(self.steps, 32 * self.steps, 1.0)
        if serve:
            self.serve()
        if self.pace.report_due(self.steps, self.now):
            self.pace.reported(self.steps, self.now)
            self.host.on_message({"t": proto.STEP, "n": self.steps, "samples": 32 * self.steps, "loss": 1.0})

    async def serving(self, every: float = 0.01) -> None:
        while True:
            self.serve()
            await trio.sleep(every)

    def params(self) -> dict[str, torch.Tensor]:
        return {e.name: self.model[e.name].clone() for e in ENTRIES if e.parameter}


@pytest.fixture
def script() -> Iterator[FakeScript]:
    fake = FakeScript()
    yield fake
    fake.shared.close()
    fake.mine.close()


async def _start(script: FakeScript) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(script.serving)
        await script.host.sync_all()
        nursery.cancel_scope.cancel()


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


async def test_the_first_sync_fills_the_mirror_with_the_whole_model(script: FakeScript) -> None:
    await _start(script)
    assert _close(script.host.mirror, script.model)


async def test_a_snapshot_is_the_model_with_every_delta_not_yet_in_it(script: FakeScript) -> None:
    await _start(script)
    host = script.host
    d1 = {"w": torch.full((3, 2), 1.0)}
    d2 = {"b": torch.full((3,), 2.0)}
    host.submit(d1)  # sent at once: the script has not applied it yet
    host.submit(d2)  # waits: one delta is outstanding at a time
    script.train(serve=False)
    snapshot: dict[str, torch.Tensor] = {}

    async def take() -> None:
        snapshot.update(await host.snapshot())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await trio.sleep(0.05)  # the sync request is queued behind the delta
        d3 = {"w": torch.full((3, 2), 0.5)}
        host.submit(d3)  # after the sync was asked for: not in the script's answer
        assert script.serve()[:2] == [proto.DELTA, proto.SYNC]
    for _ in range(3):
        script.serve()
    # No step since the snapshot: once every delta arrived (each once), the model is what was mixed.
    expected = script.params()
    assert _close(snapshot, expected)
    assert _close(await host.snapshot(), expected)


async def test_a_script_slow_to_answer_is_mixed_from_the_mirror(script: FakeScript) -> None:
    await _start(script)
    script.train()
    before = {e.name: script.host.mirror[e.name].clone() for e in ENTRIES if e.parameter}
    with trio.fail_after(2):
        snapshot = await script.host.snapshot()  # nobody serves: sync_wait (0.5 s) passes
    assert _close(snapshot, before)
    assert script.serve() == [proto.SYNC]  # the late answer updates the mirror
    assert _close(await script.host.snapshot(), script.params())


async def test_every_delta_reaches_the_model_exactly_once_while_it_trains() -> None:
    """Two attached models mixing pairwise: their sum moves only by what training added, whatever the
    interleaving of steps, syncs and deltas (the pair's sum is conserved as with the daemon's trainer)."""
    a, b = FakeScript(1), FakeScript(2)
    try:
        for side in (a, b):
            await _start(side)
        initial = {k: a.params()[k] + b.params()[k] for k in a.params()}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.serving, 0.003)
            nursery.start_soon(b.serving, 0.007)
            for round_ in range(40):
                a.train()
                if round_ % 3 == 0:
                    b.train()
                xa, xb = await a.host.snapshot(), await b.host.snapshot()
                a.host.submit({k: 0.5 * (xb[k] - xa[k]) for k in xa})
                b.host.submit({k: 0.5 * (xa[k] - xb[k]) for k in xa})
                await trio.sleep(0.002 * (round_ % 4))
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        for side in (a, b):
            side.serve()
            side.serve()
        total = {k: a.params()[k] + b.params()[k] for k in initial}
        trained = {k: a.trained[k] + b.trained[k] for k in initial}
        assert _close(total, {k: initial[k] + trained[k] for k in initial})
        assert a.applied > 5 and b.applied > 5  # deltas were merged while one was outstanding, none lost
    finally:
        for side in (a, b):
            side.shared.close()
            side.mine.close()


async def test_a_load_replaces_the_model_and_voids_deltas_not_sent(script: FakeScript) -> None:
    await _start(script)
    host = script.host
    host.submit({"w": torch.ones(3, 2)})  # outstanding: the script applies it, then the load overrides
    host.submit({"b": torch.ones(3)})  # not sent yet: void after the load
    donor = {e.name: torch.full(e.shape, 7.0) for e in ENTRIES}
    host.load_model_state(donor, step=500)
    for _ in range(3):
        script.serve()
    assert _close(script.model, donor)
    assert host.step == 500  # the donor's step count, as the daemon's trainer takes it
    assert _close(await host.snapshot(), {k: v for k, v in donor.items() if k != "running"})


async def test_step_pacing_holds_the_script_until_a_mix(script: FakeScript) -> None:
    await _start(script)
    host = script.host
    host.pace(StepPacer(2), may_hold=lambda: True, hold_limit=5.0)
    for _ in range(3):
        script.train()
    script.serve()
    assert not script.holding()
    script.train()  # 4 steps (the lag) without a mix
    script.serve()
    assert script.holding()
    host.submit({"w": torch.zeros(3, 2)})
    script.serve()
    assert not script.holding()
    assert host.statistics().held_seconds >= 0.0


async def test_a_hold_ends_after_the_hold_limit_without_a_mix(script: FakeScript) -> None:
    await _start(script)
    host = script.host
    host.pace(StepPacer(1), may_hold=lambda: True, hold_limit=0.3)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        script.train()
        script.train()
        script.serve()
        assert script.holding()
        await trio.sleep(1.0)
        script.serve()
        assert not script.holding()
        assert host.statistics().held_seconds >= 0.3
        nursery.cancel_scope.cancel()


async def test_no_hold_while_there_is_no_one_to_mix_with(script: FakeScript) -> None:
    await _start(script)
    script.host.pace(StepPacer(1), may_hold=lambda: False, hold_limit=5.0)
    for _ in range(10):
        script.train()
    script.serve()
    assert not script.holding()


async def test_exchange_due_follows_the_scripts_steps(script: FakeScript) -> None:
    await _start(script)
    host = script.host
    host.pace(StepPacer(3), may_hold=lambda: False, hold_limit=5.0)
    async with trio.open_nursery() as nursery:
        due = trio.Event()

        async def wait() -> None:
            await host.exchange_due()
            due.set()

        nursery.start_soon(wait)
        script.train()
        script.train()
        await trio.sleep(0.05)
        assert not due.is_set()
        script.train()
        await trio.sleep(0.05)
        assert due.is_set()


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        ({"t": proto.APPLIED, "id": 99}, "nothing of that id"),
        ({"t": proto.SYNCED, "id": 99, "n": 0}, "no such sync"),
        ({"t": proto.STEP, "n": -1, "samples": 0}, "went back"),
        ({"t": proto.STEP, "n": 1, "samples": "many"}, "samples"),
        ({"t": proto.STEP, "n": 1, "samples": 1, "loss": "low"}, "loss"),
    ],
)
async def test_bad_messages_from_the_script_are_refused(
    script: FakeScript, message: dict[str, Any], complaint: str
) -> None:
    await _start(script)
    with pytest.raises(proto.AttachProtocolError, match=complaint):
        script.host.on_message(message)


async def test_after_the_script_detached_nothing_waits_for_it(script: FakeScript) -> None:
    await _start(script)
    script.train()
    script.host.detach()
    with trio.fail_after(1):
        await script.host.snapshot()  # returns the mirror at once
    with pytest.raises(Detached):
        await script.host.at_boundary(script.host.model_state)


async def test_the_budget_ends_pacing_by_steps(script: FakeScript) -> None:
    script.host.budget = 3
    await _start(script)
    for _ in range(3):
        script.train()
    assert script.host.training_done
    stats = script.host.statistics()
    assert stats.step == 3 and stats.samples == 96 and stats.loss == pytest.approx(1.0)
