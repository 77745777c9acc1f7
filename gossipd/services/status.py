"""Frozen snapshots of what a daemon is doing, behind `gossipd status`, the control API and /metrics.

Services keep their own mutable counters and hand out these records on request (trio's `statistics()`
style), so readers never see half-updated state and the control API never reaches into a service.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from gossipd.services.network import RelayStatus


class TaskState(enum.StrEnum):
    LOADING = "loading"  # reading data, building the model
    WAITING = "waiting"  # fewer live neighbours than [train] min_peers: neither training nor mixing
    JOINING = "joining"  # looking for a neighbour to copy a full model from
    TRAINING = "training"  # training and mixing
    FINISHING = "finishing"  # past the training budget ([train] total_steps): mixing until the copies agree,
    # then fine-tuning the personal parameters ([train] personal_steps)
    FINISHED = "finished"  # done finishing: answers neighbours' exchanges, starts none
    STOPPING = "stopping"  # leaving: finishing exchanges in flight, writing a checkpoint
    FAILED = "failed"  # could not start (bad data, no device); `error` says why


@dataclass(frozen=True, kw_only=True)
class SharingStatus:
    """What the daemon offers peers of its tasks (protocols/tasks-v1.md)."""

    offered: tuple[str, ...]  # ids of the open tasks it advertises now
    files_served: int  # task files handed to peers (`gossipd join --from`)
    rejections: dict[str, int]  # requests and adverts refused, by reason


@dataclass(frozen=True, kw_only=True)
class PeerStatus:
    """A peer as one task of this daemon knows it."""

    peer_id: str
    addresses: tuple[str, ...]
    sources: tuple[str, ...]  # how it was found: bootstrap, dht, pubsub, mdns, inbound
    first_seen: float  # unix time
    last_heard: float | None  # last heartbeat or exchange, unix time
    in_view: bool  # one of the few neighbours this peer starts exchanges with
    step: int | None  # its training step, from its heartbeats
    loss: float | None
    exchanges: int  # completed exchanges with it
    failures: int  # failed exchanges with it
    last_exchange: float | None
    distance: float | None  # estimated ‖x_peer − x_self‖ at the last exchange
    backoff_until: float | None  # this end starts none with it before this time (repeated failures or rejections)
    reached: str | None = None  # how it is connected now: direct, relayed, hole-punched; None: not connected
    past_budget: bool = False  # known past its own training budget (its heartbeats, or its refusal, say so)


@dataclass(frozen=True, kw_only=True)
class ContributionStatus:
    """A neighbour's line of the task's contribution ledger (gossipd.peering.ledger), departed ones included.
    `declared_*` are what its heartbeats say, unchecked; the rest this daemon measured."""

    peer_id: str
    live: bool  # a live member of the task now
    first_seen: float  # unix time
    last_seen: float
    seen_seconds: float  # time it was heard from, gaps longer than the liveness window left out
    started: int  # exchanges it started with this peer that completed
    answered: int  # exchanges this peer started that it answered and completed
    failed: int
    bytes_sent: int  # to it, exchanges and model copies
    bytes_received: int
    state_bytes_sent: int  # of which full models it copied from this peer
    state_bytes_received: int
    rejections: dict[str, int]  # its messages this peer rejected, by reason
    declared_step: int | None
    declared_dataset: int | None


@dataclass(frozen=True, kw_only=True)
class LinkStatus:
    """An edge of an auto task ([gossip] algorithm = "auto"): what its exchanges send now, and why
    (gossipd.mixing.link_budget). Only edges with a completed exchange; the measurements are this peer's."""

    peer_id: str
    mode: str  # of the edge's latest exchange, whichever end started it: "rank 4", "full"
    reason: str  # why this peer's own exchanges on the edge use the mode they do
    exchanges: int  # completed exchanges on the edge, started by either end
    exchanges_per_second: float | None  # since the first; None before the second
    exchange_ms: float | None  # running mean duration of an exchange in `mode`, first message to last
    budget_ms: float | None  # what an exchange could take at the latest one
    bytes_per_second: float | None  # both directions over an exchange's wall time, running mean
    # Running mean share of the two models' squared difference an exchange in `mode` captured (1 for whole
    # models; estimated from a sample of coordinates for low ranks, gossipd.mixing.probe); None: not known.
    captured: float | None = None


