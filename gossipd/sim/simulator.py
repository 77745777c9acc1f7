"""An in-process swarm: N peers, each with its own model, trainer, data shard, view and edge states,
mixing by random pairwise exchanges through the same sessions and wire codec the daemon uses.

One round: every online peer runs `local_steps` training steps, then the online peers (in random order) start
exchanges with random online members of their views, each at its task's pace as a daemon keeps it: one for
every `[gossip] steps_per_exchange` steps it took (from a random phase, as daemons are not in step), or one
a round where the task paces by time (`steps_per_exchange = 0`) or nothing trains. As a daemon's, a paced
exchange skips neighbours that mixed with the peer within its interval, and lets the interval pass if all
free ones did (gossipd.mixing.pacing.repeats; counted in `repeats_skipped`). Churn takes peers away
and brings them back; a returning peer first copies a full model from a neighbour, as a joining daemon does.
`finish_rounds` more rounds of exchanges without training follow the last, one a peer each, as daemons past
their training budget finish.

An exchange's delta reaches the model at once by default. With `exchange_span` k, it is held for the peer's
next k training steps, as a daemon's trainer steps on while its exchange is in flight and applies the delta
at a boundary after it: the exchanges of a round are all computed from the models as training left them, and
their deltas land k steps into the training that follows (a departing peer's are lost with it; past the last
training step they land at once). Exchanges in flight together each move a model from about the same point,
so, as a daemon does, each end books their pulls (gossipd.mixing.pull_budget) and announces a degree that
keeps their sum within 1, or declines the exchange (counted in `pull_declined`); a pair has one exchange in
flight at a time.

Peers keep pace by default. With `paces`, peer i takes `paces[i] × local_steps` steps a round (on average)
until it has its budget, `rounds × local_steps` steps, as daemons on unequal cores do; the rounds go on until
the slowest has it, and a peer past its budget mixes only with peers past theirs, a peer still training only
with those still training (the daemon's rule, gossipd.services.exchange).

With personal parameters (`[gossip] personal`) each peer keeps its own: exchanges and a returning peer's
copy carry only the shared part, and after the finish each peer fine-tunes its personal part for
`[train] personal_steps` steps. A classification run also reports each peer's accuracy on test examples
weighted like its own labels, and, with personal parameters, a personalised model's global accuracy with
its personal part replaced by the peers' average (gossipd.sim.own_distribution).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import torch

from gossipd.data.registry import peer_shard
from gossipd.data.spec import DataBundle
from gossipd.metrics import consensus_distance
from gossipd.mixing.auto import AutoGossip
from gossipd.mixing.clipping import Clipper
from gossipd.mixing.edge import EdgeState
from gossipd.mixing.layout import ParamLayout, max_message_bytes, mixed_parameters, personal_of
from gossipd.mixing.link_budget import FINISH_TIME_SHARE, SKIP, Bounds, LinkBudget, exchange_bounds
from gossipd.mixing.local import Traffic, plain_exchange_bytes, run_pair
from gossipd.mixing.pacing import repeats
from gossipd.mixing.personal import personal_part, shared_part
from gossipd.mixing.pull_budget import PullBudget, pull_bound
from gossipd.mixing.registry import make_algorithm
from gossipd.mixing.session import ExchangeSession
from gossipd.mixing.state import half_state, read_state, state_message, state_specs
from gossipd.models.registry import build_model
from gossipd.peering.view import PeerView
from gossipd.sim.own_distribution import ClassCounts, evaluate_by_class, label_distribution, with_averaged_personal
from gossipd.sim.progress import Progress
from gossipd.sim.report import RoundRecord, SimulationReport
from gossipd.task.loader import Task
from gossipd.train.device import pick_device
from gossipd.train.trainer import Evaluation, Trainer
from gossipd.wire.errors import WireError
from gossipd.wire.messages import decode_message, encode_message, framed_size


@dataclass(frozen=True)
class ModelledTiming:
    """What an auto task's controller is told steps and exchanges take, instead of timing them here: measured
    times vary with the machine and its load, and so would every choice of mode that follows from them, and
    the run with it. Modelled, a seed reproduces a run on any machine."""

    step_seconds: float = 0.01  # one training step
    cpu_bytes_per_second: float = 100e6  # an exchange's CPU at both ends, per byte sent either way

    def __post_init__(self) -> None:
        if self.step_seconds <= 0 or self.cpu_bytes_per_second <= 0:
            raise ValueError("modelled step time and CPU rate must be positive")


MEASURED: Final = "measured"  # SimulationConfig.timing: time the steps and exchanges of this run on this machine


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    peers: int = 8
    rounds: int = 200
    partition: str | None = None  # None: the task's `[data] partition`
    seed: int = 0
    train: bool = True
    mix: bool = True  # False: every peer trains alone (the local-only baseline)
    independent_init: bool = False  # each peer starts from its own random model
    churn: float = 0.0  # per round, the probability that one online peer leaves
    downtime: int = 10  # rounds a departed peer stays away
    eval_every: int = 0  # rounds between progress evaluations; 0: only at the end
    eval_samples: int | None = None  # cap on validation examples per evaluation; None: all
    # Score this many honest peers (a fixed sample, drawn from `seed`) instead of all: with hundreds of peers
    # evaluation costs more than training. Consensus distance is always over all of them.
    eval_peers: int | None = None
    centralised: bool = True  # also train one model on the union of the shards, same samples
    byzantine: int = 0  # the last `byzantine` peers attack instead of training
    attack: str = "sign-flip"  # what they send: see ATTACKS
    finish_rounds: int = 0  # after the last round, rounds of mixing alone (the daemon's finish)
    # An auto task's modelled links (gossipd.mixing.link_budget): an exchange takes its CPU (see `timing`),
    # plus its bytes over this rate (None: bytes cost no time), plus a round trip per round.
    link_bytes_per_second: float | None = None
    link_latency: float = 0.0  # seconds, one way
    # The step and exchange CPU times an auto task's controller goes by: modelled by default, so that a seed
    # reproduces a run; MEASURED times them here (the choices then follow this machine and its load).
    timing: ModelledTiming | Literal["measured"] = ModelledTiming()
    # Each peer's training steps a round as a share of `local_steps`, cycled over the peers (see the module's
    # docstring); None: all keep pace.
    paces: tuple[float, ...] | None = None
    # Training steps between two exchanges a peer starts; None: the task's `[gossip] steps_per_exchange`, as
    # its daemons run; 0: one a round, whatever the steps.
    steps_per_exchange: int | None = None
    # Training steps a peer takes between an exchange's reading of its model and the exchange's delta being
    # applied (see the module's docstring); 0: at once.
    exchange_span: int = 0

    def __post_init__(self) -> None:
        if self.exchange_span < 0:
            raise ValueError(f"exchange_span must be 0 or more, found {self.exchange_span}")
        if self.steps_per_exchange is not None and self.steps_per_exchange < 0:
            raise ValueError(f"steps_per_exchange must be 0 or more, found {self.steps_per_exchange}")
        if self.paces is not None and (not self.paces or not all(0 < p <= 64 for p in self.paces)):
            raise ValueError(f"paces must be shares of local_steps in (0, 64], found {self.paces}")


def _sign_flip(params: dict[str, torch.Tensor], rng: torch.Generator) -> dict[str, torch.Tensor]:
    return {name: -t for name, t in params.items()}


def _scale(params: dict[str, torch.Tensor], rng: torch.Generator) -> dict[str, torch.Tensor]:
    return {name: t * 100.0 for name, t in params.items()}


def _noise(params: dict[str, torch.Tensor], rng: torch.Generator) -> dict[str, torch.Tensor]:
    return {name: t + torch.randn(t.shape, generator=rng) for name, t in params.items()}


def _nan(params: dict[str, torch.Tensor], rng: torch.Generator) -> dict[str, torch.Tensor]:
    return {name: torch.full_like(t, float("nan")) for name, t in params.items()}


# A Byzantine peer follows the protocol but presents a corrupted model in every exchange. It still applies
# the deltas it receives, so its corruption tracks the swarm (the most damaging variant for sign flips).
ATTACKS: dict[str, Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]] = {
    "sign-flip": _sign_flip,
    "scale": _scale,
    "noise": _noise,
    "nan": _nan,
}


@dataclass
class InFlight:
    """An exchange's delta held for the training steps left before it applies (SimulationConfig.exchange_span)."""

    steps_left: int
    delta: dict[str, torch.Tensor]
    partner: int
    momentum: dict[str, torch.Tensor] | None = None


