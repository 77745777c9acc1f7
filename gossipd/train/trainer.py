"""Local training on one peer: optimiser steps on its own examples, evaluation, and applying gossip deltas.

The trainer knows nothing of the network: the simulator calls it in a loop, the daemon from a worker thread.
Mixing never races with it: deltas from exchanges are applied between steps (`apply_delta`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from gossipd.data.spec import ArrayDataset, Kind
from gossipd.task.schema import TrainSection
from gossipd.train.adam import Adam
from gossipd.train.functional_optimizer import FunctionalOptimizer
from gossipd.train.privacy import DPState, PrivacySection, check_model, private_gradients, steps_within_budget
from gossipd.train.sgd import Sgd

EVAL_BATCH = 512
log = logging.getLogger("gossipd.trainer")


@dataclass(frozen=True)
class StepStats:
    steps: int
    samples: int
    loss: float  # mean training loss over these steps


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float  # fraction in [0, 1]; next-character accuracy for language models
    samples: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))


class Optimizer(Protocol):
    """What the trainer asks of an optimiser: torch's, or `Sgd` and `Adam` (gossipd.train.functional_optimizer)."""

    param_groups: list[dict[str, Any]]

    def step(self) -> object: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def build_optimizer(section: TrainSection, params: Iterable[nn.Parameter]) -> Optimizer:
    params = list(params)
    if section.optimizer == "sgd":
        # Torch's updates without the ~70 MB of torch._dynamo that any torch.optim optimiser imports.
        return Sgd(
            params,
            lr=section.lr,
            momentum=section.momentum,
            nesterov=section.nesterov and section.momentum > 0,
            weight_decay=section.weight_decay,
        )
    if section.optimizer == "adam":
        return Adam(params, lr=section.lr, weight_decay=section.weight_decay)
    return Adam(params, lr=section.lr, weight_decay=section.weight_decay, decoupled_weight_decay=True)


