"""The sections of a task file, one frozen dataclass each.

Components receive only their own section: the model builder a `ModelSection`, the trainer a `TrainSection`,
the mixer a `GossipSection`. Sections whose keys depend on a discriminant (`[data] format`, `[model] name`,
`[gossip] algorithm`) hold the chosen variant's own dataclass, defined beside the code that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gossipd.task.fields import bounds


@dataclass(frozen=True, kw_only=True)
class TaskSection:
    """`[task]`: what the swarm is training, and the seed every peer initialises the model from."""

    id: str
    description: str = ""
    seed: int = field(default=0, metadata=bounds(min=0))


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """`[data]`: where a peer's examples come from and how a simulated swarm splits them.

    `source` is the format's own settings (an `IdxSource`, `CsvSource`, ...); `base_dir` is the folder that
    relative paths are read from: `root` resolved against the task file's folder, or `--data`.
    """

    format: str
    root: str = "."
    validation_fraction: float = field(default=0.1, metadata=bounds(min=0.0, max=0.9))
    partition: str = "iid"
    source: Any = None
    base_dir: Path = Path(".")


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    """`[model]`: a built-in architecture by name with its options, or `name = "custom"`."""

    name: str
    options: Any = None


@dataclass(frozen=True, kw_only=True)
class TrainSection:
    """`[train]`: local optimisation on each peer."""

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = field(default=0.05, metadata=bounds(min=0.0, exclusive_min=True))
    momentum: float = field(default=0.9, metadata=bounds(min=0.0, max=0.999))
    nesterov: bool = False
    weight_decay: float = field(default=0.0, metadata=bounds(min=0.0))
    batch_size: int = field(default=32, metadata=bounds(min=1, max=65536))
    local_steps: int = field(default=1, metadata=bounds(min=1, max=10000))
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = field(default=0, metadata=bounds(min=0))
    # The training budget per peer (also the cosine schedule's horizon): a peer that reaches it stops training
    # and mixes on until its copy agrees with its neighbours' ([gossip] finish_exchanges). Unset: no end.
    total_steps: int | None = field(default=None, metadata=bounds(min=1))
    # With [gossip] personal: steps that fine-tune only the personal parameters on this peer's examples, once
    # the peer has finished (past total_steps, done with its finish exchanges). A local choice, not hashed.
    personal_steps: int = field(default=0, metadata=bounds(min=0, max=10_000_000))
    # With [gossip] personal: how those parameters train before the finish. "local": with the rest, on this
    # peer's examples. "frozen" (FedBABU): held at their initial values, the task seed's and so the same on
    # every peer, so the shared body learns features for one common head; personal_steps then fits the head.
    # A local choice, not hashed: either way the same parameters are mixed and the personal ones never leave.
    personal_training: Literal["local", "frozen"] = "local"
    grad_clip: float | None = field(default=None, metadata=bounds(min=0.0, exclusive_min=True))
    # Adam and AdamW only: step as one model on the union batch of this peer and its live neighbours would
    # (gossipd.train.adam: the second moment's noise part divided by their number). false: torch's Adam on
    # this peer's batch alone, whose steps fall short by up to sqrt(peers) where gradient noise dominates.
    # A local choice, not hashed.
    swarm_batch: bool = True
    device: str = "auto"
    # Evaluating is not training: 1000 held-out examples every 500 steps costs ~2% of a CNN peer's time.
    eval_every: int = field(default=500, metadata=bounds(min=1))
    eval_samples: int = field(default=1000, metadata=bounds(min=1))
    # Swarm Learning's minPeers: do not train (nor mix) until this many neighbours are live; fall back to
    # waiting when fewer have been live for `min_peers_grace` seconds (a restart or a blip is not a reason
    # to stop). 0: train alone if need be.
    min_peers: int = field(default=0, metadata=bounds(min=0, max=1024))
    min_peers_grace: float = field(default=30.0, metadata=bounds(min=0.0))
    # With a training budget (total_steps) and no min_peers: seconds a fresh peer waits for its neighbours
    # before its first step, so a small budget is not spent before anyone is found (see
    # gossipd.peering.start_wait). 0: start at once. A local choice, not hashed.
    start_wait: float = field(default=30.0, metadata=bounds(min=0.0))


@dataclass(frozen=True, kw_only=True)
class GossipSection:
    """`[gossip]`: how a peer mixes its model with its neighbours.

    `weight` fixes the mixing weight of every exchange; left out, it is Metropolis-Hastings from both ends'
    degrees in the graph of exchanges in flight, `min(1/2, 1/(1 + max(deg_a, deg_b)))` (see
    `gossipd.mixing.weights`). `config` is the algorithm's own settings.
    """

    algorithm: str = "auto"
    weight: float | None = field(default=None, metadata=bounds(min=0.0, max=0.5, exclusive_min=True))
    view_size: int = field(default=6, metadata=bounds(min=1, max=64))
    exchange_interval: float = field(default=0.2, metadata=bounds(min=0.0))
    # Step pacing (the default): an exchange every this many local steps, and training waits for a mix once
    # twice as many steps have passed without one (see gossipd.mixing.pacing). 0: paced by the clock instead,
    # an exchange every exchange_interval seconds however many steps pass meanwhile.
    steps_per_exchange: int = field(default=2, metadata=bounds(min=0, max=100000))
    # With steps_per_exchange: the share of one core mixing may take while the cores this daemon runs on are
    # busy (idle time it may use freely); past it the steps between exchanges stretch, up to 32 times.
    # 0 (the default): no cap (see gossipd.mixing.cpu_budget).
    cpu_budget: float = field(default=0.0, metadata=bounds(min=0.0, max=64.0))
    exchange_timeout: float = field(default=15.0, metadata=bounds(min=0.1))
    rewire_interval: float = field(default=30.0, metadata=bounds(min=0.0))
    # With a training budget ([train] total_steps): the exchanges with neighbours past their budget too that a
    # peer past its own takes part in (started every exchange_interval, or answered) before it starts no more.
    # Compressed gossip leaves the copies apart by what the last steps' corrections have not yet carried over;
    # these exchanges close that gap, at the cost of a few compressed messages (see gossipd.services.exchange).
    finish_exchanges: int = field(default=50, metadata=bounds(min=0, max=100000))
    # Every this many exchanges of an edge, a whole-model exchange also mixes the two optimisers' momentum
    # (SGD's momentum buffer, Adam's first moment), which on label-skewed shards otherwise keeps pushing each
    # copy back towards its own labels after a mix (gossipd.mixing.momentum). 0 (the default): never; 2
    # helped every skewed split measured and cost the IID races on loopback a sixth to a fifth of their time
    # (docs/bench-quality.md, *Mixing momentum*). Part of the task hash where it can apply (plain and auto).
    momentum_every: int = field(default=0, metadata=bounds(min=0, max=100000))
    # "samples" (the default): each exchange moves the two ends towards their average weighted by the dataset
    # sizes they declare, so the swarm converges to the sample-weighted average, the model one trainer would
    # fit on all the data (FedAvg's weighting, Swarm Learning's node weightage); the weighted sum is conserved
    # as the plain sum is with "none" (see gossipd.mixing.weights). An end that declares no size (an attached
    # script that gave none) mixes with equal weight. Peers must agree on it: it is part of the task hash.
    weigh_by: Literal["none", "samples"] = "samples"
    # Glob patterns over parameter names (`"classifier.3.*"`): those parameters are each peer's own, never
    # mixed and never sent (gossipd.mixing.personal). Part of the task hash: peers must agree on what they mix.
    personal: tuple[str, ...] = ()
    config: Any = None