@dataclass(eq=False)
class SimPeer:
    index: int
    id: bytes
    trainer: Trainer
    view: PeerView[int]
    edges: dict[int, EdgeState] = field(default_factory=dict)
    online: bool = True
    byzantine: bool = False
    clipper: Clipper | None = None
    blocked: dict[int, int] = field(default_factory=dict)  # suspects left alone, until this round
    met: dict[int, int] = field(default_factory=dict)  # the round of the first exchange with each neighbour
    returns_at: int = -1
    exchanges: int = 0
    bytes_sent: int = 0
    personal: frozenset[str] = frozenset()  # parameters this peer never mixes ([gossip] personal)
    links: LinkBudget | None = None  # an auto task's per-edge choice of mode
    pace: float = 1.0  # training steps a round, as a share of local_steps (SimulationConfig.paces)
    trained: int = 0  # training steps taken (a Byzantine peer's counted as if taken)
    rounds_trained: int = 0  # rounds it was online to train in (with paces)
    unmixed_steps: int = 0  # steps taken since it last started an exchange (step pacing)
    mixed_at: dict[int, int] = field(default_factory=dict)  # neighbour → the step their last exchange landed at
    # Exchanges in flight (SimulationConfig.exchange_span), oldest first, and what they may pull the model.
    in_flight: list[InFlight] = field(default_factory=list)
    pulls: PullBudget = field(default_factory=PullBudget)

    def params(self) -> dict[str, torch.Tensor]:
        return mixed_parameters(self.trainer.model, self.personal)


