"""Pairwise mixing over `/gossipd/mix/2.1.0`: starting exchanges with neighbours and answering theirs.

Each exchange drives an `ExchangeSession` (the same one the simulator uses) over a framed stream, full
duplex: every round this end sends its message while reading the peer's (Yamux resets a stream whose
reader stalls for 5 s, and both ends write first). The whole exchange runs under one deadline, so a peer
that hangs costs one timeout and a peer that dies costs a failed read, never a stall. A failure after the
hello drops the edge state; the next exchange with that peer starts the edge afresh.

A stream outlives its exchange: the end that opened it starts its next exchange with that peer on it (within
STREAM_REUSE seconds), so a steady pair pays for opening, negotiating and authenticating a stream once, not
per exchange (those frames outweighed a float16 rank-1 PowerGossip message on the wire).

A peer past its training budget (`[train] total_steps`) *finishes*: it starts an exchange every
`exchange_interval` until it has taken part in `[gossip] finish_exchanges` exchanges with neighbours past that
budget too (their heartbeats say their step), then only answers. One with no such neighbour to finish with
(they left, or all train on) is finished after twice `exchange_timeout` without an exchange. Compressed gossip
corrects the copies' disagreement a few directions per exchange, so when training stops they still differ by
the last steps' uncarried corrections; on skewed shards each copy then leans towards its own data (measured:
peers at 98.0% whose average scores 99.0%). With training stopped the differences hold still, the power
iteration locks onto them, and a few exchanges among finished peers bring every copy to that average.

Past the budget a peer mixes only with neighbours past it too, and a peer still training only with neighbours
still training. Peers step at different rates (cores, load, how many exchanges each one answers), so some
reach the budget first. A finished peer that went on mixing with a slower one would absorb every step of
that straggler's tail: its copy no longer trains, so each exchange hands it part of the straggler's last
steps, which the straggler, pulled back towards the swarm's average, takes again from where its gradient is
still large. The swarm's average then follows the straggler's data. The simulator with a peer or two at half
the others' pace (`gossipd simulate --paces`, plain gossip; docs/bench-quality.md): Titanic's skewed split,
4 peers, 50.6-79.2% against 72.5-82.0% with the two phases kept apart; the MNIST MLP on Dirichlet(0.1)
labels, 8 peers, 77.4-89.6% against 91.7-93.3% (94.4% when all keep pace). Kept apart, the straggler's tail
moves only its own copy, a 1/n share of the average the finish brings everyone to. A neighbour's phase comes
from its heartbeats, which say whether it is past its own budget (`done`; a peer announces at once when it
reaches it), or from its refusal: a finished peer answers a neighbour it does not know to be past the budget
with `abort` reason `finished`, and the opener, which counts no failure, starts no more exchanges with it
until a later heartbeat says it trains again (restarted with a larger budget). A heartbeat of before version
3 says only its step, taken for past the budget when it is at or past this peer's own. Discovery keeps a
neighbour of this peer's phase in its view when it knows one (gossipd.services.discovery).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from gossipd.adapters.cpu_usage import idle_cpu_seconds, process_cpu_seconds
from gossipd.mixing.algorithm import Algorithm
from gossipd.mixing.auto import AutoGossip
from gossipd.mixing.clipping import Clipper, RobustSection
from gossipd.mixing.cpu_budget import INTERVAL, CpuBudget, Reading
from gossipd.mixing.edge import EdgeState
from gossipd.mixing.layout import ParamLayout
from gossipd.mixing.link_budget import (
    FINISH_TIME_SHARE,
    SKIP,
    Bounds,
    Choice,
    EdgeLink,
    LinkBudget,
    exchange_bounds,
)
from gossipd.mixing.mix_rate import MixRate
from gossipd.mixing.pacing import StepPacer
from gossipd.mixing.pull_budget import PullBudget, pull_bound
from gossipd.mixing.session import ExchangeResult, ExchangeSession, PeerAborted, Phase
from gossipd.peering.ledger import Ledger
from gossipd.peering.table import PeerRecord, PeerTable
from gossipd.peering.view import PeerView
from gossipd.services.model_host import ModelHost
from gossipd.services.network import DialError, FrameStream, FrameTooLarge, Network, StreamClosed
from gossipd.services.offload import Offload
from gossipd.services.streams import authenticate, duplex
from gossipd.task.access import OPEN, Access
from gossipd.task.schema import GossipSection
from gossipd.wire.auth import AuthHandshake
from gossipd.wire.errors import ProtocolViolation, WireError
from gossipd.wire.messages import Message, MessageType, decode_message, encode_message, framed_size

if TYPE_CHECKING:
    # trio-typing's stubs (pulled in by libp2p) shadow trio's own annotations and lack TaskStatus.
    from trio_typing import TaskStatus

MIX_PROTOCOL = "/gossipd/mix/2.1.0"
HELLO_LIMIT = 4096  # a hello is ~80 bytes; the first frame of a stream is read with this cap
MAX_CONCURRENT = 4  # exchanges in flight at once, started here or answered
MAX_INITIATED = 2  # exchanges started here at once: a hung partner holds one, never the whole loop
# A peer past its budget refused as one still training announces its budget again, at most this often
# (seconds): its first announcement was lost.
REANNOUNCE_EVERY = 2.0
REJECTION_BACKOFF = 30.0  # seconds a peer that sent a message we had to reject is left alone
# A step-paced peer with no free partner looks again when one of its exchanges ends, or after this many
# seconds (a neighbour may have come back to life). Polling every 10 ms instead cost a daemon with no
# neighbour 5% of a core.
PARTNER_WAIT = 0.25
# An auto exchange whose mode sends more than the answering end's byte cap allows: the opener goes lower.
OVER_CAP = "over-cap"
# A peer past the training budget, asked by a neighbour it does not know to be past it too (see the docstring).
FINISHED = "finished"
SOFT_ABORTS = ("busy", "joining", "stopping", "backoff", OVER_CAP, FINISHED)
# Refusals after which a stream that already carried an exchange stays open for the next one ("stopping" ends it).
PASSING_REFUSALS = ("busy", "joining", "backoff", OVER_CAP, FINISHED)
# An opener reuses an idle stream for this long; the answering end waits longer than that for the next hello
# (then resets the stream), so a stream is only given up by the end that would have reused it.
STREAM_REUSE = 10.0
STREAM_IDLE = 30.0
# An auto task's exchanges are budgeted against at least this period: a peer mixing back to back (interval 0)
# still gets a budget an exchange can fit in.
MIN_EXCHANGE_PERIOD = 0.05

log = logging.getLogger("gossipd.exchange")


class Unauthenticated(WireError):
    """A stream for a closed task that did not start with the key handshake."""

    reason = "unauthenticated"


@dataclass
class ExchangeCounters:
    exchanges: int = 0
    failed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    plain_bytes: int = 0  # what the same exchanges would have cost uncompressed
    clipped: int = 0  # exchanges whose move was scaled down to the clipping radius
    momentum_mixes: int = 0  # exchanges that mixed the optimisers' momentum too ([gossip] momentum_every)
    repeats_skipped: int = 0  # due exchanges not started: every free neighbour had just mixed with this peer
    suspects: int = 0  # times a neighbour was backed off for being clipped exchange after exchange
    voided: int = 0  # exchanges whose result was dropped: the model was replaced while they ran
    state_bytes_sent: int = 0  # full models served to joining peers (not exchanges: no compression ratio)
    state_bytes_received: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    distances: deque[float] = field(default_factory=lambda: deque(maxlen=32))


@dataclass(frozen=True)
class ExchangeStatistics:
    exchanges: int
    failed: int
    in_flight: int
    bytes_sent: int
    bytes_received: int
    compression_ratio: float | None
    consensus_distance: float | None
    rejections: dict[str, int]
    clipped: int
    momentum_mixes: int  # exchanges that mixed the optimisers' momentum too ([gossip] momentum_every)
    repeats_skipped: int  # due exchanges not started: every free neighbour had just mixed with this peer
    suspects: int
    pull_declined: int  # exchanges not started or answered busy: those in flight left too little pull
    mix_per_step: float | None  # the shares exchanges moved this peer per training step lately (MixRate)
    finish_exchanges: int  # exchanges with finished neighbours since this peer's training budget was reached
    finished: bool  # past the budget and done finishing: this peer starts no more exchanges
    steps_per_exchange: int | None  # a step-paced peer's pace now (the CPU budget may have stretched it)
    mixing_cpu: float | None  # share of a core spent on anything but training over the last window (2 s)
    mixing_cpu_allowed: float | None  # and what the budget allowed it then
    links: dict[str, EdgeLink]  # an auto task's edges: what each exchanges now, measured how (by peer)
    exchange_budget: float | None  # an auto task's seconds an exchange may take now
    finished_neighbours: int = 0  # live neighbours known past the training budget (they mix only among themselves)


class ExchangeService:
    def __init__(
        self,
        *,
        task_hash: bytes,
        gossip: GossipSection,
        algorithm: Algorithm[Any],
        layout: ParamLayout,
        max_message_bytes: int,
        plain_exchange_bytes: int,
        trainer: ModelHost,
        network: Network,
        peers: PeerTable,
        view: PeerView[str],
        ready: Callable[[], bool],
        rng: random.Random,
        device: Any,
        edge_capacity: int = 16,
        clipper: Clipper | None = None,
        access: Access = OPEN,
        cpu_clock: Callable[[], float] = process_cpu_seconds,
        idle_clock: Callable[[], float | None] = idle_cpu_seconds,
        ledger: Ledger | None = None,
        examples: int | None = None,
    ) -> None:
        """`ledger`: where each neighbour's exchanges, bytes and rejected messages are booked (the task's
        contribution ledger). `examples`: this peer's declared dataset size, for a task whose `[gossip]
        weigh_by` is "samples" (None otherwise, or where it declares none): it goes in every message and
        weights every exchange with a peer that declares one too."""
        self.task_hash = task_hash
        self.gossip = gossip
        self.algorithm = algorithm
        self.layout = layout
        self.max_bytes = max_message_bytes
        self.plain_exchange_bytes = plain_exchange_bytes
        self.trainer = trainer
        self.network = network
        self.peers = peers
        self.view = view
        self.ready = ready
        self.rng = rng
        self.device = device
        self.edges: OrderedDict[str, EdgeState] = OrderedDict()
        self.edge_capacity = edge_capacity
        self.clipper = clipper
        self.access = access
        self.ledger = ledger if ledger is not None else Ledger(clock=time.time)
        self.examples = examples
        self.in_flight: set[str] = set()
        # What the exchanges in flight may pull the model, together (gossipd.mixing.pull_budget): the degree
        # each new exchange announces keeps their sum within 1.
        self.pulls = PullBudget(gossip.weight)
        self.mix_rate = MixRate()  # how far exchanges move this peer per training step (status: mix_per_step)
        self._sizes: dict[str, int | None] = {}  # peer → the dataset size it declared in its last exchange
        self._mixed_at: dict[str, int] = {}  # peer → the training step at which an exchange with it last landed
        # Bumped whenever the model is replaced wholesale (`forget_all_edges`). An exchange notes it before it
        # reads the model; one that ends after a replacement computed its delta and edge from the model that
        # is gone, and both are dropped (see `_finish`).
        self.model_generation = 0
        self._read_at: dict[str, int] = {}  # peer → the generation its running exchange read the model at
        self.counters = ExchangeCounters()
        self.offload = Offload()
        self.accepting = True
        self._initiated = 0
        self._chosen: dict[str, int | None] = {}  # peer → the mode the run loop chose for the exchange it starts
        self.settled = 0  # exchanges with neighbours past the training budget, taken part in past it
        self.past_budget = 0  # exchanges this peer started past the training budget, with anyone
        self._not_before = 0.0  # a step-paced peer whose exchange was declined as busy waits until then
        self._idle = trio.Event()
        self._idle.set()
        self._freed = trio.Event()  # set when an exchange ends: a partner may be free again
        self._finishing_since: float | None = None  # when this peer was first seen past its budget
        self._last_success: float | None = None  # when an exchange last succeeded, started here or answered
        self._no_one_left = False  # finished for want of neighbours (they all left after their own finish)
        # Neighbours that refused an exchange for being past the budget, and when (the peer table's clock).
        self._finished_peers: dict[str, float] = {}
        self._announced_budget = False
        self._announced_at = -math.inf  # when the budget was last announced (`_announce_budget`, `_announce_again`)
        # Called once when training reaches its budget: the runtime announces it to the neighbours at once.
        self.on_budget: Callable[[], None] | None = None
        # Past the budget, when no exchange came for two timeouts while neighbours are still live: the runtime
        # copies the model of the first of them whose state is at this step or past it, and says whose; None
        # if none was (see `_end_stalled_finish`).
        self.adopt: Callable[[Sequence[str], int], Awaitable[str | None]] | None = None
        self.adopted_from: str | None = None  # the neighbour whose model a stalled finish took, if any
        self._parked: dict[str, tuple[FrameStream, float]] = {}  # streams this end opened, idle, by peer
        self._idle_waits: set[trio.CancelScope] = set()  # answering ends waiting for a peer's next hello
        self.cpu_clock = cpu_clock
        self.idle_clock = idle_clock
        self.cpu_budget: CpuBudget | None = None
        self.mixing_usage: float | None = None  # share of a core spent on anything but training, last window
        # An auto task's per-edge choice of mode (gossipd.mixing.link_budget); None for fixed algorithms.
        self.family = algorithm if isinstance(algorithm, AutoGossip) else None
        self.ladder = () if self.family is None else self.family.ladder(layout)
        self.links = LinkBudget(clock=time.monotonic, save=self.family is not None and self.family.config.save)
        if gossip.steps_per_exchange > 0:
            trainer.pace(
                StepPacer(gossip.steps_per_exchange), may_hold=self.can_mix, hold_limit=gossip.exchange_timeout
            )
            if gossip.cpu_budget > 0:
                self.cpu_budget = CpuBudget(gossip.steps_per_exchange, gossip.cpu_budget)

    # -- statistics and edge bookkeeping -----------------------------------------------------------

    def statistics(self) -> ExchangeStatistics:
        c = self.counters
        spent = c.bytes_sent + c.bytes_received
        return ExchangeStatistics(
            exchanges=c.exchanges,
            failed=c.failed,
            in_flight=len(self.in_flight),
            bytes_sent=c.bytes_sent + c.state_bytes_sent,
            bytes_received=c.bytes_received + c.state_bytes_received,
            compression_ratio=c.plain_bytes / spent if spent and c.exchanges else None,
            consensus_distance=sum(c.distances) / len(c.distances) if c.distances else None,
            rejections=dict(c.rejections),
            clipped=c.clipped,
            momentum_mixes=c.momentum_mixes,
            repeats_skipped=c.repeats_skipped,
            suspects=c.suspects,
            pull_declined=self.pulls.declined,
            mix_per_step=self.mix_rate.per_step(self.trainer.step),
            finish_exchanges=self.settled,
            finished=self.finished,
            steps_per_exchange=None if self.trainer.pacer is None else self.trainer.pacer.every,
            mixing_cpu=self.mixing_usage,
            mixing_cpu_allowed=None if self.cpu_budget is None else self.cpu_budget.allowed,
            links={peer: dataclasses.replace(link) for peer, link in self.links.links.items()},
            exchange_budget=None if self.family is None else self.exchange_bounds().budget,
            finished_neighbours=sum(1 for p in self.peers.live_members() if self.past_budget_known(p)),
        )

    # -- what an auto task's exchanges send ----------------------------------------------------------

    def exchange_period(self) -> float:
        """Seconds between two exchanges this peer starts: a step-paced peer's steps per exchange times its
        measured time per training step (waits for mixes left out), else the exchange interval."""
        pacer = self.trainer.pacer
        if pacer is not None and not self.trainer.training_done:
            stats = self.trainer.statistics()
            if stats.samples_per_second > 0 and stats.step > 0 and stats.samples > 0:
                return pacer.every * (stats.samples / stats.step) / stats.samples_per_second
        return max(self.gossip.exchange_interval, MIN_EXCHANGE_PERIOD)

    def exchange_bounds(self) -> Bounds:
        assert self.family is not None
        config = self.family.config
        return exchange_bounds(
            interval=self.exchange_period(),
            time_share=config.time_share,
            max_exchange_bytes=config.max_exchange_bytes,
            max_bytes_per_second=config.max_bytes_per_second,
        )

    def _choose(self, peer: str) -> Choice | None:
        if self.family is None:
            return None
        family = self.family

        def bytes_of(mode: int) -> int:
            return family.message_bytes(mode, self.layout)

        if self.trainer.training_done:
            limit = self.gossip.exchange_timeout * FINISH_TIME_SHARE
            return self.links.settle(peer, self.ladder, bytes_of, self.exchange_bounds(), limit=limit)
        return self.links.choose(peer, self.ladder, bytes_of, self.exchange_bounds())

    def _choose_mode(self, peer: str) -> int | None:
        choice = self._choose(peer)
        return None if choice is None else choice.mode

    def _saving(self, peer: str) -> bool:
        """Whether this peer skips this interval's exchange with `peer`, saving its budget for a dearer mode
        (gossipd.mixing.link_budget); otherwise the mode chosen waits for `initiate`. When saving, a dearer
        exchange paid from what earlier intervals saved lets a step-paced trainer step through its predicted
        time (without `save`, the bank's occasional dearer exchange holds the trainer as any other)."""
        choice = self._choose(peer)
        if choice is not None and choice.mode == SKIP:
            return True
        self._chosen[peer] = None if choice is None else choice.mode
        pacer = self.trainer.pacer
        if self.links.save and choice is not None and choice.funded is not None and pacer is not None:
            per_step = self.exchange_period() / pacer.every
            if per_step > 0:
                pacer.expect(self.trainer.step, math.ceil(choice.funded / per_step))
        return False

    def _record_link(
        self,
        peer: str,
        session: ExchangeSession,
        *,
        seconds: float,
        sent: int,
        received: int,
        started_here: bool,
        captured: float | None,
    ) -> None:
        if self.family is None or session.mode is None:
            return
        self.links.record(
            peer,
            session.mode,
            self.ladder,
            seconds=seconds,
            sent=sent,
            received=received,
            budget=self.exchange_bounds().budget,
            started_here=started_here,
            captured=captured,
        )

    @property
    def finished(self) -> bool:
        """Past the training budget and done finishing (see the module's docstring)."""
        return self._done_finishing()

    def _done_finishing(self) -> bool:
        wanted = self.gossip.finish_exchanges
        return self.trainer.training_done and (self.settled >= wanted or self._no_one_left)

    def _stalled_finish(self) -> float | None:
        """Past the budget and not done finishing: the seconds since the last successful exchange once they
        reach twice `exchange_timeout` (see `_end_stalled_finish`), else None."""
        if not self.trainer.training_done or self._done_finishing():
            return None
        now = trio.current_time()
        if self._finishing_since is None:
            self._finishing_since = now
        last = max(self._finishing_since, self._last_success or self._finishing_since)
        return now - last if now - last >= 2 * self.gossip.exchange_timeout else None

    async def _end_stalled_finish(self, idle: float) -> None:
        """A peer past its budget with no exchange for two timeouts is finished. Either its neighbours have all
        gone (attached scripts close once their own swarm finished) and it keeps its copy, or neighbours past
        the budget are still live and never mixed with it: they had finished among themselves while it still
        trained and refused it as a neighbour still training, or it never heard that they were past the budget:
        heartbeats announcing the budget were lost (8 daemons of the MNIST MLP on 2 cores, 3 runs in 10,
        docs/bench-quality.md). Its copy, which no one averaged, then ends far from theirs (47-70% against
        93%); it takes theirs instead, the model they agreed on, as a joining peer copies one: from the
        first live neighbour whose state, asked for directly, is at this peer's budget or past it."""
        budget = self.trainer.budget
        if self.settled < self.gossip.finish_exchanges and self.adopt is not None and budget is not None:
            live = [p for p in self.peers.live_members() if self.access.admits(p) and not self.peers.refuses(p)]
            # Those known past the budget first; the others too, since what this peer heard may be what was
            # lost: the runtime takes a model only from a neighbour whose state says it is past the budget.
            donors = sorted(live, key=lambda p: not self.past_budget_known(p))
            if donors:
                self.adopted_from = await self.adopt(donors, budget)
        self._no_one_left = True
        log.info(
            "finished: no exchange for %.0f s past the training budget (%d with neighbours past it too)%s; "
            "answering only from now",
            idle,
            self.settled,
            f"; took the model of {self.adopted_from}, past it too" if self.adopted_from is not None else "",
        )
        self.trainer.evaluate_soon()

    def _count_finish(self, peer: str, *, started_here: bool) -> None:
        """An exchange with `peer` succeeded: while finishing, it counts if `peer` is past the budget too."""
        if not self.trainer.training_done or self._done_finishing():
            return
        self.past_budget += int(started_here)
        if self.past_budget_known(peer):
            self.settled += 1
        if self._done_finishing():
            log.info(
                "finished: %d exchanges with neighbours past the training budget too, %d started here in all "
                "since; answering only from now",
                self.settled,
                self.past_budget,
            )
            self.trainer.evaluate_soon()

    def forget_edge(self, peer: str) -> None:
        """Drop a neighbour's edge state (it left the view); not while an exchange with it runs."""
        if peer not in self.in_flight:
            self.edges.pop(peer, None)
            self.links.forget(peer)

    def forget_all_edges(self) -> None:
        """After the model was replaced wholesale, every edge must start afresh, and the exchanges still
        running, which read the model before, must leave it alone."""
        self.edges.clear()
        self._mixed_at.clear()  # the step count may have moved with the model
        self.model_generation += 1

    def _keep_edge(self, peer: str, edge: EdgeState) -> None:
        self.edges[peer] = edge
        self.edges.move_to_end(peer)
        while len(self.edges) > self.edge_capacity:
            oldest = next(iter(self.edges))
            if oldest in self.in_flight:
                break
            del self.edges[oldest]

    async def wait_idle(self) -> None:
        """Return once no exchange is in flight (used when stopping)."""
        while self.in_flight:
            await self._idle.wait()

    async def stop_accepting(self) -> None:
        """Start and answer no more exchanges; let go of idle streams (those in an exchange finish it)."""
        self.accepting = False
        for scope in self._idle_waits:
            scope.cancel()
        parked, self._parked = self._parked, {}
        for stream, _ in parked.values():
            await stream.reset()

    # -- starting exchanges ----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every `exchange_interval` seconds (jittered), or every `steps_per_exchange` training steps when the
        trainer is step-paced, start an exchange with a random live neighbour, with at most MAX_INITIATED of
        this end's own exchanges running at once."""
        task_status.started()
        pacer = self.trainer.pacer
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_cpu, self.cpu_budget)
            while True:
                self._announce_budget()
                # Past the training budget no steps come, so finishing is paced by the clock.
                paced = pacer is not None and not self.trainer.training_done
                if paced:
                    await self.trainer.exchange_due()
                    await trio.sleep_until(self._not_before)
                else:
                    interval = self.gossip.exchange_interval
                    # Back-to-back exchanges (interval 0) still yield a little, so a lone peer does not spin.
                    await trio.sleep(interval * self.rng.uniform(0.75, 1.25) if interval > 0 else 0.01)
                idle = self._stalled_finish()
                if idle is not None:
                    await self._end_stalled_finish(idle)
                if self.finished:
                    continue
                partner = None
                if self._may_start():
                    partner = self._partner(fresh=paced)
                    if partner is None and paced and any(self._free(p) for p in self.view.members):
                        # Every neighbour free to mix with has mixed with this peer within the interval (it
                        # answered their exchanges): one more now would mostly repeat a mix just made. The
                        # interval passes; the trainer's lag still counts from that real mix.
                        assert pacer is not None
                        pacer.started(self.trainer.step)
                        self.counters.repeats_skipped += 1
                        continue
                if partner is not None and not self.pulls.fits(self._opening_pull(partner), len(self.in_flight) + 1):
                    partner = None  # the exchanges in flight leave too little pull: wait until one ends
                if partner is None:
                    if paced:
                        self._freed = trio.Event()
                        with trio.move_on_after(PARTNER_WAIT):
                            await self._freed.wait()  # still due: try again once a partner may be free
                    continue
                if pacer is not None:
                    pacer.started(self.trainer.step)
                if self._saving(partner):
                    if pacer is not None:
                        # Skipped on purpose: the trainer goes on as if it had mixed; the dearer exchange the
                        # interval was saved for comes within SAVE_CAP intervals.
                        pacer.mixed(self.trainer.step)
                    continue
                self._initiated += 1
                nursery.start_soon(self._initiate_counted, partner)

    def _announce_budget(self) -> None:
        """Once, when training has reached its budget: neighbours learn it from a heartbeat sent now, not one
        a period later (until they do, a finished neighbour refuses this peer's exchanges)."""
        if self.trainer.training_done and not self._announced_budget:
            self._announced_budget = True
            self._announced_at = trio.current_time()
            if self.on_budget is not None:
                self.on_budget()

    def _announce_again(self, refused_by: str) -> None:
        """The neighbour that refused this peer, past its budget, as one still training did not hear the
        announcement (GossipSub loses messages; one cause, a peer left with no mesh, is handled in
        gossipd.adapters.libp2p_network): say it again rather than wait for the refusals to stall the finish;
        REANNOUNCE_EVERY seconds after the last, since a refusal may also have crossed an announcement still
        on its way."""
        now = trio.current_time()
        if self.on_budget is not None and now - self._announced_at >= REANNOUNCE_EVERY:
            log.info("%s took this peer for one still training: announcing its budget again", refused_by)
            self._announced_at = now
            self.on_budget()

    async def _watch_cpu(self, budget: CpuBudget | None) -> None:
        """Every INTERVAL seconds, read the share of a core mixing used (the status shows it: what mixing costs
        training where they share cores), and with a CPU budget stretch or restore the steps between
        exchanges to keep it within the budget (gossipd.mixing.cpu_budget)."""
        pacer = self.trainer.pacer
        budgeted = budget is not None and pacer is not None  # idle cores count only towards a budget

        def reading() -> tuple[float, float, float | None]:
            return trio.current_time(), self._mixing_cpu(), self.idle_clock() if budgeted else None

        last = reading()
        while True:
            await trio.sleep(INTERVAL)
            now = reading()
            wall = now[0] - last[0]
            if wall > 0:
                self.mixing_usage = max(0.0, (now[1] - last[1]) / wall)
            if budget is not None and pacer is not None:
                idle = None if now[2] is None or last[2] is None else now[2] - last[2]
                every = budget.update(Reading(wall=wall, mixing_cpu=now[1] - last[1], idle=idle))
                if every != pacer.every:
                    log.debug(
                        "mixing used %.2f of a core (allowed %.2f): an exchange every %d steps",
                        budget.usage or 0.0,
                        budget.allowed or 0.0,
                        every,
                    )
                    pacer.set_every(every)
            last = now

    def _mixing_cpu(self) -> float:
        return self.cpu_clock() - self.trainer.training_cpu_seconds()

    def can_mix(self) -> bool:
        """Whether there is a neighbour to mix with now (a step-paced trainer only waits for mixes then)."""
        return (
            self.accepting
            and self.ready()
            and any(self.peers.is_live(p) and self.access.admits(p) and self.same_phase(p) for p in self.view.members)
        )

    def past_budget_known(self, peer: str) -> bool:
        """Whether `peer` is known to be past its training budget: the latest word on it, its heartbeats'
        `done` or its refusal for being finished. A heartbeat that does not say (before version 3) counts
        as past the budget when its step is at or past this peer's own."""
        record = self.peers.get(peer)
        refused = self._finished_peers.get(peer)
        said = _said_done(record)
        if said is not None and (refused is None or said[1] > refused):
            return said[0]
        if refused is not None:
            return True
        budget = self.trainer.budget
        return budget is not None and record is not None and record.step is not None and record.step >= budget

    def same_phase(self, peer: str) -> bool:
        """Whether this peer may start an exchange with `peer`: both still training, or both past their
        budgets, as far as this peer knows (see the module's docstring). A peer without a budget trains."""
        return self.trainer.training_done == self.past_budget_known(peer)

    def _may_start(self) -> bool:
        return (
            self.accepting and self.ready() and len(self.in_flight) < MAX_CONCURRENT and self._initiated < MAX_INITIATED
        )

    def _partner(self, *, fresh: bool = False) -> str | None:
        """A random live neighbour free to mix with now; with `fresh`, only one whose last exchange with this
        peer is not a repeat for the step-paced trainer's current interval (StepPacer.repeats)."""
        pacer, step = self.trainer.pacer, self.trainer.step

        def repeats(peer: str) -> bool:
            return fresh and pacer is not None and pacer.repeats(self._mixed_at.get(peer), step)

        return self.view.sample(lambda p: self._free(p) and not repeats(p))

    def _free(self, peer: str) -> bool:
        return (
            self.peers.is_live(peer)
            and peer not in self.in_flight
            and self.access.admits(peer)
            and self.same_phase(peer)
        )

    async def _initiate_counted(self, peer: str) -> None:
        try:
            await self.initiate(peer)
        finally:
            self._initiated -= 1
            self._freed.set()

    async def initiate(self, peer: str) -> ExchangeResult | None:
        """One exchange started by this end; None if it failed (already counted and logged) or could not
        start (an exchange with that peer is already running, or this end is stopping)."""
        chosen = self._chosen.pop(peer, SKIP)  # the run loop's choice, if it made one
        # Checked and reserved with no await in between: nothing can slip in between the two.
        if peer in self.in_flight or not self.accepting:
            return None
        degree = self.pulls.reserve(peer, self._opening_pull(peer), len(self.in_flight) + 1)
        if degree is None:
            log.debug("no exchange with %s now: the exchanges in flight leave too little pull", peer)
            self.trainer.mix_declined()
            return None
        self._begin(peer)
        started = trio.current_time()
        stream: FrameStream | None = None
        session: ExchangeSession | None = None
        reused = False
        mode = chosen if chosen != SKIP else self._choose_mode(peer)
        if mode == SKIP:
            mode = self.ladder[0]  # asked to exchange now, not by the run loop: no saving
        try:
            with trio.fail_after(self.gossip.exchange_timeout):
                stream, reused = await self._stream_to(peer)
                session = await self._session(peer, degree, mode)
                try:
                    result = await self._finish(peer, stream, session, first=None)
                except StreamClosed:
                    if not (reused and session.phase is Phase.HELLO):
                        raise
                    # The peer let the idle stream go before reading our hello (it stopped, restarted or
                    # timed the stream out): nothing was exchanged, so this is no failure; start afresh.
                    await stream.reset()
                    stream, reused = None, False
                    stream = await self._open(peer)
                    session = await self._session(peer, degree, mode)
                    result = await self._finish(peer, stream, session, first=None)
                await self._park(peer, stream)
                return result
        except (DialError, StreamClosed, FrameTooLarge, trio.TooSlowError, WireError) as exc:
            if reused and stream is not None and _refused_for(exc, PASSING_REFUSALS):
                await self._park(peer, stream)  # the peer keeps it too: the next try goes on it
                stream = None
            await self._failed(peer, stream, session, exc, elapsed=trio.current_time() - started)
            return None
        finally:
            self._end(peer)

    async def _stream_to(self, peer: str) -> tuple[FrameStream, bool]:
        """An idle stream this end opened to `peer` recently, or a new one; and whether it was reused."""
        parked = self._parked.pop(peer, None)
        if parked is not None:
            stream, since = parked
            if trio.current_time() - since < STREAM_REUSE:
                return stream, True
            await stream.reset()
        return await self._open(peer), False

    async def _open(self, peer: str) -> FrameStream:
        stream = await self.network.open_stream(peer, MIX_PROTOCOL)
        handshake = self.handshake(peer)
        if handshake is not None:
            try:
                await authenticate(stream, handshake)
            except BaseException:
                # Also when the exchange's deadline cancelled the handshake: the reset must still go out.
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True
                    await stream.reset()
                raise
        return stream

    async def _park(self, peer: str, stream: FrameStream) -> None:
        """Keep a stream whose exchange succeeded for the next exchange with that peer; drop stale ones."""
        now = trio.current_time()
        # Taken out before the first await: another exchange may park, reuse or drop streams meanwhile.
        stale = [self._parked.pop(p)[0] for p, (_, since) in list(self._parked.items()) if now - since >= STREAM_REUSE]
        for old in stale:
            await old.reset()
        if self.accepting:
            self._parked[peer] = (stream, now)
        else:
            await stream.reset()

    # -- answering exchanges -------------------------------------------------------------------------

    async def respond(self, stream: FrameStream, first: Message) -> None:
        """Answer the exchanges a peer runs on a stream it opened: the first, whose first message the daemon
        already read to route the stream here (the hello, or for a closed task the key challenge), then each
        one it starts on the same stream, until the stream fails, idles STREAM_IDLE seconds or this end stops."""
        authenticated = False
        while True:
            if not await self._answer(stream, first, authenticated=authenticated):
                return
            authenticated = True
            try:
                next_hello = await self._next_hello(stream)
            except WireError as exc:
                await self._failed(stream.peer_id, stream, None, exc)
                return
            if next_hello is None:
                await stream.reset()
                return
            first = next_hello

    async def _next_hello(self, stream: FrameStream) -> Message | None:
        """The first message of the peer's next exchange on this stream, or None once the stream ends,
        idles STREAM_IDLE seconds or this end stops. Raises WireError for a message that is not for us."""
        raw: bytes | None = None  # stays None if the wait idles out or stop_accepting cancels it
        with trio.CancelScope(deadline=trio.current_time() + STREAM_IDLE) as scope:
            self._idle_waits.add(scope)
            try:
                if self.accepting:
                    raw = await stream.receive(HELLO_LIMIT)
            except (StreamClosed, FrameTooLarge) as exc:
                log.debug("idle stream from %s ended: %s", stream.peer_id, exc)
            finally:
                self._idle_waits.discard(scope)
        return None if raw is None else decode_message(raw, max_size=HELLO_LIMIT, task=self.task_hash)

    async def _answer(self, stream: FrameStream, first: Message, *, authenticated: bool) -> bool:
        """One exchange the peer started; whether the stream may carry another: it succeeded, or a stream
        that already carried one was refused for a passing reason (busy: the opener will try again on it)."""
        peer = stream.peer_id
        # The daemon read this first message to route the stream here; encoding is canonical, so this is its size.
        self._count_bytes(peer, received=framed_size(len(encode_message(first))))
        refusal = self._refusal(peer)
        if refusal is not None:
            keep = authenticated and refusal in PASSING_REFUSALS
            await self._refuse(stream, refusal, close=not keep)
            return keep
        self._begin(peer)
        session: ExchangeSession | None = None
        try:
            with trio.fail_after(self.gossip.exchange_timeout):
                hello = await self.admit(stream, first, authenticated=authenticated)
                if hello is not first:  # a closed task's: the key handshake came first
                    self._count_bytes(peer, received=framed_size(len(encode_message(hello))))
                self.peers.saw(peer, "inbound", member=True, addresses=self.network.known_addresses(peer))
                if self._over_cap(hello):
                    await self._refuse(stream, OVER_CAP, close=False)
                    return True
                pull = pull_bound(self.examples, hello.examples, known=True)
                degree = self.pulls.reserve(peer, pull, len(self.in_flight))
                if degree is None:
                    log.debug("exchange from %s answered busy: the exchanges in flight leave too little pull", peer)
                    await self._refuse(stream, "busy", close=False)
                    return True
                session = await self._session(peer, degree)
                await self._finish(peer, stream, session, first=hello)
                return True
        except (StreamClosed, FrameTooLarge, trio.TooSlowError, WireError) as exc:
            await self._failed(peer, stream, session, exc)
            return False
        finally:
            self._end(peer)

    async def admit(self, stream: FrameStream, first: Message, *, authenticated: bool = False) -> Message:
        """For a closed task, a new stream must open with the key handshake; returns the hello that follows.
        On a stream that already carried an exchange (`authenticated`), the next exchange opens with its hello."""
        handshake = self.handshake(stream.peer_id)
        if handshake is None or authenticated:
            if first.type is not MessageType.HELLO:
                raise ProtocolViolation(f"expected hello, received {first.type}")
            return first
        if first.type is not MessageType.AUTH:
            raise Unauthenticated("this task is closed: a stream must start by proving the task key")
        await authenticate(stream, handshake, first=first)
        hello = decode_message(await stream.receive(HELLO_LIMIT), max_size=HELLO_LIMIT, task=self.task_hash)
        return hello

    def handshake(self, peer: str) -> AuthHandshake | None:
        """The key handshake for a stream with `peer`, or None for an open task."""
        if self.access.key is None:
            return None
        return AuthHandshake(self.access.key, self.task_hash, self.network.peer_id.encode(), peer.encode())

    def count_rejection(self, reason: str) -> None:
        self.counters.rejections[reason] = self.counters.rejections.get(reason, 0) + 1

    def _over_cap(self, hello: Message) -> bool:
        """Whether the opener of an auto exchange chose a mode that sends more than this peer's own byte caps
        allow. Caps are each peer's setting, outside the task hash, so the opener may not know them; it
        learns from the refusal (LinkBudget.over_cap). The cheapest mode is never refused: an edge must mix."""
        if self.family is None or hello.mode is None or not self.family.accepts(hello.mode, self.layout):
            return False  # a fixed algorithm, or a mode off the ladder, which the session rejects
        cap = self.exchange_bounds().max_bytes
        if cap is None or hello.mode == self.ladder[0]:
            return False
        return self.family.message_bytes(hello.mode, self.layout) > cap

    def _refusal(self, peer: str) -> str | None:
        if not self.access.admits(peer):
            self.count_rejection("not-allowed")
            return "not-allowed"
        if not self.accepting:
            return "stopping"
        if not self.ready():
            return "joining"
        if peer in self.in_flight or len(self.in_flight) >= MAX_CONCURRENT:
            return "busy"
        if self.peers.refuses(peer):
            return "backoff"  # it sent messages we rejected, or looks Byzantine: not now
        if self.trainer.training_done and not self.past_budget_known(peer):
            return FINISHED  # it trains on: its tail must not pull a copy that no longer trains
        return None

    async def _refuse(self, stream: FrameStream, reason: str, *, close: bool = True) -> None:
        abort = encode_message(
            Message(type=MessageType.ABORT, task=self.task_hash, epoch=0, round=0, degree=1, reason=reason)
        )
        with trio.move_on_after(2):
            with contextlib.suppress(StreamClosed):
                await stream.send(abort)
                self._count_bytes(stream.peer_id, sent=framed_size(len(abort)))
        if close:
            await stream.close()

    # -- the exchange itself ---------------------------------------------------------------------------

    async def _session(self, peer: str, degree: int, mode: int | None = None) -> ExchangeSession:
        """`degree`: what this end announces (`PullBudget.reserve`); `mode`: the opener's choice in an auto task
        (the answering end follows the hello's)."""
        # Noted before the read: a replacement after it, even one that lands before the snapshot's boundary,
        # voids the exchange (at worst one good exchange is dropped), never the other way round.
        self._read_at[peer] = self.model_generation
        params = await self.trainer.snapshot()
        return ExchangeSession(
            algorithm=self.algorithm,
            params=params,
            layout=self.layout,
            self_id=self.network.peer_id.encode(),
            peer_id=peer.encode(),
            edge=self.edges.get(peer),
            degree=degree,
            task=self.task_hash,
            fixed_weight=self.gossip.weight,
            rng=self.rng,
            device=self.device,
            clipper=self.clipper,
            examples=self.examples,
            mode=mode,
            weighted=self.gossip.weigh_by == "samples",
            momentum_every=self.gossip.momentum_every,
            momentum=self.trainer.momentum,
        )

    async def _finish(
        self, peer: str, stream: FrameStream, session: ExchangeSession, first: Message | None
    ) -> ExchangeResult:
        # Timed from here for an auto task's choice of mode: opening a stream (a dial, the key handshake) is
        # a cost of the edge, not of what an exchange sends, and a parked stream skips it for 10 s anyway.
        started = trio.current_time()
        # Low-rank projections, compression and decoding run off the event loop when they take long.
        if first is None:
            outgoing = [session.start()]
            sent, received = 0, 0
        else:
            outgoing = await self.offload.run(partial(session.answer, first))
            sent, received = 0, framed_size(len(encode_message(first)))
            self._agreed(peer, session, first)
        while True:
            payloads = [encode_message(message) for message in outgoing]
            out = sum(framed_size(len(payload)) for payload in payloads)
            sent += out
            if session.done:
                # An opener whose peer skipped its hello has its own last round still to send.
                for payload in payloads:
                    await stream.send(payload)
                self._count_bytes(peer, sent=out)
                break
            raw = await duplex(stream, payloads, self.max_bytes)
            received += framed_size(len(raw))
            self._count_bytes(peer, sent=out, received=framed_size(len(raw)))
            incoming = decode_message(raw, max_size=self.max_bytes, task=self.task_hash)
            outgoing = await self.offload.run(partial(session.receive, incoming))
            self._agreed(peer, session, incoming)
        result = session.result()
        seconds = trio.current_time() - started
        self._record_link(
            peer,
            session,
            seconds=seconds,
            sent=sent,
            received=received,
            started_here=first is None,
            captured=result.captured,
        )
        if self._read_at.pop(peer, self.model_generation) == self.model_generation:
            self.trainer.submit(result.delta, result.momentum)
            self._keep_edge(peer, result.edge)
            self._note_mixed(peer)
            if not self.trainer.training_done:
                self.mix_rate.landed(self.trainer.step, result.share)
        else:
            # The model was replaced (a copy from a neighbour) while this exchange ran. Its delta would move
            # the new model by a difference taken from the old one, and its edge would carry the old model's
            # state (Choco's public copies) into the next exchange: both go. The neighbour's next exchange
            # finds no edge here and both ends start it afresh.
            log.info("the exchange with %s ended after the model was replaced: its result is dropped", peer)
            self.counters.voided += 1
        self._last_success = trio.current_time()
        self.peers.exchange_succeeded(peer, result.distance)
        self.ledger.exchanged(peer, started_by_us=first is None)
        self.network.forget_failures(peer)
        self._count_finish(peer, started_here=first is None)
        self.counters.exchanges += 1
        self.counters.plain_bytes += self.plain_exchange_bytes
        self.counters.distances.append(result.distance)
        self.counters.clipped += int(result.clipped)
        self.counters.momentum_mixes += int(bool(result.momentum))
        if result.suspect and self.clipper is not None and self._past_grace(peer, self.clipper.section):
            log.warning(
                "%s was clipped %d exchanges in a row: leaving it alone for %.0f s",
                peer,
                self.clipper.section.suspect_after,
                self.clipper.section.suspect_backoff,
            )
            self.peers.back_off(peer, self.clipper.section.suspect_backoff)
            self.clipper.forgive(peer.encode())
            self.counters.suspects += 1
        return result

    def _note_mixed(self, peer: str) -> None:
        """The step an exchange with `peer` landed at (for `_partner`), kept for the view's members only."""
        self._mixed_at[peer] = self.trainer.step
        if len(self._mixed_at) > 2 * len(self.view.members) + 8:
            members = set(self.view.members)
            self._mixed_at = {p: s for p, s in self._mixed_at.items() if p in members or p == peer}

    def _agreed(self, peer: str, session: ExchangeSession, message: Message) -> None:
        """Once the pair's weight is agreed, the exchange's pull is exact; and the size the peer declares is
        the guess for the next exchange this end opens with it."""
        if session.mixing_started:
            self.pulls.settle(peer, session.weight * session.pull)
            self._sizes[peer] = message.examples

    def _opening_pull(self, peer: str) -> float:
        """The bound on this end's pull in an exchange it opens with `peer`, before the peer's hello says its size."""
        if peer in self._sizes:
            return pull_bound(self.examples, self._sizes[peer], known=True)
        return pull_bound(self.examples, None, known=False)

    def _past_grace(self, peer: str, robust: RobustSection) -> bool:
        """Whether `peer` was first exchanged with over `suspect_grace` seconds ago (see Clipper)."""
        record = self.peers.get(peer)
        first = record.first_exchange if record is not None else None
        return first is not None and self.peers.clock() - first >= robust.suspect_grace

    async def _failed(
        self,
        peer: str,
        stream: FrameStream | None,
        session: ExchangeSession | None,
        error: BaseException,
        elapsed: float = 0.0,
    ) -> None:
        soft = _refused_for(error, SOFT_ABORTS)
        if session is not None and session.mixing_started:
            # The two ends may now disagree about the edge: forget it; the next exchange resets it.
            self.edges.pop(peer, None)
        if isinstance(error, WireError) and not isinstance(error, PeerAborted):
            reason = error.reason
            self.count_rejection(reason)
            self.ledger.rejected(peer, reason)
            self.peers.back_off(peer, REJECTION_BACKOFF)
            log.warning("rejected a message from %s (%s): %s", peer, reason, error)
            if stream is not None and session is not None:
                with trio.move_on_after(1):
                    with contextlib.suppress(StreamClosed, WireError):
                        await stream.send(encode_message(session.abort(reason)))
        elif soft:
            log.debug("exchange with %s declined: %s", peer, error)
        else:
            log.info("exchange with %s failed: %s: %s", peer, type(error).__name__, error)
        if not soft:
            if self.family is not None and session is not None and session.mode is not None:
                self.links.failed(peer, self.ladder)
            self.counters.failed += 1
            self.peers.exchange_failed(peer)
            self.ledger.failed(peer)
        # A busy neighbour frees up in moments: a step-paced peer tries again after a random wait of up to
        # two attempts' time, so two peers that started exchanges with each other at once (each declines
        # the other) do not collide forever. Otherwise its held trainer goes on, rather than wait for a mix
        # that may not come.
        if soft and "busy" in str(error):
            self._not_before = trio.current_time() + self.rng.uniform(0, 2 * elapsed)
            self.trainer.mix_declined()
        elif _refused_for(error, (OVER_CAP,)):
            if self.family is not None and session is not None and session.mode is not None:
                self.links.over_cap(peer, session.mode, self.ladder)
            self.trainer.mix_declined()  # due again now, at a mode the neighbour takes
        elif _refused_for(error, (FINISHED,)):
            self._finished_peers[peer] = self.peers.clock()
            if self.trainer.training_done:
                self._announce_again(peer)
            self.trainer.mix_declined()  # due again now, with a neighbour still training if there is one
        else:
            self.trainer.mix_failed()
        if stream is not None:
            await stream.reset()

    def _count_bytes(self, peer: str, *, sent: int = 0, received: int = 0) -> None:
        self.counters.bytes_sent += sent
        self.counters.bytes_received += received
        self.ledger.traffic(peer, sent=sent, received=received)

    def count_state_transfer(self, peer: str, *, sent: int = 0, received: int = 0) -> None:
        """A full model copied to or from `peer` (a joining peer's state transfer)."""
        self.counters.state_bytes_sent += sent
        self.counters.state_bytes_received += received
        self.ledger.traffic(peer, sent=sent, received=received, state=True)

    def _begin(self, peer: str) -> None:
        self.in_flight.add(peer)
        if self._idle.is_set():  # keep an unset event: someone may already wait on it
            self._idle = trio.Event()

    def _end(self, peer: str) -> None:
        self.in_flight.discard(peer)
        self.pulls.release(peer)
        self._read_at.pop(peer, None)
        self._freed.set()
        if not self.in_flight:
            self._idle.set()


def _said_done(record: PeerRecord | None) -> tuple[bool, float] | None:
    """What the neighbour's heartbeats last said of its phase, and when; None if they do not say."""
    if record is None or record.done is None or record.done_at is None:
        return None
    return record.done, record.done_at


def _refused_for(error: BaseException, reasons: tuple[str, ...]) -> bool:
    """Whether the peer aborted the exchange for one of `reasons` (its ABORT's reason is in the message)."""
    return isinstance(error, PeerAborted) and any(reason in str(error) for reason in reasons)
