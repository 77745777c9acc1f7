"""What the exchange service and the task runtime need from whatever holds a task's model: the daemon's own
trainer (`TrainerService`) or a script's model attached over the attach socket (`AttachedTrainer`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
import trio

from gossipd.mixing.algorithm import Delta
from gossipd.mixing.pacing import StepPacer

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from gossipd.services.trainer_service import TrainerStatistics

T = TypeVar("T")


class ModelHost(Protocol):
    budget: int | None
    pacer: StepPacer | None
    diverged: trio.Event

    @property
    def step(self) -> int:
        """Training steps taken (a copied neighbour's count, if the model was replaced by its)."""
        ...

    @property
    def version(self) -> int:
        """Changes whenever the model does."""
        ...

    @property
    def training_done(self) -> bool: ...

    def pace(self, pacer: StepPacer, *, may_hold: Callable[[], bool], hold_limit: float) -> None: ...

    def submit(self, delta: Delta, momentum: Delta | None = None) -> None:
        """Add an exchange's delta to the model at its next step boundary (and `momentum`, where the
        exchange mixed it, to the optimiser's momentum, if this host keeps one)."""
        ...

    def momentum(self) -> dict[str, torch.Tensor]:
        """The optimiser's momentum by parameter name, for an exchange that mixes it (empty where this host
        keeps none); the caller copies it."""
        ...

    async def snapshot(self) -> dict[str, torch.Tensor]:
        """The mixed parameters, with every delta submitted so far, as a copy nothing will modify."""
        ...

    async def at_boundary(self, action: Callable[[], T]) -> T: ...

    def model_state(self) -> dict[str, torch.Tensor]: ...

    def load_model_state(self, state: dict[str, torch.Tensor], step: int) -> None: ...

    def capture(self) -> dict[str, Any]: ...

    def epsilon(self) -> float | None: ...

    def training_cpu_seconds(self) -> float:
        """CPU seconds this process spent training and evaluating (the rest of its CPU time is mixing's)."""
        ...

    def statistics(self) -> TrainerStatistics: ...

    async def exchange_due(self) -> None: ...

    def mix_failed(self) -> None: ...

    def mix_declined(self) -> None: ...

    def evaluate_soon(self) -> None: ...

    def recovered(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    async def run(self, *, task_status: TaskStatus[None] = ...) -> None: ...