@dataclass(frozen=True, kw_only=True)
class TaskStatus:
    id: str
    hash: str  # hex of the 16-byte task hash peers must share
    state: TaskState
    error: str | None
    algorithm: str
    settings: dict[str, Any]
    device: str
    step: int
    samples: int
    samples_per_second: float
    loss: float | None  # recent mean training loss
    accuracy: float | None  # on the held-out examples, at the last evaluation
    validation_loss: float | None
    evaluated_at_step: int | None
    exchanges: int
    failed_exchanges: int
    exchanges_in_flight: int
    bytes_sent: int
    bytes_received: int
    compression_ratio: float | None  # full-model bytes an exchange would take, over the bytes it took
    consensus_distance: float | None  # recent mean of the estimated distances to neighbours
    state_transfers: int  # full models copied from a neighbour
    last_checkpoint: float | None
    rejections: dict[str, int] = field(default_factory=dict)  # rejected messages by reason
    clipped_exchanges: int = 0  # exchanges whose move was scaled down to the clipping radius ([robust])
    momentum_mixes: int = 0  # exchanges that mixed the optimisers' momentum too ([gossip] momentum_every)
    repeats_skipped: int = 0  # due exchanges not started: every free neighbour had just mixed with this peer
    suspects: int = 0  # neighbours backed off for being clipped exchange after exchange
    # exchanges not started, or answered busy, because those in flight left too little pull (pull_budget)
    pull_declined: int = 0
    # The shares of the way to their neighbours this peer's exchanges moved it per training step, over its last
    # 200 steps (gossipd.mixing.mix_rate): how much mixing keeps up with local drift. None: none landed yet
    mix_per_step: float | None = None
    privacy_epsilon: float | None = None  # ε spent so far by DP-SGD on this peer's examples ([privacy])
    privacy_delta: float | None = None  # the δ that ε is reported at
    mix_wait_seconds: float = 0.0  # time the trainer waited for a mix ([gossip] steps_per_exchange)
    # [train] swarm_batch: the peers (this one and its live view neighbours) Adam's last chunk counted; 1: torch's
    # Adam; None: the optimiser is SGD, or an attached script's own
    swarm_batch_peers: int | None = None
    divergences: int = 0  # times the model blew up and was replaced by a neighbour's
    personal: tuple[str, ...] = ()  # parameters [gossip] personal keeps on this peer: never mixed, never sent
    personal_values: int = 0  # how many values those parameters hold
    personal_steps: int = 0  # the personal fine-tuning once finished ([train] personal_steps); 0: none
    personal_steps_done: int = 0  # of those, taken (the task stays `finishing` until all are)
    total_steps: int | None = None  # the training budget ([train] total_steps); None: no end
    finish_exchanges: int = 0  # exchanges with finished neighbours since the budget was reached
    attached_pid: int | None = None  # the script whose model this task mixes (`gossipd.attach`); None: gossipd's
    steps_per_exchange: int | None = None  # a step-paced task's pace now ([gossip] cpu_budget may stretch it)
    mixing_cpu: float | None = None  # share of a core spent on anything but training lately (mixing, mostly)
    mixing_cpu_allowed: float | None = None  # what the CPU budget allowed it: the budget, or more when cores idle
    min_peers: int = 0  # [train] min_peers: live neighbours needed to train; 0: none
    live_peers: int = 0  # live neighbours now
    # Of those, known past the training budget ([train] total_steps): a peer still training mixes only with the
    # others, and one past it only with these (gossipd.services.exchange).
    finished_neighbours: int = 0
    start_wait: float | None = None  # while `waiting` for neighbours before the first step, its limit in seconds
    start: str | None = None  # how that wait ended: "join", "together" or "alone"; None: there was none
    weigh_by: str = "none"  # [gossip] weigh_by
    examples: int | None = None  # training examples this peer declares to its neighbours (None: not known)
    peers: tuple[PeerStatus, ...] = ()
    ledger: tuple[ContributionStatus, ...] = ()  # what each neighbour contributed, departed ones included
    links: tuple[LinkStatus, ...] = ()  # an auto task's edges, by peer id
    exchange_budget_ms: float | None = None  # an auto task's time an exchange may take now; None: not auto


@dataclass(frozen=True, kw_only=True)
class DaemonStatus:
    peer_id: str
    addresses: tuple[str, ...]
    version: str
    uptime_s: float
    state_dir: str
    socket: str
    tasks: tuple[TaskStatus, ...]
    relay: RelayStatus | None = None  # relays this daemon uses, and what it offers as one (`--relay`)
    sharing: SharingStatus | None = None  # its open tasks offered to peers; None before the network runs


def to_json(record: Any) -> Any:
    """A snapshot as plain JSON-able data (enums as their values)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_json(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, enum.Enum):
        return record.value
    if isinstance(record, tuple | list):
        return [to_json(item) for item in record]
    if isinstance(record, dict):
        return {str(k): to_json(v) for k, v in record.items()}
    return record