def learning_rate(section: TrainSection, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to zero at `total_steps`."""
    lr = section.lr
    if section.warmup_steps and step < section.warmup_steps:
        lr *= (step + 1) / section.warmup_steps
    if section.lr_schedule == "cosine" and section.total_steps:
        progress = min(step, section.total_steps) / section.total_steps
        lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr


def loss_and_hits(kind: Kind, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and the number of correct predictions (per token for language models)."""
    if kind == "language":
        logits = logits.reshape(-1, logits.shape[-1])  # (B*T, V)
        y = y.reshape(-1)  # (B*T,)
    loss = F.cross_entropy(logits, y)
    hits = (logits.argmax(dim=-1) == y).sum()
    return loss, hits


class BatchSampler:
    """Seeded shuffling without replacement, epoch after epoch."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        if size < 1:
            raise ValueError("a peer needs at least one training example")
        self.size = size
        self.batch_size = min(batch_size, size)
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(size, generator=self.generator)
        self.position = 0
        self.epoch = 0

    def next(self) -> torch.Tensor:
        if self.position + self.batch_size > self.size:
            self.order = torch.randperm(self.size, generator=self.generator)
            self.position = 0
            self.epoch += 1
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "order": self.order,
            "position": self.position,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["order"].numel()) != self.size:
            raise ValueError("sampler state is for a dataset of another size")
        self.generator.set_state(state["generator"])
        self.order = state["order"]
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])


class Trainer:
    """Owns a model, its optimiser and one peer's training examples."""

    def __init__(
        self,
        model: nn.Module,
        section: TrainSection,
        data: ArrayDataset,
        *,
        kind: Kind,
        device: torch.device,
        seed: int,
        privacy: PrivacySection | None = None,
        personal: frozenset[str] = frozenset(),
    ) -> None:
        if section.lr_schedule == "cosine" and section.total_steps is None:
            raise ValueError("[train] lr_schedule = 'cosine' needs total_steps")
        if privacy is not None:
            check_model(model)
        self.section = section
        self.kind = kind
        self.device = device
        self.model = model.to(device)
        self.data = data.to(device)
        self.sampler = BatchSampler(len(data), section.batch_size, seed)
        # [train] personal_training = "frozen": the personal parameters ([gossip] personal) keep their values
        # through training (they are left out of the optimiser and get no gradient) and change only in
        # train_personal. Their requires_grad stays as it is: it says what is trainable, which decides what
        # the layout and the personal patterns see.
        self.frozen = personal if section.personal_training == "frozen" else frozenset()
        # All the rest, as before (so checkpoints of models with requires_grad-off tensors still fit).
        self.trained = [p for name, p in self.model.named_parameters() if name not in self.frozen]
        # The optimiser numbers its state by position in `trained`: these names say whose state it is.
        self._trained_names = [name for name, _ in self.model.named_parameters() if name not in self.frozen]
        self.optimizer = build_optimizer(section, iter(self.trained))
        self.step = 0
        self.samples = 0
        self.cpu_seconds = 0.0  # CPU time the threads that trained and evaluated spent on it
        self.skipped_steps = 0  # steps whose loss was not finite
        self.skipped_in_a_row = 0  # of those, since the last step taken: many mean the model itself is broken
        self.privacy = privacy
        self.dp = DPState()
        # Poisson sampling: each example joins a step's batch with probability q = batch size / examples.
        self.sample_rate = min(1.0, section.batch_size / max(len(data), 1))
        self.noise = torch.Generator().manual_seed(seed + 1)
        self._steps_left: int | None = None  # private steps left before target_epsilon (computed once)
        self.personal_steps = 0  # steps taken on the personal parameters alone (`train_personal`)
        self._personal_optimizer: Optimizer | None = None

    def set_swarm_peers(self, peers: int) -> None:
        """How many peers' batches (this one's included) mixing averages into this model's steps, for
        `[train] swarm_batch`; 1 when alone or with the setting off."""
        if isinstance(self.optimizer, Adam):
            self.optimizer.swarm_peers = float(max(peers, 1)) if self.section.swarm_batch else 1.0

    @property
    def swarm_peers(self) -> int | None:
        """The count `set_swarm_peers` last gave Adam (1: torch's Adam); None for SGD."""
        return int(self.optimizer.swarm_peers) if isinstance(self.optimizer, Adam) else None

    @property
    def budget_spent(self) -> bool:
        """Whether another private step would exceed `[privacy] target_epsilon`."""
        if self.privacy is None or self.privacy.target_epsilon is None:
            return False
        if self._steps_left is None:
            self._steps_left = steps_within_budget(
                self.dp,
                self.privacy.noise_multiplier,
                self.sample_rate,
                self.privacy.target_epsilon,
                self.privacy.delta,
            )
        return self._steps_left <= 0

    def epsilon(self) -> float | None:
        return None if self.privacy is None else self.dp.epsilon(self.privacy.delta)

    def train_steps(self, steps: int) -> StepStats:
        """Run `steps` optimiser steps; returns their mean loss."""
        started = time.thread_time()
        try:
            if self.privacy is not None:
                return self._private_steps(steps, self.privacy)
            return self._steps(steps)
        finally:
            self.cpu_seconds += time.thread_time() - started

    def _steps(self, steps: int) -> StepStats:
        self.model.train()
        total = 0.0
        samples = 0
        taken = 0
        for _ in range(steps):
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.section, self.step)
            index = self.sampler.next().to(self.device)
            x, y = self.data.inputs(index), self.data.y[index]
            loss, _ = loss_and_hits(self.kind, self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                # A diverging step would put NaN into the model (and, through gossip, be rejected by every
                # neighbour): skip it, as mixed-precision training does, and let mixing pull the model back.
                self.skipped_steps += 1
                self.skipped_in_a_row += 1
                continue
            if self.frozen:
                # Gradients for the trained parameters alone: a frozen head still passes the body's gradient
                # through, but its own is neither computed nor counted in the clipping norm.
                wanted = [p for p in self.trained if p.requires_grad]
                grads = torch.autograd.grad(loss, wanted, allow_unused=True)
                for parameter, grad in zip(wanted, grads, strict=True):
                    parameter.grad = grad
            else:
                loss.backward()  # type: ignore[no-untyped-call]
            if self.section.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.trained, self.section.grad_clip)
            self.optimizer.step()
            self.skipped_in_a_row = 0
            total += value
            taken += 1
            samples += int(index.numel())
            self.step += 1
        self.samples += samples
        return StepStats(steps=taken, samples=samples, loss=total / taken if taken else float("nan"))

    def _private_steps(self, steps: int, privacy: PrivacySection) -> StepStats:
        self.model.train()
        total = 0.0
        samples = taken = 0
        size = len(self.data)
        for _ in range(steps):
            if self.budget_spent:
                break
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.section, self.step)
            chosen = torch.rand(size, generator=self.sampler.generator) < self.sample_rate
            index = torch.nonzero(chosen).reshape(-1).to(self.device)
            x, y = self.data.inputs(index), self.data.y[index]
            grads = private_gradients(
                self.model,
                lambda logits, target: loss_and_hits(self.kind, logits, target)[0],
                x,
                y,
                section=privacy,
                expected_batch=self.sample_rate * size,
                generator=self.noise,
                frozen=self.frozen,
            )
            for name, parameter in self.model.named_parameters():
                if name in grads:
                    parameter.grad = grads[name]
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.dp.record(privacy.noise_multiplier, self.sample_rate)
            if self._steps_left is not None:
                self._steps_left -= 1
            if x.shape[0]:
                with torch.no_grad():
                    total += float(loss_and_hits(self.kind, self.model(x), y)[0])
            taken += 1
            samples += int(index.numel())
            self.step += 1
        self.samples += samples
        return StepStats(steps=taken, samples=samples, loss=total / taken if taken else float("nan"))

    def train_personal(self, steps: int, names: frozenset[str], horizon: int) -> StepStats:
        """Fine-tune only the parameters `names` ([gossip] personal) for `steps` steps on this peer's examples,
        every other parameter held still; `horizon` is the whole fine-tuning's length (a cosine schedule
        decays over it, since the training's own reached zero at total_steps). Gradients are taken for the
        personal parameters alone, so a personal last layer costs a forward pass and its own backward. These
        are plain steps even with [privacy]: nothing they change leaves the peer (the shared parameters,
        which do, are not touched)."""
        started = time.thread_time()
        try:
            return self._personal_steps(steps, names, horizon)
        finally:
            self.cpu_seconds += time.thread_time() - started

    def _personal_steps(self, steps: int, names: frozenset[str], horizon: int) -> StepStats:
        params = [p for name, p in self.model.named_parameters() if name in names]
        if not params:
            raise ValueError("no personal parameters to fine-tune")
        if self._personal_optimizer is None:
            self._personal_optimizer = build_optimizer(self.section, iter(params))
        optimizer = self._personal_optimizer
        schedule = dataclasses.replace(self.section, total_steps=horizon, warmup_steps=0)
        self.model.train()
        total = 0.0
        samples = taken = 0
        for _ in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(schedule, self.personal_steps)
            index = self.sampler.next().to(self.device)
            loss, _ = loss_and_hits(self.kind, self.model(self.data.inputs(index)), self.data.y[index])
            value = float(loss.detach())
            self.personal_steps += 1  # a skipped step counts too: the fine-tuning is a fixed number of steps
            if not math.isfinite(value):
                self.skipped_steps += 1
                continue
            for parameter, grad in zip(params, torch.autograd.grad(loss, params), strict=True):
                parameter.grad = grad
            if self.section.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, self.section.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += value
            taken += 1
            samples += int(index.numel())
        return StepStats(steps=taken, samples=samples, loss=total / taken if taken else float("nan"))

    def reset_optimizer(self) -> None:
        """Forget momentum and adaptive statistics (after the model was replaced by another's)."""
        self.optimizer = build_optimizer(self.section, iter(self.trained))

    @torch.no_grad()
    def apply_delta(self, delta: Mapping[str, torch.Tensor]) -> None:
        """Add a mixing result to the parameters it names."""
        params = dict(self.model.named_parameters())
        for name, change in delta.items():
            params[name].add_(change.to(self.device))

    def momentum(self) -> dict[str, torch.Tensor]:
        """The optimiser's momentum by parameter name, live (SGD's momentum buffer, Adam's first moment):
        what `[gossip] momentum_every` mixes. A parameter without one (no step yet, SGD without momentum,
        a frozen parameter) is absent."""
        state = self.optimizer.state if isinstance(self.optimizer, FunctionalOptimizer) else {}
        found: dict[str, torch.Tensor] = {}
        for index, name in enumerate(self._trained_names):
            values = state.get(index, {})
            buffer = values.get("momentum_buffer", values.get("exp_avg"))
            if buffer is not None:
                found[name] = buffer
        return found

    @torch.no_grad()
    def add_momentum(self, delta: Mapping[str, torch.Tensor]) -> None:
        """Add a mixing result to the momentum of the parameters it names (those that have one)."""
        own = self.momentum()
        for name, change in delta.items():
            if name in own:
                own[name].add_(change.to(own[name].device, own[name].dtype))

    @torch.no_grad()
    def evaluate(self, data: ArrayDataset, max_samples: int | None = None) -> Evaluation:
        """Loss and accuracy on (up to `max_samples` of) `data`; the model returns to training mode."""
        started = time.thread_time()
        try:
            return self._evaluate(data, max_samples)
        finally:
            self.cpu_seconds += time.thread_time() - started

    def _evaluate(self, data: ArrayDataset, max_samples: int | None) -> Evaluation:
        count = len(data) if max_samples is None else min(len(data), max_samples)
        if count == 0:
            return Evaluation(loss=float("nan"), accuracy=float("nan"), samples=0)
        self.model.eval()
        loss_sum = 0.0
        hits = 0
        targets = 0
        for start in range(0, count, EVAL_BATCH):
            x = data.inputs(slice(start, min(start + EVAL_BATCH, count)), self.device)
            y = data.y[start : min(start + EVAL_BATCH, count)].to(self.device)
            loss, correct = loss_and_hits(self.kind, self.model(x), y)
            loss_sum += float(loss) * y.numel()
            hits += int(correct)
            targets += y.numel()
        self.model.train()
        return Evaluation(loss=loss_sum / targets, accuracy=hits / targets, samples=count)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "step": self.step,
            "samples": self.samples,
            "privacy": self.dp.to_state(),
            "personal_steps": self.personal_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict()`. If this peer's data changed since (a different size), the model,
        optimiser and counters still resume and the shuffling starts afresh."""
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError:
            # Its parameter groups differ in size: [train] personal_training changed since (a frozen head is
            # not in the optimiser). The model is still good; only momentum starts over.
            log.warning("the checkpoint's optimiser state is for other parameters: it starts afresh")
        try:
            self.sampler.load_state_dict(state["sampler"])
        except ValueError:
            log.warning("this peer's training data changed since the checkpoint: its shuffling starts afresh")
        self.step = int(state["step"])
        self.samples = int(state["samples"])
        self.dp = DPState.from_state(state.get("privacy", []))
        self.personal_steps = int(state.get("personal_steps", 0))  # absent from checkpoints that predate it
        self._steps_left = None
