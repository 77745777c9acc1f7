"""The trainer service's snapshots for exchanges: served at once from the copy published at the latest step
boundary (plus the deltas not yet added), not after the chunk in progress; waited for when that copy is
stale."""

from __future__ import annotations

import threading
from typing import Any

import torch
import trio

from gossipd.data.spec import ArrayDataset, InputSpec
from gossipd.mixing.layout import mixed_parameters
from gossipd.models.logistic import LogisticConfig
from gossipd.models.registry import build_model
from gossipd.services.trainer_service import TrainerService
from gossipd.task.schema import ModelSection, TrainSection
from gossipd.train.adam import Adam
from gossipd.train.trainer import Trainer

SPEC = InputSpec(kind="classification", input_shape=(6,), num_classes=3)
CPU = torch.device("cpu")


def dataset(n: int = 32) -> ArrayDataset:
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(0))
    return ArrayDataset(x, (x[:, 0] > 0).long())


class GatedTrainer(Trainer):
    """Each chunk of steps waits until the test opens the gate: a chunk in progress for as long as needed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Semaphore(0)
        self.chunks = 0

    def train_steps(self, steps: int) -> Any:
        self.gate.acquire(timeout=30)
        self.chunks += 1
        return super().train_steps(steps)


def service() -> tuple[TrainerService, GatedTrainer]:
    model = build_model(ModelSection(name="logistic", options=LogisticConfig()), SPEC, 0)
    trainer = GatedTrainer(
        model, TrainSection(lr=0.1), dataset(), kind="classification", device=torch.device("cpu"), seed=0
    )
    return TrainerService(trainer, dataset(0), eval_every=10**9, eval_samples=1), trainer


async def wait_for(condition: Any) -> None:
    # The trainer's chunks run in a worker thread, which signals nothing the event loop could wait on.
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.005)


async def test_a_snapshot_is_served_during_a_chunk_and_carries_the_deltas_not_yet_added() -> None:
    trainer_service, trainer = service()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trainer_service.run)
        await trio.sleep(0.05)  # the first chunk is in progress, held at its gate
        before = {k: v.clone() for k, v in mixed_parameters(trainer.model).items()}
        with trio.fail_after(1):
            first = await trainer_service.snapshot()
        assert all(torch.equal(first[k], before[k]) for k in before)
        delta = {k: torch.ones_like(v) for k, v in before.items()}
        trainer_service.submit(delta)
        with trio.fail_after(1):
            mixed = await trainer_service.snapshot()  # still during the same chunk
        assert trainer.chunks == 0
        assert all(torch.equal(mixed[k], before[k] + 1) for k in before)
        assert all(torch.equal(first[k], before[k]) for k in before)  # an earlier copy is left alone
        # The chunk ends; the boundary adds the delta and publishes a copy of the model as it then is.
        trainer.gate.release()
        await wait_for(lambda: trainer.chunks == 1 and not trainer_service._pending)
        await trio.sleep(0.05)
        now = {k: v.clone() for k, v in mixed_parameters(trainer.model).items()}
        with trio.fail_after(1):
            after = await trainer_service.snapshot()
        assert all(torch.equal(after[k], now[k]) for k in now)
        assert not all(torch.equal(now[k], before[k] + 1) for k in now)  # a step moved it past the delta
        for _ in range(20):
            trainer.gate.release()
        nursery.cancel_scope.cancel()


async def test_a_stale_copy_is_not_served_the_next_boundary_publishes_one() -> None:
    trainer_service, trainer = service()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trainer_service.run)
        # No exchange has asked: chunks go by without a copy being published.
        for _ in range(4):
            trainer.gate.release()
        await wait_for(lambda: trainer_service.version == 4)
        await trio.sleep(0.05)  # the fifth chunk waits at its gate
        asked = trio.Event()
        result: dict[str, dict[str, torch.Tensor]] = {}

        async def ask() -> None:
            result["copy"] = await trainer_service.snapshot()
            asked.set()

        nursery.start_soon(ask)
        await trio.sleep(0.1)
        assert not asked.is_set()  # four chunks old: it waits for the boundary
        trainer.gate.release()
        with trio.fail_after(5):
            await asked.wait()
        assert trainer.chunks == 5
        for _ in range(20):
            trainer.gate.release()
        nursery.cancel_scope.cancel()


async def test_each_chunk_counts_the_peers_mixing_averages_in() -> None:
    """[train] swarm_batch: the service asks how many peers mix into the model (itself and its live view
    neighbours) before every chunk, so an Adam step follows neighbours coming and going."""
    model = build_model(ModelSection(name="logistic", options=LogisticConfig()), SPEC, 0)
    trainer = GatedTrainer(
        model,
        TrainSection(optimizer="adam", lr=0.01),
        dataset(),
        kind="classification",
        device=torch.device("cpu"),
        seed=0,
    )
    counts = iter([3, 5])
    trainer_service = TrainerService(
        trainer, dataset(0), eval_every=10**9, eval_samples=1, mixed_peers=lambda: next(counts, 1)
    )
    assert isinstance(trainer.optimizer, Adam)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trainer_service.run)
        await wait_for(lambda: trainer.optimizer.swarm_peers == 3.0)
        trainer.gate.release()
        await wait_for(lambda: trainer.optimizer.swarm_peers == 5.0)
        trainer.gate.release()
        await wait_for(lambda: trainer.optimizer.swarm_peers == 1.0)
        for _ in range(10):  # no chunk left waiting at the gate once cancelled
            trainer.gate.release()
        nursery.cancel_scope.cancel()


async def test_a_momentum_mix_is_added_to_the_optimisers_momentum_at_the_next_boundary() -> None:
    trainer_service, trainer = service()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trainer_service.run)
        await trio.sleep(0.05)  # the first chunk is in progress, held at its gate
        trainer_service.pause()  # after it, the model and its momentum stay put
        trainer.gate.release()
        await wait_for(lambda: trainer.chunks == 1)
        await wait_for(lambda: bool(trainer_service.momentum()))
        await trio.sleep(0.05)
        before = {name: value.clone() for name, value in trainer_service.momentum().items()}
        zero = {name: torch.zeros_like(value) for name, value in before.items()}
        trainer_service.submit(zero, {"linear.weight": torch.ones_like(before["linear.weight"])})
        await wait_for(lambda: not trainer_service._pending_momentum)
        after = trainer_service.momentum()
        assert torch.equal(after["linear.weight"], before["linear.weight"] + 1)
        assert torch.equal(after["linear.bias"], before["linear.bias"])
        nursery.cancel_scope.cancel()