class Simulation:
    def __init__(self, task: Task, data: DataBundle, config: SimulationConfig) -> None:
        if config.peers < 2:
            raise ValueError("a swarm needs at least 2 peers")
        if not 0 <= config.byzantine < config.peers:
            raise ValueError(f"{config.byzantine} Byzantine peers out of {config.peers}: at least one must be honest")
        if config.attack not in ATTACKS:
            raise ValueError(f"unknown attack {config.attack!r}; expected one of: {', '.join(ATTACKS)}")
        self.task = task
        self.data = data
        self.config = config
        self.rng = random.Random(config.seed)
        self.device = pick_device(task.train.device)
        self.algorithm = make_algorithm(task.gossip)
        partition = config.partition or task.data.partition
        self.shards = [
            peer_shard(data, partition, i, config.peers, task.task.seed + config.seed) for i in range(config.peers)
        ]
        # Known before any trainer is built: a frozen personal part ([train] personal_training) stays out of
        # each trainer's optimiser.
        self.personal = personal_of(build_model(task.model, data.spec, task.task.seed), task.gossip.personal)
        self.peers = [self._new_peer(i) for i in range(config.peers)]
        if config.paces is not None:
            for peer in self.peers:
                peer.pace = config.paces[peer.index % len(config.paces)]
        self.budget = config.rounds * task.train.local_steps  # training steps per peer
        # Slower peers take more rounds to spend the same budget.
        slowest = min(p.pace for p in self.peers)
        self.training_rounds = config.rounds if slowest >= 1 else math.ceil(config.rounds / slowest)
        self.rounds_run = 0  # training rounds run so far
        paced = task.gossip.steps_per_exchange if config.steps_per_exchange is None else config.steps_per_exchange
        self.steps_per_exchange = paced if config.train else 0  # 0: one exchange a round
        if self.steps_per_exchange > 1:
            for peer in self.peers:
                peer.unmixed_steps = self.rng.randrange(self.steps_per_exchange)
        for peer in self.peers:
            peer.view.fill(p.index for p in self.peers if p is not peer)
        for peer in self.peers[config.peers - config.byzantine :]:
            peer.byzantine = True
        self.attack_rng = torch.Generator().manual_seed(config.seed)
        self.clipped = 0
        self.round = 0
        self.layout = ParamLayout.of(self.peers[0].params())
        self.max_bytes = max_message_bytes(self.layout)
        self.exchange_bytes = 0
        self.exchanges = 0
        self.failed_exchanges = 0
        self.skipped = 0
        self.repeats_skipped = 0  # due exchanges not started: every free neighbour had just mixed (daemon's rule)
        self.pull_declined = 0  # exchanges declined: those in flight left too little pull (exchange_span)
        self.momentum_mixes = 0  # exchanges that mixed the optimisers' momentum too ([gossip] momentum_every)
        self.state_bytes = 0
        self.joins = 0
        self.mix_seconds = 0.0
        self.train_seconds = 0.0
        self.train_steps = 0
        self.honest_steps = 0
        self.mix_shares = 0.0  # the shares honest peers' exchanges moved them while they trained (mix_per_step)
        self.family = self.algorithm if isinstance(self.algorithm, AutoGossip) else None
        self.ladder = () if self.family is None else self.family.ladder(self.layout)
        self.modes: Counter[int] = Counter()  # an auto task's exchanges by mode
        self.finishing = False  # in the finish rounds: modes are settled per edge, as a finishing daemon does

    def _new_peer(self, index: int) -> SimPeer:
        seed = self.task.task.seed + (index + 1) * 7919 if self.config.independent_init else self.task.task.seed
        model = build_model(self.task.model, self.data.spec, seed)
        trainer = Trainer(
            model,
            self.task.train,
            self.shards[index],
            kind=self.data.spec.kind,
            device=self.device,
            seed=self.config.seed * 1000 + index,
            privacy=self.task.privacy,
            personal=self.personal.parameters,
        )
        view: PeerView[int] = PeerView(self.task.gossip.view_size, random.Random(self.rng.getrandbits(64)))
        return SimPeer(
            index=index,
            id=f"sim-peer-{index:04d}".encode(),
            trainer=trainer,
            view=view,
            clipper=Clipper(self.task.robust),
            personal=self.personal.parameters,
            pulls=PullBudget(self.task.gossip.weight),
            links=LinkBudget(
                clock=lambda: float(self.round),
                save=isinstance(self.algorithm, AutoGossip) and self.algorithm.config.save,
            ),
        )

    # -- the run ---------------------------------------------------------------------------------------

    def run(
        self, on_round: Callable[[RoundRecord], None] | None = None, progress: Progress | None = None
    ) -> SimulationReport:
        """Every round, then the finish rounds, the final evaluation and the centralised baseline; `on_round`
        gets each round's record, `progress` hears how far it got (see gossipd.sim.progress)."""
        started = time.perf_counter()
        history: list[RoundRecord] = []
        distance_start: float | None = None
        for round_index in range(self.training_rounds):
            self.round = round_index
            if self.config.paces is not None and all(p.trained >= self.budget for p in self.peers):
                break  # the slowest has its budget (with churn, sooner than the bound)
            self._churn(round_index)
            online = [p for p in self.peers if p.online]
            starts = list(online)  # each peer once, unless step pacing says otherwise
            if self.config.train:
                tick = time.perf_counter()
                starts = []
                for peer in online:
                    steps = self._steps_this_round(peer)
                    if steps and not peer.byzantine:
                        peer.trainer.set_swarm_peers(self._mixed_peers(peer))
                        self._train(peer, steps)
                    peer.trained += steps
                    self.train_steps += steps
                    if not peer.byzantine:
                        self.honest_steps += steps
                    if peer.trained >= self.budget:
                        self._land_all(peer)  # done training: at rest, its trainer applies them now
                    starts += [peer] * self._exchanges_due(peer, steps)
                self.train_seconds += time.perf_counter() - tick
            if distance_start is None:
                distance_start = self._consensus()
            if self.config.mix:
                tick = time.perf_counter()
                for peer in self.rng.sample(starts, len(starts)):
                    self._exchange_from(peer)
                self.mix_seconds += time.perf_counter() - tick
            self._rewire(round_index)
            every = self.config.eval_every
            if on_round is not None or (every and (round_index + 1) % every == 0):
                record = self._record(round_index, evaluate=bool(every) and (round_index + 1) % every == 0)
                history.append(record)
                if on_round is not None:
                    on_round(record)
            if progress is not None:
                progress.rounds(round_index + 1)
            self.rounds_run = round_index + 1
        for peer in self.peers:
            self._land_all(peer)  # training is over: a trainer at rest applies what is in flight at once
        finishing = bool(self.config.finish_rounds and self.config.mix)
        if progress is not None and finishing:
            progress.phase(f"{self.config.finish_rounds} finish rounds")
        stopped = self._finish() if finishing else None
        personal_steps = self.task.train.personal_steps if self.personal.parameters else 0
        if progress is not None and personal_steps:
            progress.phase(f"{personal_steps} personal fine-tuning steps per peer")
        for peer in self._honest() if personal_steps else []:
            peer.trainer.train_personal(personal_steps, self.personal.parameters, personal_steps)
        if progress is not None:
            progress.phase(f"evaluating {len(self._scored())} peers")
        final, own = self._evaluate_final()
        baseline = self.config.centralised and self.config.train
        if progress is not None and baseline:
            progress.phase("the centralised baseline: one model on all the peers' data")
        centralised = self._centralised() if baseline else None
        return SimulationReport.build(
            simulation=self,
            final=final,
            centralised=centralised,
            distance_start=distance_start or 0.0,
            distance_end=self._consensus(),
            plain_bytes=plain_exchange_bytes(self.peers[0].params(), self.task.hash),
            stopped=stopped,
            history=history,
            wall_seconds=time.perf_counter() - started,
            own=own,
            averaged=self._averaged_personal_accuracies(),
        )

    def _train(self, peer: SimPeer, steps: int) -> None:
        """`steps` training steps, each delta in flight applied once its span of them has passed."""
        while steps > 0:
            if not peer.in_flight:
                peer.trainer.train_steps(steps)
                return
            run = min(steps, min(held.steps_left for held in peer.in_flight))
            peer.trainer.train_steps(run)
            steps -= run
            for held in peer.in_flight:
                held.steps_left -= run
            self._land_all(peer, due_only=True)

    def _holds(self) -> bool:
        """Whether exchanges' deltas are held now (see `exchange_span`): only while the peers train."""
        return bool(self.config.exchange_span and self.config.train and not self.finishing)

    def _land(
        self,
        peer: SimPeer,
        partner: int,
        delta: dict[str, torch.Tensor],
        momentum: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """An exchange's delta (and momentum's): applied now, or held for the next `exchange_span` steps
        while training goes on."""
        if self._held(peer):
            peer.in_flight.append(InFlight(self.config.exchange_span, delta, partner, momentum))
        else:
            peer.trainer.apply_delta(delta)
            if momentum:
                peer.trainer.add_momentum(momentum)
            peer.pulls.release(str(partner))

    def _held(self, peer: SimPeer) -> bool:
        """Whether an exchange's delta waits `exchange_span` of this peer's steps before it lands."""
        return self._holds() and not (peer.byzantine or peer.trained >= self.budget)

    def _land_all(self, peer: SimPeer, *, due_only: bool = False) -> None:
        """Apply the deltas in flight (those whose steps have passed, with `due_only`) and free their pulls."""
        held = []
        for entry in peer.in_flight:
            if due_only and entry.steps_left > 0:
                held.append(entry)
                continue
            peer.trainer.apply_delta(entry.delta)
            if entry.momentum:
                peer.trainer.add_momentum(entry.momentum)
            peer.pulls.release(str(entry.partner))
        peer.in_flight = held

    def _busy_with(self, peer: SimPeer, partner: SimPeer) -> bool:
        """Whether the pair has an exchange in flight (a daemon runs one at a time with each neighbour)."""
        return any(held.partner == partner.index for held in peer.in_flight) or any(
            held.partner == peer.index for held in partner.in_flight
        )

    def _degrees(self, peer: SimPeer, partner: SimPeer) -> tuple[int, int] | None:
        """The degrees the two ends announce: 1 where exchanges apply at once; where they are held, what each
        end's pulls in flight leave room for (as a daemon's ends reserve them), or None (declined)."""
        if not self._holds():
            return 1, 1
        reserved: list[tuple[SimPeer, SimPeer]] = []
        degrees: list[int] = []
        for me, other in ((peer, partner), (partner, peer)):
            pull = pull_bound(self._examples(me), self._examples(other), known=True)
            floor = len(me.in_flight) + (1 if me is peer else 0)  # an opener counts the one it opens
            degree = me.pulls.reserve(str(other.index), pull, floor)
            if degree is None:
                for owner, neighbour in reserved:
                    owner.pulls.release(str(neighbour.index))
                return None
            reserved.append((me, other))
            degrees.append(degree)
        return degrees[0], degrees[1]

    def _examples(self, peer: SimPeer) -> int | None:
        """The size a peer declares in its exchanges (weigh_by = "samples"), as a daemon declares its dataset's."""
        return len(self.shards[peer.index]) if self.task.gossip.weigh_by == "samples" else None

    def _finish(self) -> list[Any]:
        """The peers as training stopped (evaluated), then `finish_rounds` rounds of exchanges alone."""
        stopped = self._evaluate_all()
        tick = time.perf_counter()
        self.finishing = True
        for _ in range(self.config.finish_rounds):
            online = [p for p in self.peers if p.online]
            for peer in self.rng.sample(online, len(online)):
                self._exchange_from(peer)
        self.mix_seconds += time.perf_counter() - tick
        return stopped

    def _steps_this_round(self, peer: SimPeer) -> int:
        """`local_steps`, or with paces the peer's share of them (whole steps, the fraction carried over),
        never past its budget."""
        if self.config.paces is None:
            return self.task.train.local_steps
        peer.rounds_trained += 1
        # From the rounds so far, not a running sum: no drift from adding a fraction round after round.
        owed = math.floor(peer.rounds_trained * peer.pace * self.task.train.local_steps + 1e-9)
        return max(0, min(owed, self.budget) - peer.trained)

    def _exchanges_due(self, peer: SimPeer, steps: int) -> int:
        """How many exchanges `peer` starts after training `steps` steps this round: one for every
        `steps_per_exchange` steps (the remainder carried over), or one a round without step pacing. A peer
        that has its budget and trains no more mixes by time, as a finished daemon does: one a round."""
        every = self.steps_per_exchange
        if every == 0 or (steps == 0 and peer.trained >= self.budget):
            return 1
        due, peer.unmixed_steps = divmod(peer.unmixed_steps + steps, every)
        return due

    def _same_phase(self, peer: SimPeer, other: SimPeer) -> bool:
        """With paces, both still training or both past the budget (the daemon's rule); always otherwise."""
        if self.config.paces is None or self.finishing:
            return True
        return (peer.trained >= self.budget) == (other.trained >= self.budget)

    def _exchange_from(self, peer: SimPeer) -> None:
        def free(i: int) -> bool:
            return (
                self.peers[i].online and peer.blocked.get(i, -1) < self.round and self._same_phase(peer, self.peers[i])
            )

        # As a step-paced daemon: not with a neighbour it mixed with within this interval, and no exchange
        # this interval if every free one did (gossipd.mixing.pacing.repeats).
        paced = self.steps_per_exchange > 0 and not self.finishing and peer.trained < self.budget
        every = self.steps_per_exchange

        def repeated(i: int) -> bool:
            return paced and repeats(peer.mixed_at.get(i), peer.trained, every)

        partner_index = peer.view.sample(lambda i: free(i) and not repeated(i))
        if partner_index is None:
            if paced and any(free(i) for i in peer.view.members):
                self.repeats_skipped += 1
            return
        partner = self.peers[partner_index]
        if partner.blocked.get(peer.index, -1) >= self.round:
            return  # the partner refuses a suspect, as a daemon does
        if self._holds() and self._busy_with(peer, partner):
            return  # their exchange is still in flight
        mode = self._choose_mode(peer, partner)
        if mode == SKIP:
            self.skipped += 1  # saving this interval for a dearer exchange (gossipd.mixing.link_budget)
            return
        degrees = self._degrees(peer, partner)
        if degrees is None:
            self.pull_declined += 1  # the exchanges in flight leave too little pull
            return
        ends = [self._session(peer, partner, mode, degrees[0]), self._session(partner, peer, degree=degrees[1])]
        tick = time.perf_counter()
        try:
            traffic = run_pair(ends[0], ends[1], max_message_bytes=self.max_bytes)
        except WireError:
            if mode is not None:
                for owner, other in ((peer, partner), (partner, peer)):
                    assert owner.links is not None
                    owner.links.failed(str(other.index), self.ladder)
            # As in the daemon: a failed exchange costs the edge, which both ends rebuild next time.
            peer.pulls.release(str(partner.index))
            partner.pulls.release(str(peer.index))
            peer.edges.pop(partner.index, None)
            partner.edges.pop(peer.index, None)
            self.failed_exchanges += 1
            return
        captured: list[float | None] = []
        for end, owner, other in ((ends[0], peer, partner), (ends[1], partner, peer)):
            result = end.result()
            captured.append(result.captured)
            self.clipped += int(result.clipped and not owner.byzantine)
            met = owner.met.setdefault(other.index, self.round)
            past_grace = self.round - met >= self.task.robust.suspect_grace
            if result.suspect and owner.clipper is not None and past_grace:
                # The simulator counts the back-off and the grace in rounds.
                owner.blocked[other.index] = self.round + int(self.task.robust.suspect_backoff)
                owner.clipper.forgive(other.id)
            owner.pulls.settle(str(other.index), end.weight * end.pull)
            if not (self.finishing or owner.byzantine or owner.trained >= self.budget):
                self.mix_shares += result.share
            owner.mixed_at[other.index] = owner.trained + (self.config.exchange_span if self._held(owner) else 0)
            self._land(owner, other.index, result.delta, result.momentum)
            owner.edges[other.index] = result.edge
            owner.exchanges += 1
        self.momentum_mixes += int(ends[0].momentum_mixed)
        if mode is not None:
            self._record_link(peer, partner, mode, traffic, time.perf_counter() - tick, captured)
        peer.bytes_sent += traffic.a_sent
        partner.bytes_sent += traffic.b_sent
        self.exchange_bytes += traffic.total
        self.exchanges += 1

    def timing_description(self) -> str:
        timing = self.config.timing
        if not isinstance(timing, ModelledTiming):
            return "measured"
        return (
            f"modelled: {timing.step_seconds * 1000:g} ms per step, "
            f"exchange CPU {timing.cpu_bytes_per_second / 1e6:g} MB/s"
        )

    def _bounds(self) -> Bounds:
        """An exchange's bounds as a daemon computes them: the time between two a peer starts is its steps
        between them (`steps_per_exchange`, or a round's without step pacing) at the time per step."""
        assert self.family is not None
        config = self.family.config
        if isinstance(self.config.timing, ModelledTiming):
            per_step = self.config.timing.step_seconds
        else:
            per_step = self.train_seconds / self.train_steps if self.train_steps else 0.0
        steps = self.steps_per_exchange or self.task.train.local_steps
        interval = per_step * steps if per_step > 0 else self.task.gossip.exchange_interval
        return exchange_bounds(
            interval=max(interval, 1e-4),
            time_share=config.time_share,
            max_exchange_bytes=config.max_exchange_bytes,
            max_bytes_per_second=config.max_bytes_per_second,
        )

    def _choose_mode(self, peer: SimPeer, partner: SimPeer) -> int | None:
        if self.family is None:
            return None
        family = self.family
        assert peer.links is not None

        def bytes_of(mode: int) -> int:
            return family.message_bytes(mode, self.layout)

        if self.finishing:
            limit = self.task.gossip.exchange_timeout * FINISH_TIME_SHARE
            return peer.links.settle(str(partner.index), self.ladder, bytes_of, self._bounds(), limit=limit).mode
        return peer.links.choose(str(partner.index), self.ladder, bytes_of, self._bounds()).mode

    def _record_link(
        self, peer: SimPeer, partner: SimPeer, mode: int, traffic: Traffic, cpu: float, captured: list[float | None]
    ) -> None:
        """What the exchange would have taken between two daemons: the two ends compute at once (here one
        after the other, so half the measured time), each direction carries its own bytes, and every round
        costs a round trip. Under modelled timing the CPU is the bytes at the modelled rate."""
        if isinstance(self.config.timing, ModelledTiming):
            cpu = 2 * traffic.total / self.config.timing.cpu_bytes_per_second
        seconds = cpu / 2 + 2 * self.config.link_latency * max(1, traffic.messages // 2)
        if self.config.link_bytes_per_second is not None:
            seconds += max(traffic.a_sent, traffic.b_sent) / self.config.link_bytes_per_second
        budget = self._bounds().budget
        for owner, other, sent, received, share in (
            (peer, partner, traffic.a_sent, traffic.b_sent, captured[0]),
            (partner, peer, traffic.b_sent, traffic.a_sent, captured[1]),
        ):
            assert owner.links is not None
            owner.links.record(
                str(other.index),
                mode,
                self.ladder,
                seconds=seconds,
                sent=sent,
                received=received,
                budget=budget,
                started_here=owner is peer,
                captured=share,
            )
        self.modes[mode] += 1

    def _session(self, me: SimPeer, other: SimPeer, mode: int | None = None, degree: int = 1) -> ExchangeSession:
        params = me.params()
        if me.byzantine:
            params = ATTACKS[self.config.attack](params, self.attack_rng)
        return ExchangeSession(
            algorithm=self.algorithm,
            params=params,
            layout=self.layout,
            self_id=me.id,
            peer_id=other.id,
            edge=me.edges.get(other.index),
            degree=degree,  # 1 unless deltas are held: exchanges here run one at a time (see `_degrees`)
            task=self.task.hash,
            fixed_weight=self.task.gossip.weight,
            rng=self.rng,
            device=self.device,
            clipper=me.clipper,
            examples=self._examples(me),
            mode=mode,
            weighted=self.task.gossip.weigh_by == "samples",
            momentum_every=self.task.gossip.momentum_every,
            momentum=me.trainer.momentum,
        )

    def _rewire(self, round_index: int) -> None:
        """Departed neighbours leave the view (and their edge state goes: an exchange with them would fail),
        the view refills, and every 10 rounds one member is swapped (a slowly changing random graph). The edge
        state of a neighbour swapped out is kept, as the daemon keeps it (up to a bound), for when the two
        meet again: resynchronising Choco's copies from scratch at every rewiring destabilised training."""
        for peer in self.peers:
            if not peer.online:
                continue
            for gone in [m for m in peer.view.members if not self.peers[m].online]:
                peer.view.remove(gone)
                peer.edges.pop(gone, None)
            candidates = [p.index for p in self.peers if p.online and p is not peer]
            peer.view.fill(candidates)
            if round_index % 10 == 9:
                peer.view.rewire(candidates)

    # -- churn -----------------------------------------------------------------------------------------

    def _churn(self, round_index: int) -> None:
        for peer in self.peers:
            if not peer.online and peer.returns_at <= round_index:
                self._rejoin(peer)
        online = [p for p in self.peers if p.online]
        if self.config.churn > 0 and len(online) > 2 and self.rng.random() < self.config.churn:
            leaving = self.rng.choice(online)
            leaving.online = False
            leaving.in_flight = []  # its exchanges in flight die with it
            leaving.pulls = PullBudget(self.task.gossip.weight)
            leaving.returns_at = round_index + self.config.downtime

    def _rejoin(self, peer: SimPeer) -> None:
        """A returning peer restarts empty-handed: a fresh optimiser, no edges, and a full model copied
        from one online neighbour through the state-transfer message."""
        donors = [p for p in self.peers if p.online]
        donor = self.rng.choice(donors)
        state = shared_part(donor.trainer.model.state_dict(), self.personal.state)  # the personal part stays
        half = half_state(self.task.gossip.config)
        wire = encode_message(
            state_message(state, task=self.task.hash, step=donor.trainer.step, degree=donor.view.degree, half=half)
        )
        self.state_bytes += framed_size(len(wire))
        received = read_state(
            decode_message(wire, max_size=2 * len(wire), task=self.task.hash),
            state_specs(state, half=half),
            self.device,
        )
        fresh = self._new_peer(peer.index)
        own = personal_part(fresh.trainer.model.state_dict(), self.personal.state)  # its first values
        fresh.trainer.model.load_state_dict({**received, **own})
        fresh.trainer.step = donor.trainer.step
        peer.trainer = fresh.trainer
        peer.edges.clear()
        peer.in_flight = []
        peer.pulls = PullBudget(self.task.gossip.weight)
        peer.view.members.clear()
        peer.view.fill(p.index for p in donors)
        peer.online = True
        self.joins += 1

    # -- measures --------------------------------------------------------------------------------------

    def _honest(self) -> list[SimPeer]:
        return [p for p in self.peers if p.online and not p.byzantine]

    def _scored(self) -> list[SimPeer]:
        """The honest peers evaluated: all, or `eval_peers` of them, the same sample every time."""
        honest = self._honest()
        wanted = self.config.eval_peers
        if wanted is None or wanted >= len(honest):
            return honest
        # A fixed order of all peers: the sample stays the same as peers leave and return.
        order = random.Random(self.config.seed).sample(range(len(self.peers)), len(self.peers))
        rank = {index: position for position, index in enumerate(order)}
        return sorted(honest, key=lambda p: rank[p.index])[:wanted]

    def _consensus(self) -> float:
        return consensus_distance([p.params() for p in self._honest()])

    def _evaluate_all(self) -> list[Any]:
        return [p.trainer.evaluate(self.data.validation, self.config.eval_samples) for p in self._scored()]

    def _evaluate_final(self) -> tuple[list[Evaluation], list[float]]:
        """Each honest peer on the held-out examples and, for classification, on its own label mix."""
        spec = self.data.spec
        if spec.kind != "classification":
            return self._evaluate_all(), []
        final, own = [], []
        for peer in self._scored():
            counts = self._by_class(peer.trainer.model)
            final.append(counts.evaluation())
            own.append(counts.reweighted(label_distribution(self.shards[peer.index].y, spec.num_classes)))
        return final, own

    def _averaged_personal_accuracies(self) -> list[float]:
        """With personal parameters: each honest peer's held-out accuracy with its personal part replaced by
        the honest peers' average."""
        honest = self._honest()
        if not self.personal.parameters or self.data.spec.kind != "classification":
            return []
        models = [p.trainer.model for p in honest]
        return [
            self._by_class(with_averaged_personal(models, i, self.personal.state)).evaluation().accuracy
            for i in range(len(models))
        ]

    def _by_class(self, model: torch.nn.Module) -> ClassCounts:
        spec = self.data.spec
        return evaluate_by_class(
            model,
            self.data.validation,
            spec.num_classes,
            kind=spec.kind,
            device=self.device,
            max_samples=self.config.eval_samples,
        )

    def _record(self, round_index: int, *, evaluate: bool) -> RoundRecord:
        accuracies = [e.accuracy for e in self._evaluate_all()] if evaluate else []
        return RoundRecord(
            round=round_index + 1,
            consensus_distance=self._consensus(),
            exchange_bytes=self.exchange_bytes,
            exchanges=self.exchanges,
            mean_accuracy=sum(accuracies) / len(accuracies) if accuracies else None,
            worst_accuracy=min(accuracies) if accuracies else None,
        )

    def _mixed_peers(self, peer: SimPeer) -> int:
        """The peer and its online view neighbours, as a daemon counts them for `[train] swarm_batch`."""
        if not self.config.mix:
            return 1
        return 1 + sum(1 for member in peer.view.members if self.peers[member].online)

    def _centralised(self) -> Evaluation:
        """One model trained on every shard's examples with the swarm's total batch, for as many steps:
        the same samples in the order all-reduce SGD would see them."""
        union = peer_shard(self.data, "iid", 0, 1, 0)
        section = dataclasses.replace(self.task.train, batch_size=self.task.train.batch_size * self.config.peers)
        trainer = Trainer(
            build_model(self.task.model, self.data.spec, self.task.task.seed),
            section,
            union,
            kind=self.data.spec.kind,
            device=self.device,
            seed=self.config.seed * 1000 + 999,
        )
        trainer.train_steps(self.config.rounds * self.task.train.local_steps)
        return trainer.evaluate(self.data.validation, self.config.eval_samples)
