"""What a simulation reports: the `gossipd simulate --json` object and its per-round history."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gossipd.mixing.auto import describe_mode
from gossipd.train.trainer import Evaluation

if TYPE_CHECKING:
    from gossipd.sim.simulator import Simulation


@dataclass(frozen=True)
class RoundRecord:
    round: int
    consensus_distance: float
    exchange_bytes: int
    exchanges: int
    mean_accuracy: float | None
    worst_accuracy: float | None


@dataclass(frozen=True, kw_only=True)
class SimulationReport:
    task: str
    peers: int
    algorithm: str
    settings: dict[str, Any]
    partition: str
    steps: int  # rounds; each peer ran `local_steps` training steps per round
    local_steps: int
    steps_per_exchange: int  # training steps between two exchanges a peer starts; 0: one a round
    mean_accuracy: float
    worst_accuracy: float
    mean_loss: float
    finish_rounds: int  # rounds of mixing alone after the last training round
    stopped_mean_accuracy: float | None  # with finish rounds: the mean accuracy as training stopped
    centralised_accuracy: float | None
    # Held-out loss as training stopped and of the centralised model: a language model is judged by its loss.
    stopped_mean_loss: float | None = None
    centralised_loss: float | None = None
    consensus_distance_start: float
    consensus_distance_end: float
    exchanges: int
    failed_exchanges: int
    bytes_per_exchange: float
    plain_bytes_per_exchange: int
    compression_ratio: float
    total_exchange_bytes: int
    joins: int
    state_transfer_bytes: int
    byzantine: int
    attack: str | None
    clipped_exchanges: int  # exchanges whose delta an honest peer scaled down to its clipping radius
    train_seconds_per_step: float
    mix_seconds_per_exchange: float
    wall_seconds: float
    history: tuple[RoundRecord, ...]
    personal: tuple[str, ...] = ()  # the parameters each peer kept to itself ([gossip] personal)
    personal_steps: int = 0  # each peer's fine-tuning of them after the finish ([train] personal_steps)
    # Classification: each honest peer's accuracy on the held-out examples reweighted to its own label mix
    # (gossipd.sim.own_distribution), their mean and the worst; empty or None otherwise.
    own_accuracies: tuple[float, ...] = ()
    own_accuracy: float | None = None
    worst_own_accuracy: float | None = None
    # With personal parameters: each honest peer's held-out accuracy with its personal part replaced by the
    # peers' average, and their mean.
    averaged_personal_accuracies: tuple[float, ...] = ()
    averaged_personal_accuracy: float | None = None
    # An auto task's exchanges by the mode its edges chose ("rank 1", "full", …), and the modelled link.
    modes: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped_exchanges: int = 0  # exchanges an auto task's peers skipped, saving for a dearer mode
    # Step-paced exchanges not started when due: every free neighbour had mixed with the peer in the interval.
    repeats_skipped: int = 0
    link_bytes_per_second: float | None = None
    timing: str = ""  # what the controller's step and exchange times were: "measured" or the modelled ones
    evaluated_peers: int = 0  # how many honest peers the accuracies are over (all, or `eval_peers`)
    # With unequal paces (SimulationConfig.paces): each peer's, and the rounds it took them all to train
    # `steps` rounds' worth.
    paces: tuple[float, ...] | None = None
    rounds_run: int = 0
    exchange_span: int = 0  # training steps an exchange's delta was held for (SimulationConfig.exchange_span)
    pull_declined: int = 0  # exchanges declined meanwhile: those in flight left too little pull
    # The shares of the way to a neighbour exchanges moved honest peers while training, per training step (a
    # daemon's status `mix_per_step`, gossipd.mixing.mix_rate)
    mix_per_step: float | None = None
    momentum_every: int = 0  # [gossip] momentum_every: whole-model exchanges that also mix momentum (0: none)
    momentum_mixes: int = 0  # exchanges that did

    @classmethod
    def build(
        cls,
        *,
        simulation: Simulation,
        final: Sequence[Evaluation],
        centralised: Evaluation | None,
        distance_start: float,
        distance_end: float,
        plain_bytes: int,
        stopped: Sequence[Evaluation] | None = None,
        history: Sequence[RoundRecord],
        wall_seconds: float,
        own: Sequence[float] = (),
        averaged: Sequence[float] = (),
    ) -> SimulationReport:
        task = simulation.task
        per_exchange = simulation.exchange_bytes / simulation.exchanges if simulation.exchanges else 0.0
        config = task.gossip.config
        return cls(
            task=task.id,
            peers=simulation.config.peers,
            algorithm=task.gossip.algorithm if simulation.config.mix else "local",
            settings=dataclasses.asdict(config)
            if dataclasses.is_dataclass(config) and not isinstance(config, type)
            else {},
            partition=simulation.config.partition or task.data.partition,
            steps=simulation.config.rounds,
            local_steps=task.train.local_steps,
            steps_per_exchange=simulation.steps_per_exchange,
            mean_accuracy=sum(e.accuracy for e in final) / len(final),
            worst_accuracy=min(e.accuracy for e in final),
            mean_loss=sum(e.loss for e in final) / len(final),
            finish_rounds=simulation.config.finish_rounds if stopped is not None else 0,
            stopped_mean_accuracy=sum(e.accuracy for e in stopped) / len(stopped) if stopped else None,
            centralised_accuracy=centralised.accuracy if centralised is not None else None,
            stopped_mean_loss=sum(e.loss for e in stopped) / len(stopped) if stopped else None,
            centralised_loss=centralised.loss if centralised is not None else None,
            consensus_distance_start=distance_start,
            consensus_distance_end=distance_end,
            exchanges=simulation.exchanges,
            failed_exchanges=simulation.failed_exchanges,
            bytes_per_exchange=per_exchange,
            plain_bytes_per_exchange=plain_bytes,
            compression_ratio=plain_bytes / per_exchange if per_exchange else 0.0,
            total_exchange_bytes=simulation.exchange_bytes,
            joins=simulation.joins,
            state_transfer_bytes=simulation.state_bytes,
            byzantine=simulation.config.byzantine,
            attack=simulation.config.attack if simulation.config.byzantine else None,
            clipped_exchanges=simulation.clipped,
            train_seconds_per_step=simulation.train_seconds / max(simulation.train_steps, 1),
            mix_seconds_per_exchange=simulation.mix_seconds / max(simulation.exchanges, 1),
            wall_seconds=wall_seconds,
            history=tuple(history),
            personal=tuple(sorted(simulation.personal.parameters)),
            personal_steps=task.train.personal_steps if simulation.personal.parameters else 0,
            own_accuracies=tuple(own),
            own_accuracy=sum(own) / len(own) if own else None,
            worst_own_accuracy=min(own) if own else None,
            averaged_personal_accuracies=tuple(averaged),
            averaged_personal_accuracy=sum(averaged) / len(averaged) if averaged else None,
            modes={describe_mode(mode): count for mode, count in sorted(simulation.modes.items())},
            skipped_exchanges=simulation.skipped,
            repeats_skipped=simulation.repeats_skipped,
            link_bytes_per_second=simulation.config.link_bytes_per_second,
            timing=simulation.timing_description(),
            evaluated_peers=len(final),
            paces=simulation.config.paces,
            rounds_run=simulation.rounds_run,
            exchange_span=simulation.config.exchange_span,
            pull_declined=simulation.pull_declined,
            mix_per_step=simulation.mix_shares / simulation.honest_steps if simulation.honest_steps else None,
            momentum_every=simulation.task.gossip.momentum_every,
            momentum_mixes=simulation.momentum_mixes,
        )

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["history"] = [dataclasses.asdict(r) for r in self.history]
        return data
