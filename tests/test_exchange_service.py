"""ExchangeService on a fake swarm: a few peers in one process, on virtual time, over `tests.fake_network`.

Each peer is a `TrainerService` over a tiny logistic regression, a `PeerTable` and view filled by hand, and an
`ExchangeService` answering streams through a handler that routes the hello by task hash as
`Daemon._on_mix_stream` does. Only mixing moves the models: a trainer is either paused or takes steps with a
learning rate of 1e-30 (which leave every parameter bit for bit as it was); either way the deltas exchanges
submit are applied at its step boundaries.

Torch work runs inline instead of in worker threads: under `autojump_clock` a task waiting for a thread leaves
the run loop idle, so virtual time jumps ahead while the thread computes (by over 1000 s during a 50 ms
thread, with a 1 s ticker running) and deadlines fire at random. A training chunk takes TRAIN_CHUNK_SECONDS
of virtual time instead. Every scenario is bounded by `trio.fail_after` in virtual seconds; the file takes a
few seconds of real time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import random
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import pytest
import torch
import trio
import trio.testing

from gossipd.data.spec import ArrayDataset, InputSpec
from gossipd.mixing.algorithm import Algorithm
from gossipd.mixing.auto import FULL, AutoConfig
from gossipd.mixing.clipping import Clipper, RobustSection
from gossipd.mixing.layout import ParamLayout, max_message_bytes, mixed_parameters
from gossipd.mixing.local import plain_exchange_bytes
from gossipd.mixing.pacing import StepPacer
from gossipd.mixing.plain import PlainConfig
from gossipd.mixing.powergossip import PowerGossipConfig
from gossipd.mixing.registry import make_algorithm
from gossipd.mixing.session import ExchangeResult, ExchangeSession
from gossipd.models.logistic import LogisticConfig
from gossipd.models.registry import build_model
from gossipd.peering.table import PeerTable
from gossipd.peering.view import PeerView
from gossipd.services.exchange import (
    FINISHED,
    HELLO_LIMIT,
    MIX_PROTOCOL,
    REANNOUNCE_EVERY,
    REJECTION_BACKOFF,
    STREAM_REUSE,
    ExchangeCounters,
    ExchangeService,
    ExchangeStatistics,
)
from gossipd.services.network import DialError, FrameStream, FrameTooLarge, StreamClosed
from gossipd.services.trainer_service import TrainerService
from gossipd.task.schema import GossipSection, ModelSection, TrainSection
from gossipd.train.trainer import Trainer
from gossipd.wire.errors import WireError
from gossipd.wire.messages import Message, MessageType, decode_message, encode_message, framed_size
from tests.fake_network import FakeHub, FakeNetwork

TASK = bytes.fromhex("6a1f0c55d2e94b7c8e3f1a2b3c4d5e6f")
OTHER_TASK = bytes.fromhex("00000000000000000000000000000001")
SPEC = InputSpec(kind="classification", input_shape=(6,), num_classes=3)
CPU = torch.device("cpu")
TIMEOUT = 5.0  # [gossip] exchange_timeout of these swarms (virtual seconds)
INTERVAL = 0.5  # [gossip] exchange_interval
TRAIN_CHUNK_SECONDS = 0.1  # virtual time one training chunk takes (TrainerService's default chunk_seconds)
FIRST_FRAME_TIMEOUT = 10.0  # as in gossipd.daemon

Trainers = Literal["stepping", "paused"]


def gossip(
    algorithm: str = "plain", steps_per_exchange: int = 0, finish_exchanges: int = 20, *, save: bool = False
) -> GossipSection:
    """Paced by the clock unless `steps_per_exchange` is given (the tests' virtual time counts in intervals)."""
    auto = AutoConfig(save=save)
    config = {"plain": PlainConfig(), "powergossip": PowerGossipConfig(rank=1), "auto": auto}[algorithm]
    return GossipSection(
        algorithm=algorithm,
        config=config,
        view_size=4,
        exchange_interval=INTERVAL,
        exchange_timeout=TIMEOUT,
        steps_per_exchange=steps_per_exchange,
        finish_exchanges=finish_exchanges,
    )


@dataclass(frozen=True)
class Chunk:
    """A training chunk that ended: whose trainer, when (virtual time), at which step."""

    trainer: Trainer
    ended: float
    step: int


CHUNKS: list[Chunk] = []  # every training chunk of the current test, in order


@pytest.fixture(autouse=True)
def torch_work_inline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`trio.to_thread.run_sync` work runs in the event loop (see the module docstring), on one torch thread:
    these models are far too small for more, and on a busy machine a second thread made each step 100× slower."""

    async def run_inline(fn: Callable[..., Any], *args: Any, **_options: Any) -> Any:
        if getattr(fn, "__name__", "") != "train_steps":
            await trio.lowlevel.checkpoint()
            return fn(*args)
        await trio.sleep(TRAIN_CHUNK_SECONDS)
        result = fn(*args)
        trainer: Trainer = getattr(fn, "__self__")  # noqa: B009 (a bound method's object; mypy sees Callable)
        CHUNKS.append(Chunk(trainer, trio.current_time(), trainer.step))
        return result

    CHUNKS.clear()

    monkeypatch.setattr(trio.to_thread, "run_sync", run_inline)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- a swarm of peers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One exchange a peer started, in virtual time; `backoff_until` is the partner's just after it."""

    peer: str
    started: float
    ended: float
    succeeded: bool
    backoff_until: float | None


class RecordingExchange(ExchangeService):
    """The service unchanged, noting each exchange it starts (its run loop calls `initiate` too)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attempts: list[Attempt] = []
        self.moves: list[tuple[float, float, float]] = []  # each exchange's snapshot time, end and pull `a`
        self._snapshot_at: dict[str, float] = {}

    async def _session(self, peer: str, degree: int, mode: int | None = None) -> ExchangeSession:
        self._snapshot_at[peer] = trio.current_time()
        return await super()._session(peer, degree, mode)

    async def _finish(
        self, peer: str, stream: FrameStream, session: ExchangeSession, first: Message | None
    ) -> ExchangeResult:
        result = await super()._finish(peer, stream, session, first)
        self.moves.append((self._snapshot_at.pop(peer), trio.current_time(), session.weight * session.pull))
        return result

    def overlapping_pulls(self) -> tuple[int, float]:
        """The most exchanges in flight at once (from snapshot to end), and the most their pulls summed to:
        they all moved the model from about one snapshot. (The most is reached at some exchange's snapshot.)"""
        most, total = 0, 0.0
        for start, _, _ in self.moves:
            overlapping = [a for s, e, a in self.moves if s <= start < e]
            most, total = max(most, len(overlapping)), max(total, sum(overlapping))
        return most, total

    async def initiate(self, peer: str) -> ExchangeResult | None:
        started = trio.current_time()
        result = await super().initiate(peer)
        record = self.peers.get(peer)
        backoff = record.backoff_until if record is not None else None
        self.attempts.append(Attempt(peer, started, trio.current_time(), result is not None, backoff))
        return result


@dataclass
class Peer:
    network: FakeNetwork
    trainer: TrainerService
    exchange: RecordingExchange
    table: PeerTable
    view: PeerView[str]

    @property
    def id(self) -> str:
        return self.network.peer_id

    async def params(self) -> dict[str, torch.Tensor]:
        """The mixed parameters once every delta submitted so far has been applied, at a step boundary."""
        model = self.trainer.trainer.model
        return await self.trainer.at_boundary(lambda: {n: t.clone() for n, t in mixed_parameters(model).items()})


def dataset(seed: int, n: int = 32, features: int = 6) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)  # (n, features)
    return ArrayDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long())


def route_mix_streams(network: FakeNetwork, exchanges: dict[bytes, ExchangeService]) -> None:
    """What `Daemon._on_mix_stream` does: read the hello, hand the stream to its task's service, else reset."""

    async def on_stream(stream: FrameStream) -> None:
        try:
            with trio.fail_after(FIRST_FRAME_TIMEOUT):
                raw = await stream.receive(HELLO_LIMIT)
            hello = decode_message(raw, max_size=HELLO_LIMIT)
            if hello.type is not MessageType.HELLO:
                raise WireError(f"a stream must open with hello, not {hello.type}")
        except (StreamClosed, FrameTooLarge, trio.TooSlowError, WireError):
            await stream.reset()
            return
        exchange = exchanges.get(hello.task)
        if exchange is None:
            await stream.reset()
            return
        await exchange.respond(stream, hello)

    network.set_handler(MIX_PROTOCOL, on_stream)


async def start_peer(
    hub: FakeHub,
    name: str,
    *,
    seed: int,
    section: GossipSection,
    trainer: Trainers,
    budget: int | None = None,
    examples: int | None = None,
    spec: InputSpec = SPEC,
) -> Peer:
    """A peer with its own initial model (drawn from `seed`; a logistic regression over `spec`) and a running
    trainer service, stopping at `budget` steps if given. Its exchange loop is the caller's to start."""
    network = hub.add_peer(name)
    model = build_model(ModelSection(name="logistic", options=LogisticConfig()), spec, seed)
    features = spec.input_shape[0]
    service = TrainerService(
        Trainer(
            model,
            TrainSection(lr=1e-30, momentum=0.0),
            dataset(seed, features=features),
            kind="classification",
            device=CPU,
            seed=seed,
        ),
        dataset(seed, n=0, features=features),
        eval_every=10**9,
        eval_samples=1,
        chunk_seconds=TRAIN_CHUNK_SECONDS,
        budget=budget,
    )
    if trainer == "paused":
        service.pause()
    params = mixed_parameters(model)
    layout = ParamLayout.of(params)
    table = PeerTable(self_id=name, clock=trio.current_time, liveness=math.inf)  # no heartbeats here
    view: PeerView[str] = PeerView(section.view_size, random.Random(seed))
    algorithm: Algorithm[Any] = make_algorithm(section)
    exchange = RecordingExchange(
        task_hash=TASK,
        gossip=section,
        algorithm=algorithm,
        layout=layout,
        max_message_bytes=max_message_bytes(layout),
        plain_exchange_bytes=plain_exchange_bytes(params, TASK),
        trainer=service,
        network=network,
        peers=table,
        view=view,
        ready=lambda: True,
        rng=random.Random(1000 + seed),
        device=CPU,
        examples=examples,
    )
    route_mix_streams(network, {TASK: exchange})
    await hub.nursery.start(service.run)
    return Peer(network, service, exchange, table, view)


async def start_peers(
    hub: FakeHub,
    names: str,
    *,
    section: GossipSection,
    trainer: Trainers,
    budgets: list[int | None] | None = None,
    examples: list[int] | None = None,
    own: dict[str, GossipSection] | None = None,
    spec: InputSpec = SPEC,
) -> list[Peer]:
    """Peers that all know each other as live members of the task, in their views; with `examples`, their
    declared dataset sizes in a task weighted by samples; `own`: a peer's own section instead of `section`
    (settings outside the task hash); `spec`: their data's shape, and so their model's."""
    budgets = budgets or [None] * len(names)
    sizes: list[int | None] = list(examples) if examples is not None else [None] * len(names)
    own = own or {}
    peers = [
        await start_peer(
            hub, name, seed=i, section=own.get(name, section), trainer=trainer, budget=budget, examples=size, spec=spec
        )
        for i, (name, budget, size) in enumerate(zip(names, budgets, sizes, strict=True))
    ]
    for peer in peers:
        others = [p.id for p in peers if p is not peer]
        for other in others:
            peer.table.saw(other, "bootstrap", member=True)
        peer.view.fill(others)
    return peers


@asynccontextmanager
async def fake_swarm(seed: int = 0, **faults: float) -> AsyncIterator[FakeHub]:
    """A hub whose nursery also runs the peers' services; all of it is cancelled on leaving."""
    async with trio.open_nursery() as nursery:
        yield FakeHub(nursery, random.Random(seed), **faults)
        nursery.cancel_scope.cancel()


async def wait_until(condition: Callable[[], bool]) -> None:
    # The services expose no event for most of what the tests wait on; on virtual time, polling is free.
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def exchange(initiator: Peer, responder: Peer) -> ExchangeResult | None:
    """One exchange, returned once both ends are done with it (the responder finishes a frame later)."""
    result = await initiator.exchange.initiate(responder.id)
    await wait_until(lambda: initiator.id not in responder.exchange.in_flight)
    return result


async def stop_mixing(peers: list[Peer]) -> None:
    """Refuse new exchanges everywhere, then let those in flight end, as `TaskRuntime.stop` does."""
    for peer in peers:
        peer.exchange.accepting = False
    # One tick first: an exchange a run loop spawned just before stopping starts now (`initiate` does not
    # check `accepting`), and `wait_idle` must see it.
    await trio.sleep(0.01)
    for peer in peers:
        await peer.exchange.wait_idle()


async def mix_for(
    hub: FakeHub, peers: list[Peer], seconds: float
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Every peer's parameters, then their run loops mix for `seconds`, then (mixing stopped) the parameters
    again."""
    before = [await p.params() for p in peers]
    for peer in peers:
        await hub.nursery.start(peer.exchange.run)
    await trio.sleep(seconds)
    await stop_mixing(peers)
    return before, [await p.params() for p in peers]


def declines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the exchange service logged as declined (a soft abort: neither a failure nor a rejection)."""
    return [r.getMessage() for r in caplog.records if r.name == "gossipd.exchange" and "declined" in r.getMessage()]


# -- numerics --------------------------------------------------------------------------------------------------


def flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([params[name].double().reshape(-1) for name in sorted(params)])


def sum_drift(before: list[dict[str, torch.Tensor]], after: list[dict[str, torch.Tensor]]) -> float:
    """‖Σ after − Σ before‖ / ‖Σ before‖ over all mixed parameters: 0 when the swarm's average is kept."""
    total_before = torch.stack([flat(p) for p in before]).sum(0)
    total_after = torch.stack([flat(p) for p in after]).sum(0)
    return float((total_after - total_before).norm() / total_before.norm())


def spread(models: list[dict[str, torch.Tensor]]) -> float:
    """Consensus distance: the root of the summed squared distances to the swarm's mean model."""
    stacked = torch.stack([flat(p) for p in models])  # (peers, parameters)
    return float((stacked - stacked.mean(0)).pow(2).sum().sqrt())


# -- a swarm that mixes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "trainer"),
    [
        ("plain", "stepping"),
        ("powergossip", "stepping"),
        ("auto", "stepping"),
        pytest.param("plain", "paused"),
    ],
)
async def test_three_peers_mix_to_consensus_and_keep_the_swarm_average(
    algorithm: str, trainer: Trainers, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        async with fake_swarm(seed=1, latency=0.02, jitter=0.01) as hub:
            peers = await start_peers(hub, "ABC", section=gossip(algorithm), trainer=trainer)
            before, after = await mix_for(hub, peers, 30)

    for peer in peers:
        stats = peer.exchange.statistics()
        assert stats.exchanges >= 10 and stats.failed == 0 and stats.rejections == {}, (peer.id, stats)
        partners = {p.id: peer.table.get(p.id) for p in peers if p is not peer}
        assert all(r is not None and r.exchanges > 0 for r in partners.values()), partners
    shrink = 1e-3 if algorithm == "plain" else 0.1  # PowerGossip moves rank 1 at a time (auto starts there)
    assert spread(after) < shrink * spread(before), (spread(before), spread(after))
    assert sum_drift(before, after) <= 1e-5  # every delta was applied, at both ends of its exchange
    reported = [p.exchange.statistics().consensus_distance for p in peers]
    assert all(d is not None and d < spread(before) / 2 for d in reported), reported
    # How far the exchanges moved each peer per training step: none counted while the trainers stood still.
    mixing = [p.exchange.statistics().mix_per_step for p in peers]
    if trainer == "stepping":
        assert all(m is not None and m > 0 for m in mixing), mixing
    else:
        assert mixing == [None, None, None]


@pytest.mark.parametrize(
    ("latency", "save", "modes"), [(0.001, False, {1, FULL}), (0.5, False, {1, FULL}), (0.5, True, {1, FULL})]
)
async def test_auto_edges_send_whole_models_on_a_fast_link_and_on_one_whose_round_trips_cost_every_mode_alike(
    latency: float, save: bool, modes: set[int], autojump_clock: trio.testing.MockClock
) -> None:
    """The logistic model's ladder is rank 1, then whole models. Time-paced every 0.5 s, all of it to spend
    (the default `time_share`), an exchange may take 500 ms: a 1 ms link fits whole models after three calm
    exchanges at rank 1. On a 500 ms one a round trip alone takes 1 s, two budgets, whatever is sent: rank 1
    is over the budget, whole models cost no more, and the edge measures them and moves to them (the
    allowance of `gossipd.mixing.link_budget`). With `save` alike: there is nothing to save for where whole
    models cost what rank 1 does."""
    with trio.fail_after(120):
        async with fake_swarm(seed=2, latency=latency) as hub:
            # Paused trainers: a snapshot is taken at once, so an exchange's time is the link's alone.
            peers = await start_peers(hub, "ABC", section=gossip("auto", save=save), trainer="paused")
            before, after = await mix_for(hub, peers, 40)
    assert sum_drift(before, after) <= 1e-5
    for peer in peers:
        stats = peer.exchange.statistics()
        assert stats.exchange_budget == pytest.approx(0.5)
        seen = {mode for link in stats.links.values() for mode in link.seconds}
        assert seen == modes, (peer.id, seen)
        assert stats.links and {link.last_mode for link in stats.links.values()} == {FULL}
        if latency > 0.01:
            assert all("allowance" in link.reason for link in stats.links.values()), stats.links
        for link in stats.links.values():
            assert link.bytes_per_second is not None and link.bytes_per_second > 0
            assert link.reason


async def test_a_peer_with_a_byte_cap_mixes_in_an_uncapped_swarm_and_no_exchange_it_is_in_exceeds_its_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A's own `max_exchange_bytes` lies below the logistic model's whole model (42 bytes in float16; rank 1,
    the cheapest rung, is allowed whatever the cap). B and C climb to whole models with each other; A starts
    none, refuses the ones B and C open (`over-cap`, no failure) and they learn to stay at rank 1 with it.
    The pairs' sums hold throughout."""
    capped = dataclasses.replace(gossip("auto"), config=AutoConfig(max_exchange_bytes=40))
    with trio.fail_after(120):
        async with fake_swarm(seed=2, latency=0.001) as hub:
            peers = await start_peers(hub, "ABC", section=gossip("auto"), trainer="paused", own={"A": capped})
            before, after = await mix_for(hub, peers, 40)
    assert sum_drift(before, after) <= 1e-5
    a, b, c = peers
    assert spread(after) < spread(before) / 2
    assert {mode for link in a.exchange.statistics().links.values() for mode in link.seconds} == {1}
    for neighbour, other in ((b, c), (c, b)):
        stats = neighbour.exchange.statistics()
        assert stats.failed == 0
        to_a, to_other = stats.links[a.id], stats.links[other.id]
        assert set(to_a.seconds) == {1} and to_a.ceiling == 0, to_a
        assert "neighbour's byte cap" in to_a.reason
        assert FULL in to_other.seconds  # the uncapped pair still sends whole models
    assert a.exchange.statistics().failed == 0 and a.exchange.statistics().exchanges > 10


async def test_each_peers_ledger_books_every_exchange_and_byte_to_the_neighbour_it_was_with(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(120):
        async with fake_swarm(seed=2, latency=0.02) as hub:
            peers = await start_peers(hub, "ABC", section=gossip("powergossip"), trainer="stepping")
            await mix_for(hub, peers, 20)
    by_id = {p.id: p for p in peers}
    for peer in peers:
        stats, entries = peer.exchange.statistics(), peer.exchange.ledger.entries()
        assert {e.peer_id for e in entries} == {p.id for p in peers if p is not peer}
        assert sum(e.exchanges for e in entries) == stats.exchanges > 0
        assert sum(e.bytes_sent for e in entries) == stats.bytes_sent
        assert sum(e.bytes_received for e in entries) == stats.bytes_received
        for entry in entries:
            # What this peer booked as the neighbour answering is what the neighbour booked as us starting.
            theirs = by_id[entry.peer_id].exchange.ledger.get(peer.id)
            assert theirs is not None
            assert (entry.answered, entry.started) == (theirs.started, theirs.answered)
            assert entry.bytes_sent == theirs.bytes_received and entry.bytes_received == theirs.bytes_sent


async def test_a_swarm_weighted_by_samples_keeps_its_weighted_sum_and_converges_to_the_weighted_average(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sizes = [100, 2000, 400]
    with trio.fail_after(120):
        async with fake_swarm(seed=3, latency=0.02) as hub:
            peers = await start_peers(hub, "ABC", section=gossip("plain"), trainer="paused", examples=sizes)
            before, after = await mix_for(hub, peers, 30)

    def weighted(models: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        return sum((flat(m) * n for m, n in zip(models, sizes, strict=True)), torch.zeros(()))

    drift = float((weighted(after) - weighted(before)).norm() / weighted(before).norm())
    assert drift <= 1e-6
    target = weighted(before) / sum(sizes)
    assert all(torch.allclose(flat(m), target, atol=1e-5) for m in after)
    assert sum_drift(before, after) > 1e-3  # the plain sum is not what is kept


async def test_exchanges_a_peer_runs_at_once_pull_its_model_no_further_than_its_neighbours_average(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A holds fewer examples than its four neighbours, which all open exchanges with it at once: each alone
    # pulls A over half way to the neighbour (the sample pull, 1.2 × 1/2), and three of them from one
    # snapshot would pull it past their average (0.6 + 0.4 + 0.3 with degrees 1, 2 and 3). The degree A
    # announces keeps the pulls of its overlapping exchanges within 1, and it answers the rest busy.
    sizes = [1000, 1500, 1500, 1500, 1500]
    with trio.fail_after(120):
        async with fake_swarm(seed=5, latency=0.2) as hub:
            peers = await start_peers(hub, "ABCDE", section=gossip("plain"), trainer="paused", examples=sizes)
            hub_peer, leaves = peers[0], peers[1:]
            before = [await p.params() for p in peers]
            for leaf in leaves:
                leaf.view.members.clear()
                leaf.view.fill([hub_peer.id])
                await hub.nursery.start(leaf.exchange.run)
            await trio.sleep(20)
            await stop_mixing(peers)
            after = [await p.params() for p in peers]

    most, total = hub_peer.exchange.overlapping_pulls()
    assert most >= 2  # exchanges did overlap at A
    assert total <= 1 + 1e-9, total
    assert hub_peer.exchange.pulls.declined > 0
    assert hub_peer.exchange.statistics().exchanges >= 20

    def weighted(models: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        return sum((flat(m) * n for m, n in zip(models, sizes, strict=True)), torch.zeros(()))

    assert float((weighted(after) - weighted(before)).norm() / weighted(before).norm()) <= 1e-6
    assert spread(after) < spread(before) / 10


# -- a hung peer ---------------------------------------------------------------------------------------------


async def test_a_hung_peer_costs_one_timeout_per_attempt_never_a_stall_and_is_backed_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Only A starts exchanges (B and C answer), so every gap between A's exchanges with B is A's own doing.
    hang_for = 60.0
    with trio.fail_after(200):
        async with fake_swarm(seed=2, latency=0.02) as hub:
            a, b, c = await start_peers(hub, "ABC", section=gossip(), trainer="stepping")
            await hub.nursery.start(a.exchange.run)
            await trio.sleep(5)
            assert {t.peer for t in a.exchange.attempts if t.succeeded} == {b.id, c.id}
            hung_at = trio.current_time()
            hub.hang(c.id)
            await trio.sleep(hang_for)
            revived_at = trio.current_time()
            hub.revive(c.id)
            await wait_until(
                lambda: any(t.peer == c.id and t.succeeded and t.ended > revived_at for t in a.exchange.attempts)
            )
            recovered_at = trio.current_time()

    with_b = [t.ended for t in a.exchange.attempts if t.peer == b.id and t.succeeded and hung_at < t.ended < revived_at]
    gaps = [later - earlier for earlier, later in itertools.pairwise([hung_at, *with_b, revived_at])]
    assert len(with_b) >= hang_for / (1.5 * INTERVAL), len(with_b)  # as often as the interval allows
    assert max(gaps) < 3 * INTERVAL, max(gaps)  # the slot stuck on C never holds up the loop

    with_c = [t for t in a.exchange.attempts if t.peer == c.id and hung_at <= t.started < revived_at]
    assert len(with_c) >= 4 and not any(t.succeeded for t in with_c)
    for attempt in with_c:
        if attempt.ended < revived_at:  # each costs one deadline, in virtual time
            assert attempt.ended - attempt.started == pytest.approx(TIMEOUT, abs=1e-6)
    # Back-off: no attempt before the previous failure's back-off is over, and the back-off doubles.
    for earlier, later in itertools.pairwise(with_c):
        assert earlier.backoff_until is not None and later.started >= earlier.backoff_until
    backoffs = [t.backoff_until - t.ended for t in with_c if t.backoff_until is not None and t.ended < revived_at]
    assert backoffs[0] == pytest.approx(1.0) and backoffs[-1] >= 8.0, backoffs
    assert all(later == pytest.approx(2 * earlier) for earlier, later in itertools.pairwise(backoffs)), backoffs
    assert recovered_at - revived_at <= 30.0 + TIMEOUT  # once C answers again, A mixes with it again


async def test_a_peer_backed_off_for_failures_is_answered_as_soon_as_it_is_back_and_a_penalised_one_is_not(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A peer whose process was paused (SIGSTOP, a laptop asleep) comes back backed off by every neighbour that
    # tried it meanwhile. Were its own exchanges refused too, it would be cut off for the whole back-off
    # whenever the neighbours it still had went away (a daemon test saw 8 s). Only a rejection refuses.
    caplog.set_level(logging.DEBUG, logger="gossipd.exchange")
    with trio.fail_after(200):
        async with fake_swarm(seed=11, latency=0.02) as hub:
            a, c = await start_peers(hub, "AC", section=gossip(), trainer="paused")
            assert await exchange(a, c) is not None
            hub.hang(c.id)
            for _ in range(4):
                assert await a.exchange.initiate(c.id) is None  # each costs A one deadline
            hub.revive(c.id)
            record = a.table.get(c.id)
            assert record is not None and record.consecutive_failures == 4
            assert record.backoff_until is not None and record.backoff_until - trio.current_time() > 7.0
            assert not a.table.is_live(c.id)  # A starts none with C for 8 s ...
            answered_at = trio.current_time()
            answered = await exchange(c, a)  # ... but answers the one C starts, at once
            answered_after = trio.current_time() - answered_at
            live_after = a.table.is_live(c.id)  # and the success ends the back-off

            a.table.back_off(c.id, REJECTION_BACKOFF)  # as after a message A had to reject
            refused = await exchange(c, a)

    assert answered is not None and answered_after < 1.0
    assert live_after
    assert refused is None
    assert any("backoff" in m for m in declines(caplog)), declines(caplog)


async def test_a_far_neighbour_is_clipped_at_once_but_judged_a_suspect_only_after_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    robust = RobustSection(radius=1.0, suspect_after=3, suspect_grace=60.0, suspect_backoff=30.0)

    def far_away(model: torch.nn.Module) -> None:
        with torch.no_grad():
            for tensor in model.parameters():
                tensor.fill_(1e6)

    with trio.fail_after(200):
        async with fake_swarm(seed=12, latency=0.01) as hub:
            a, m = await start_peers(hub, "AM", section=gossip(), trainer="paused")
            a.exchange.clipper = Clipper(robust)
            await m.trainer.at_boundary(lambda: far_away(m.trainer.trainer.model))
            for _ in range(4):  # far every time, from its first exchange on
                assert await exchange(a, m) is not None
            within = (a.exchange.statistics().suspects, a.table.refuses(m.id), a.table.is_live(m.id))
            await trio.sleep(robust.suspect_grace)
            await m.trainer.at_boundary(lambda: far_away(m.trainer.trainer.model))
            assert await exchange(a, m) is not None
            after = (a.exchange.statistics().suspects, a.table.refuses(m.id), a.table.is_live(m.id))

    assert a.exchange.statistics().clipped == 5  # clipped every time, grace or not
    assert within == (0, False, True)  # a newcomer as far as an attacker is not left alone at first ...
    assert after == (1, True, False)  # ... but one still that far after the grace is


# -- a killed peer -------------------------------------------------------------------------------------------


async def test_a_killed_peer_fails_the_exchange_at_once_and_a_revived_one_starts_the_edge_afresh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    latency = 0.25
    with trio.fail_after(60):
        async with fake_swarm(seed=3, latency=latency) as hub:
            survivor, victim = await start_peers(hub, "SV", section=gossip("powergossip"), trainer="paused")
            start = [await survivor.params(), await victim.params()]
            first = await exchange(survivor, victim)
            assert first is not None
            old_epoch = first.edge.epoch
            assert survivor.exchange.edges[victim.id].key == victim.exchange.edges[survivor.id].key

            # The victim dials at 0 and the hellos cross; from 2 latencies on the survivor has sent its round
            # and waits for the victim's, due at 4: kill the victim in between.
            async with trio.open_nursery() as attempt:
                attempt.start_soon(victim.exchange.initiate, survivor.id)
                await trio.sleep(2.5 * latency)
                assert survivor.exchange.in_flight == {victim.id}
                hub.kill(victim.id)
                killed_at = trio.current_time()
                with trio.fail_after(TIMEOUT / 10):
                    await wait_until(lambda: survivor.exchange.statistics().failed == 1)
                failed_after = trio.current_time() - killed_at
            assert victim.id not in survivor.exchange.edges  # the edge was mid-round: dropped
            assert survivor.exchange.in_flight == set()
            record = survivor.table.get(victim.id)
            assert record is not None and record.consecutive_failures == 1 and record.backoff_until is not None

            dialled_at = trio.current_time()
            assert await survivor.exchange.initiate(victim.id) is None
            dial_failed_after = trio.current_time() - dialled_at
            assert hub.dials_between(survivor.id, victim.id)[-1].outcome == "unreachable"

            hub.revive(victim.id)  # as a daemon restarted with its edges (from a checkpoint) would be
            # Both ends backed each other off after the failures; a run loop would wait that out too.
            await wait_until(lambda: survivor.table.is_live(victim.id) and victim.table.is_live(survivor.id))
            again = await exchange(survivor, victim)
            end = [await survivor.params(), await victim.params()]

    assert failed_after <= 0.05  # not the 5 s deadline
    assert dial_failed_after <= 2 * latency
    assert again is not None and again.reset and again.edge.epoch != old_epoch
    assert survivor.exchange.edges[victim.id].key == victim.exchange.edges[survivor.id].key
    assert sum_drift(start, end) <= 1e-5  # the aborted exchange moved neither model


@pytest.mark.parametrize("algorithm", ["plain", "powergossip"])
async def test_an_exchange_that_ends_after_the_model_was_replaced_leaves_the_new_model_and_no_edge(
    algorithm: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A peer that copies a neighbour's model (joining, or after its own blew up) while an exchange runs: the
    exchange's delta and edge were computed from the model that is gone, and applied to the new one they
    would move it by that old difference (and carry Choco's old public copies on)."""
    with trio.fail_after(60):
        async with fake_swarm(seed=4, latency=0.25) as hub:
            a, b = await start_peers(hub, "AB", section=gossip(algorithm), trainer="paused")
            assert await exchange(a, b) is not None  # an edge in step at both ends
            model = a.trainer.trainer.model
            copied = {name: value + 1.0 for name, value in model.state_dict().items()}
            async with trio.open_nursery() as running:
                running.start_soon(a.exchange.initiate, b.id)
                await wait_until(lambda: b.id in a.exchange._read_at)  # it has read the model
                # What the task runtime does when it copies a neighbour's model (task_runtime.py).
                await a.trainer.at_boundary(lambda: a.trainer.load_model_state(copied, 100))
                a.exchange.forget_all_edges()
                assert a.exchange.in_flight == {b.id}
            after = await a.params()
            assert a.exchange.counters.voided == 1
            assert b.id not in a.exchange.edges
            again = await exchange(a, b)

    assert all(torch.equal(after[name], copied[name]) for name in after)  # not moved by the old exchange
    assert again is not None and again.reset  # the next exchange starts the edge afresh at both ends
    assert a.exchange.edges[b.id].key == b.exchange.edges[a.id].key


# -- both ends at once ---------------------------------------------------------------------------------------


async def test_simultaneous_exchanges_on_one_edge_are_declined_as_busy_and_leave_the_edge_intact(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gossipd.exchange")
    with trio.fail_after(60):
        async with fake_swarm(seed=4, latency=0.05) as hub:
            a, b = await start_peers(hub, "AB", section=gossip("powergossip"), trainer="stepping")
            start = [await a.params(), await b.params()]
            assert await exchange(a, b) is not None
            key = a.exchange.edges[b.id].key

            results: dict[str, ExchangeResult | None] = {}

            async def initiate(peer: Peer, other: Peer) -> None:
                results[peer.id] = await peer.exchange.initiate(other.id)

            async with trio.open_nursery() as both:  # A→B and B→A, each started before the other's hello lands
                both.start_soon(initiate, a, b)
                both.start_soon(initiate, b, a)
            collided = {p.id: p.exchange.statistics() for p in (a, b)}
            records = [a.table.get(b.id), b.table.get(a.id)]
            edges = (a.exchange.edges[b.id].key, b.exchange.edges[a.id].key)

            later = [await exchange(*((a, b) if i % 2 else (b, a))) for i in range(6)]
            end = [await a.params(), await b.params()]

    assert results == {a.id: None, b.id: None}
    assert sum("busy" in m for m in declines(caplog)) == 2, declines(caplog)  # each attempt met the other's
    for stats in collided.values():
        assert (stats.exchanges, stats.failed, stats.rejections) == (1, 0, {})  # declined: not a failure
    assert all(r is not None and r.consecutive_failures == 0 and r.backoff_until is None for r in records)
    assert edges == (key, key)  # neither end touched the edge
    assert all(r is not None and not r.reset for r in later)  # and it carried on in step: never reset
    assert sum_drift(start, end) <= 1e-5
    assert spread(end) < spread(start) / 2


# -- hostile or broken peers ---------------------------------------------------------------------------------


def nan_session(victim: Peer, attacker: str) -> ExchangeSession:
    """A well-behaved exchange end whose model has diverged to NaN."""
    params = {name: torch.full(shape, math.nan) for name, shape in victim.exchange.layout.shapes.items()}
    return ExchangeSession(
        algorithm=victim.exchange.algorithm,
        params=params,
        layout=victim.exchange.layout,
        self_id=attacker.encode(),
        peer_id=victim.id.encode(),
        edge=None,
        degree=1,
        task=TASK,
        fixed_weight=None,
        rng=random.Random(5),
        device=CPU,
        momentum_every=victim.exchange.gossip.momentum_every,  # the victim's task: the same message layout
    )


def bad_round(kind: str, session: ExchangeSession, victim_hello: Message) -> bytes:
    """The attacker's message for the round after the hellos, wrong in exactly one way."""
    if kind == "garbage":
        return b"\xc1 not msgpack at all"
    (outgoing,) = session.receive(victim_hello)
    if kind == "wrong-task":
        finite = bytes(len(outgoing.data))  # zeros: only the task is wrong
        return encode_message(dataclasses.replace(outgoing, task=OTHER_TASK, data=finite))
    return encode_message(outgoing)  # NaN tensors, otherwise in order


async def misbehave(stream: FrameStream, kind: str, session: ExchangeSession, *, hello_sent: bool) -> Message:
    """Play the attacker's end of an exchange; returns the ABORT the victim answers with."""
    if not hello_sent:
        await stream.send(encode_message(session.start()))
    victim_hello = decode_message(await stream.receive(HELLO_LIMIT), max_size=HELLO_LIMIT)
    await stream.send(bad_round(kind, session, victim_hello))
    while True:
        message = decode_message(await stream.receive(1 << 20), max_size=1 << 20)
        if message.type is MessageType.ABORT:
            return message


@dataclass(frozen=True)
class Rejection:
    """The victim after one exchange with a misbehaving peer."""

    rejected_at: float
    statistics: ExchangeStatistics
    aborts: list[Message]  # the ABORTs the attacker received
    live: bool  # whether the victim would pick the attacker again right away
    backoff_until: float | None
    edge_kept: bool
    model_unchanged: bool


async def provoke_rejection(kind: str, direction: str) -> Rejection:
    aborts: list[Message] = []
    with trio.fail_after(60):
        async with fake_swarm(seed=5, latency=0.01) as hub:
            victim = await start_peer(hub, "V", seed=0, section=gossip(), trainer="paused")
            attacker = hub.add_peer("M")
            victim.table.saw(attacker.peer_id, "pubsub", member=True)
            before = await victim.params()
            session = nan_session(victim, attacker.peer_id)
            if direction == "victim-answers":
                stream = await attacker.open_stream(victim.id, MIX_PROTOCOL)
                aborts.append(await misbehave(stream, kind, session, hello_sent=False))
                await wait_until(lambda: victim.exchange.statistics().failed > 0)
            else:
                answered = trio.Event()

                async def answer(stream: FrameStream) -> None:
                    await stream.send(encode_message(session.start()))
                    aborts.append(await misbehave(stream, kind, session, hello_sent=True))
                    with pytest.raises(StreamClosed):  # after the ABORT, the victim resets the stream
                        await stream.receive(HELLO_LIMIT)
                    answered.set()

                attacker.set_handler(MIX_PROTOCOL, answer)
                assert await victim.exchange.initiate(attacker.peer_id) is None
                await answered.wait()
            rejected_at = trio.current_time()
            record = victim.table.get(attacker.peer_id)
            after = await victim.params()
    return Rejection(
        rejected_at=rejected_at,
        statistics=victim.exchange.statistics(),
        aborts=aborts,
        live=victim.table.is_live(attacker.peer_id),
        backoff_until=record.backoff_until if record is not None else None,
        edge_kept=attacker.peer_id in victim.exchange.edges,
        model_unchanged=all(torch.equal(before[name], after[name]) for name in before),
    )


@pytest.mark.parametrize("direction", ["victim-answers", "victim-initiates"])
@pytest.mark.parametrize(
    ("kind", "reason"), [("garbage", "malformed"), ("wrong-task", "wrong-task"), ("nan", "non-finite")]
)
async def test_a_bad_message_is_rejected_counted_and_backed_off_and_never_touches_the_model(
    kind: str, reason: str, direction: str, autojump_clock: trio.testing.MockClock
) -> None:
    seen = await provoke_rejection(kind, direction)
    assert seen.statistics.rejections == {reason: 1}
    assert (seen.statistics.exchanges, seen.statistics.failed) == (0, 1)
    assert [m.reason for m in seen.aborts] == [reason]  # the attacker was told why
    assert not seen.live and seen.backoff_until is not None and seen.backoff_until > seen.rejected_at
    assert not seen.edge_kept
    assert seen.model_unchanged


async def test_a_peer_that_sent_a_rejected_message_is_left_alone_for_the_rejection_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = await provoke_rejection("garbage", "victim-answers")
    assert seen.backoff_until is not None
    assert seen.backoff_until >= seen.rejected_at + REJECTION_BACKOFF - 0.1


# -- stopping ------------------------------------------------------------------------------------------------


async def probe(network: FakeNetwork, target: str) -> Message:
    """Open an exchange with a bare hello and return the first answer."""
    stream = await network.open_stream(target, MIX_PROTOCOL)
    hello = Message(type=MessageType.HELLO, task=TASK, epoch=1, round=0, degree=1)
    await stream.send(encode_message(hello))
    return decode_message(await stream.receive(HELLO_LIMIT), max_size=HELLO_LIMIT)


async def test_a_stopping_peer_refuses_new_exchanges_and_wait_idle_returns_when_the_last_one_ends(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gossipd.exchange")
    latency = 0.25
    with trio.fail_after(60):
        async with fake_swarm(seed=6, latency=latency) as hub:
            a, b, c = await start_peers(hub, "ABC", section=gossip(), trainer="paused")
            idle: list[tuple[float, int, int]] = []

            async def wait_idle() -> None:
                await b.exchange.wait_idle()
                idle.append((trio.current_time(), len(b.exchange.in_flight), b.exchange.statistics().exchanges))

            async with trio.open_nursery() as scenario:
                started = trio.current_time()
                scenario.start_soon(a.exchange.initiate, b.id)  # B answers from 2 latencies to 4
                await trio.sleep(2.5 * latency)
                assert b.exchange.in_flight == {a.id}
                b.exchange.accepting = False
                scenario.start_soon(wait_idle)
                refused = await probe(c.network, b.id)
                declined = await c.exchange.initiate(b.id)
                loop_started_at = trio.current_time()
                await hub.nursery.start(b.exchange.run)  # stopping, B's own loop starts nothing either
                await trio.sleep(10)
            waited_at = trio.current_time()
            await b.exchange.wait_idle()
            idle_again_after = trio.current_time() - waited_at

    assert (refused.type, refused.reason) == (MessageType.ABORT, "stopping")
    assert declined is None and any("stopping" in m for m in declines(caplog))
    assert c.exchange.statistics().failed == 0  # a refusal is a decline, not a failure
    # wait_idle returned as soon as A's exchange (begun before stopping) ended, and that exchange completed.
    assert len(idle) == 1
    idle_at, in_flight, exchanges = idle[0]
    assert (in_flight, exchanges) == (0, 1)
    assert idle_at - started == pytest.approx(4 * latency, abs=0.02)
    assert a.exchange.statistics().exchanges == 1
    assert [d for d in hub.dials if d.source == b.id and d.started >= loop_started_at] == []
    assert idle_again_after == 0


async def test_wait_idle_returns_even_when_another_exchange_began_while_it_waited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    latency = 0.25
    with trio.fail_after(60):
        async with fake_swarm(seed=6, latency=latency) as hub:
            a, b, c = await start_peers(hub, "ABC", section=gossip(), trainer="paused")
            returned: list[float] = []

            async def wait_idle() -> None:
                await a.exchange.wait_idle()
                returned.append(trio.current_time())

            hub.nursery.start_soon(b.exchange.initiate, a.id)  # A answers from 0.5 to 1.0
            await trio.sleep(0.1)
            hub.nursery.start_soon(c.exchange.initiate, a.id)  # ... and from 0.6 to 1.1
            await wait_until(lambda: a.exchange.in_flight == {b.id})
            hub.nursery.start_soon(wait_idle)
            await wait_until(lambda: a.exchange.in_flight == {b.id, c.id})
            await wait_until(lambda: not a.exchange.in_flight)
            idle_at = trio.current_time()
            await trio.sleep(TIMEOUT)

    assert a.exchange.statistics().exchanges == 2
    assert returned == [pytest.approx(idle_at, abs=0.02)]


# -- one stream, many exchanges ------------------------------------------------------------------------------


async def test_a_pair_runs_its_exchanges_on_one_stream_until_it_is_too_old_to_reuse(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(120):
        async with fake_swarm(seed=7, latency=0.01) as hub:
            a, b = await start_peers(hub, "AB", section=gossip(), trainer="paused")
            for _ in range(5):
                assert await exchange(a, b) is not None
            assert hub.statistics().streams_opened == 1  # opened, negotiated once; four exchanges reused it
            assert await exchange(b, a) is not None  # the other end starts on a stream of its own
            assert hub.statistics().streams_opened == 2
            await trio.sleep(STREAM_REUSE)
            assert await exchange(a, b) is not None  # idle too long to reuse: a fresh stream
            assert hub.statistics().streams_opened == 3
    assert a.exchange.statistics().exchanges == b.exchange.statistics().exchanges == 7
    assert a.exchange.statistics().failed == b.exchange.statistics().failed == 0


async def test_two_exchanges_that_end_together_each_drop_the_stale_streams_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Both park their streams at one instant and find the same stale ones; dropping one yields, so each
    # must take its stale streams out before the first await (a second pop of the same one crashed the task).
    with trio.fail_after(120):
        async with fake_swarm(seed=7, latency=0.01) as hub:
            a, b, c, d, e = await start_peers(hub, "ABCDE", section=gossip(), trainer="paused")
            assert await exchange(a, b) is not None
            assert await exchange(a, c) is not None
            await trio.sleep(STREAM_REUSE)
            async with trio.open_nursery() as both:
                both.start_soon(exchange, a, d)
                both.start_soon(exchange, a, e)
            resets = hub.statistics().streams_reset
            assert await exchange(a, d) is not None and await exchange(a, e) is not None
            assert hub.statistics().streams_opened == 4  # the last two went on the streams parked together
            assert hub.statistics().streams_reset == resets
    assert a.exchange.statistics().exchanges == 6
    assert a.exchange.statistics().failed == 0


async def test_an_answering_end_in_step_skips_its_hello_also_with_two_power_iterations(
    autojump_clock: trio.testing.MockClock,
) -> None:
    section = dataclasses.replace(gossip("powergossip"), config=PowerGossipConfig(rank=1, iterations=2))
    with trio.fail_after(120):
        async with fake_swarm(seed=7, latency=0.01) as hub:
            a, b = await start_peers(hub, "AB", section=section, trainer="paused")
            before = await a.params(), await b.params()
            frames, sent = [], []
            for opener, answerer in ((a, b), (a, b), (b, a)):
                start_frames, start_sent = hub.statistics().frames_sent, answerer.exchange.statistics().bytes_sent
                assert await exchange(opener, answerer) is not None
                frames.append(hub.statistics().frames_sent - start_frames)
                sent.append(answerer.exchange.statistics().bytes_sent - start_sent)
            after = await a.params(), await b.params()
    # A new edge: both hellos and two rounds each way. In step: the opener's hello only, whichever end opens.
    assert frames == [6, 5, 5]
    # A fresh edge's hello: a random 64-bit epoch (msgpack's 9-byte form), round 0, degree 1.
    hello = framed_size(len(encode_message(Message(type=MessageType.HELLO, task=TASK, epoch=2**63, round=0, degree=1))))
    assert sent[0] - sent[1] == hello  # the same two rounds, less the answering end's hello
    assert a.exchange.edges[b.id].key == b.exchange.edges[a.id].key and a.exchange.edges[b.id].round == 3
    drift = sum_drift(list(before), list(after))
    assert drift <= 1e-5


async def test_a_busy_refusal_on_a_used_stream_leaves_it_open_for_the_next_try(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_swarm(seed=9, latency=0.01) as hub:
            a, b = await start_peers(hub, "AB", section=gossip(), trainer="paused")
            assert await exchange(a, b) is not None
            b.exchange.in_flight.add(a.id)  # B is (as far as it knows) already mixing with A
            assert await a.exchange.initiate(b.id) is None  # declined as busy ...
            b.exchange.in_flight.discard(a.id)
            assert await exchange(a, b) is not None  # ... on a stream both ends kept
            assert hub.statistics().streams_opened == 1
            assert hub.statistics().streams_reset == 0
    assert a.exchange.statistics().exchanges == 2
    assert a.exchange.statistics().failed == 0


async def test_a_message_for_another_task_on_a_used_stream_is_rejected_counted_and_ends_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_swarm(seed=10, latency=0.01) as hub:
            a, b = await start_peers(hub, "AB", section=gossip(), trainer="paused")
            assert await exchange(a, b) is not None
            stream, _ = a.exchange._parked[b.id]  # the stream A keeps for its next exchange with B
            hello = Message(type=MessageType.HELLO, task=OTHER_TASK, epoch=1, round=0, degree=1)
            await stream.send(encode_message(hello))
            with pytest.raises(StreamClosed):
                await stream.receive(HELLO_LIMIT)  # B reset it
    assert b.exchange.statistics().rejections == {"wrong-task": 1}
    assert b.table.get(a.id).backoff_until is not None  # type: ignore[union-attr]


async def test_a_stream_the_peer_let_go_is_replaced_at_once_and_not_counted_as_a_failure(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gossipd.services.exchange.STREAM_IDLE", 1.0)  # B gives idle streams up before A would
    with trio.fail_after(60):
        async with fake_swarm(seed=8, latency=0.01) as hub:
            a, b = await start_peers(hub, "AB", section=gossip(), trainer="paused")
            assert await exchange(a, b) is not None
            await trio.sleep(2.0)  # B has reset the stream A keeps for its next exchange
            assert hub.statistics().streams_reset == 1
            assert await exchange(a, b) is not None
            assert hub.statistics().streams_opened == 2
            await b.exchange.stop_accepting()  # B lets its idle stream go at once ...
            await trio.sleep(0.1)
            assert hub.statistics().streams_reset == 2
            assert await exchange(a, b) is None  # ... and refuses A's fresh one: a decline, not a failure
    assert a.exchange.statistics().exchanges == 2
    assert a.exchange.statistics().failed == b.exchange.statistics().failed == 0
    assert not b.exchange.in_flight and not a.exchange.in_flight


# -- step pacing ---------------------------------------------------------------------------------------------


class RecordingPacer(StepPacer):
    """The pacer unchanged, noting any chunk the trainer asked for from beyond the lag of its last mix."""

    def __init__(self, every: int) -> None:
        super().__init__(every)
        self.overruns: list[tuple[int, int]] = []
        self.mixes = 0

    def chunk(self, step: int, wanted: int) -> int:
        if step > self.last_mix + self.lag:
            self.overruns.append((step, self.last_mix))
        return super().chunk(step, wanted)

    def mixed(self, step: int) -> None:
        self.mixes += 1
        super().mixed(step)


def paced(peer: Peer, every: int) -> RecordingPacer:
    """Swap the pacer the exchange service installed for a recording one."""
    pacer = RecordingPacer(every)
    assert peer.trainer.pacer is not None
    peer.trainer.pace(pacer, may_hold=peer.exchange.can_mix, hold_limit=TIMEOUT)
    return pacer


def steps_of(peer: Peer) -> list[Chunk]:
    return [c for c in CHUNKS if c.trainer is peer.trainer.trainer]


Models = list[dict[str, torch.Tensor]]


async def paced_swarm(names: str, every: int, seed: int) -> tuple[list[Peer], list[RecordingPacer], Models, Models]:
    """Step-paced stepping peers on a fast link, mixing for 30 virtual seconds; their models before and after."""
    with trio.fail_after(120):
        async with fake_swarm(seed=seed, latency=0.02, jitter=0.01) as hub:
            peers = await start_peers(hub, names, section=gossip(steps_per_exchange=every), trainer="stepping")
            pacers = [paced(p, every) for p in peers]
            before, after = await mix_for(hub, peers, 30)
    return peers, pacers, before, after


async def test_a_step_paced_swarm_starts_an_exchange_every_n_steps_and_never_trains_past_the_lag(
    autojump_clock: trio.testing.MockClock,
) -> None:
    every = 3
    peers, pacers, before, after = await paced_swarm("ABC", every, seed=7)

    for peer, pacer in zip(peers, pacers, strict=True):
        steps = peer.trainer.trainer.step
        succeeded = len([t for t in peer.exchange.attempts if t.succeeded])
        attempts = len(peer.exchange.attempts)
        assert steps >= 200, steps  # ~10 steps per virtual second: mixing this fast barely holds training
        # The trainers run in lock-step here, so two peers often start exchanges with each other at once and
        # both are declined as busy; each then retries after a random wait, and the next is due 3 steps on.
        assert 0.6 * steps / every <= succeeded <= steps / every + 1, (steps, succeeded, attempts)
        assert attempts <= 1.5 * steps / every, (steps, succeeded, attempts)
        assert pacer.overruns == [] and pacer.mixes >= succeeded
        assert peer.exchange.statistics().failed == 0
    assert spread(after) < 1e-3 * spread(before)
    assert sum_drift(before, after) <= 1e-5


async def test_a_step_paced_pair_mixes_once_an_interval_not_once_from_each_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # With one neighbour, the exchange each end starts every `every` steps mostly follows the one it just
    # answered: the interval passes instead, so the pair mixes about once per interval rather than twice.
    every = 3
    peers, pacers, before, after = await paced_swarm("AB", every, seed=5)

    for peer, pacer in zip(peers, pacers, strict=True):
        steps = peer.trainer.trainer.step
        stats = peer.exchange.statistics()
        assert steps >= 200, steps
        # Each exchange counts at both ends; twice per interval would be about 2 * steps / every.
        assert 0.6 * steps / every <= stats.exchanges <= 1.25 * steps / every, (steps, stats.exchanges)
        assert pacer.overruns == [] and stats.failed == 0
    # The end whose turn comes second lets it pass (which end that is can stay the same all along).
    skipped = sum(p.exchange.statistics().repeats_skipped for p in peers)
    assert skipped >= 0.3 * peers[0].trainer.trainer.step / every, skipped
    assert spread(after) < 1e-3 * spread(before)
    assert sum_drift(before, after) <= 1e-5


async def test_exchanges_slower_than_training_hold_a_step_paced_trainer_to_the_pace_of_mixing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An exchange takes ~4 latencies (1.2 s) against 0.1 s per training step: an unpaced peer takes a dozen
    # steps per mix, a step-paced one (1 step per exchange, lag 2) waits for its mixes.
    every, latency, seconds = 1, 0.3, 30.0
    with trio.fail_after(120):
        async with fake_swarm(seed=8, latency=latency) as hub:
            steady = await start_peers(hub, "AB", section=gossip(), trainer="stepping")
            held = await start_peers(hub, "CD", section=gossip(steps_per_exchange=every), trainer="stepping")
            pacers = [paced(p, every) for p in held]
            for peer in [*steady, *held]:
                await hub.nursery.start(peer.exchange.run)
            await trio.sleep(seconds)
            await stop_mixing([*steady, *held])

    for peer in steady:
        assert peer.trainer.statistics().held_seconds == 0
        assert peer.trainer.trainer.step >= 0.9 * seconds / TRAIN_CHUNK_SECONDS
    for peer, pacer in zip(held, pacers, strict=True):
        stats = peer.trainer.statistics()
        mixes = peer.exchange.statistics().exchanges
        assert pacer.overruns == []
        assert stats.held_seconds >= seconds / 3, stats.held_seconds
        assert mixes >= 10 and stats.step <= 3 * mixes, (stats.step, mixes)
        # Held to the mixes' pace: under a third of the steps of a peer that never waits.
        assert stats.step < 0.33 * steady[0].trainer.trainer.step


# A logistic regression wide enough that whole models (8 KB in float16) are about 16 times rank 1's bytes, and
# a link on which they take several times as long: what saving is for.
WIDE = InputSpec(kind="classification", input_shape=(128,), num_classes=32)
SLOW_LINK = {"latency": 0.05, "bandwidth": 4_000.0}  # seconds one way, bytes per second each way


async def test_auto_edges_that_save_skip_intervals_to_send_whole_models_on_a_slow_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Time-paced every 0.5 s on a 4 kB/s link, whole models of the wide model take about 2 s and capture the
    whole difference, rank 1 a few percent of it in a few hundred ms. Without `save` the edges stay on low
    ranks (whole models are measured once, over the budget); with it, they skip intervals and send whole
    models every few, the pairs' sums exact throughout."""
    with trio.fail_after(240):
        for save in (False, True):
            async with fake_swarm(seed=2, **SLOW_LINK) as hub:
                peers = await start_peers(hub, "ABC", section=gossip("auto", save=save), trainer="paused", spec=WIDE)
                before, after = await mix_for(hub, peers, 60)
            assert sum_drift(before, after) <= 1e-5
            for peer in peers:
                stats = peer.exchange.statistics()
                assert stats.failed == 0, stats
                reasons = [link.reason for link in stats.links.values()]
                if save:
                    assert any(r.startswith("saving for") or "saved from cheaper" in r for r in reasons), reasons
                else:
                    assert not any(r.startswith(("saving", "full")) for r in reasons), reasons


async def saving_swarm(save: bool, every: int, seconds: float) -> tuple[list[Peer], list[RecordingPacer], float]:
    """Three step-paced `auto` peers of the wide model on the slow link with 300 ms latency, mixing for
    `seconds`; the peers, their pacers, and how far the swarm's sum drifted."""
    async with fake_swarm(seed=2, **{**SLOW_LINK, "latency": 0.3}) as hub:
        section = gossip("auto", steps_per_exchange=every, save=save)
        peers = await start_peers(hub, "ABC", section=section, trainer="stepping", spec=WIDE)
        pacers = [paced(p, every) for p in peers]
        before, after = await mix_for(hub, peers, seconds)
    return peers, pacers, sum_drift(before, after)


async def test_a_step_paced_peer_that_saves_skips_intervals_and_steps_through_funded_exchanges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 5 steps of 0.1 s per exchange: a 0.5 s budget, as in the time-paced test above, on a link as slow with
    # 300 ms round trips: rank 1 takes 0.7 s, over the budget, and dearer modes capture far more per second.
    # Without `save` each exchange holds the trainer once its lag is spent; with it, a skipped interval counts
    # as a mix (the trainer goes on), and an exchange paid from saved intervals lets the trainer step through
    # its predicted time. (Summed over the three peers when written: held 15 s with saving, 26 s without.)
    every, seconds = 5, 40.0
    with trio.fail_after(240):
        held_peers, _, _ = await saving_swarm(False, every, seconds)
        peers, pacers, drift = await saving_swarm(True, every, seconds)
    assert drift <= 1e-5
    for peer, pacer in zip(peers, pacers, strict=True):
        stats = peer.exchange.statistics()
        reasons = [link.reason for link in stats.links.values()]
        assert any(r.startswith("saving for") or "saved from cheaper" in r for r in reasons), reasons
        assert pacer.overruns == []  # never past the lag of its last mix, skipped intervals counted as mixes
    # Still held at times: a rank-1 exchange on this link takes longer than the lag, whoever starts it. Summed
    # over the swarm, as the order in which the peers' tasks run varies from one run to the next.
    held = (
        sum(p.trainer.statistics().held_seconds for p in peers),
        sum(p.trainer.statistics().held_seconds for p in held_peers),
    )
    assert held[0] < 0.9 * held[1], held
    steps = sum(p.trainer.trainer.step for p in peers), sum(p.trainer.trainer.step for p in held_peers)
    assert steps[0] > steps[1], steps


async def test_a_task_that_names_no_pace_is_step_paced_and_0_paces_it_by_the_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    default = GossipSection(algorithm="plain", config=PlainConfig(), exchange_interval=INTERVAL)
    with trio.fail_after(60):
        async with fake_swarm(seed=9) as hub:
            stepped, _ = await start_peers(hub, "AB", section=default, trainer="stepping")
            assert stepped.exchange.statistics().steps_per_exchange == 2
            assert stepped.trainer.pacer is not None and stepped.trainer.pacer.lag == 4
        async with fake_swarm(seed=9) as hub:
            (clocked,) = await start_peers(
                hub, "C", section=dataclasses.replace(default, steps_per_exchange=0), trainer="stepping"
            )
            assert clocked.exchange.statistics().steps_per_exchange is None and clocked.trainer.pacer is None


async def test_a_lone_step_paced_peer_trains_without_waiting(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with fake_swarm(seed=9) as hub:
            (alone,) = await start_peers(hub, "A", section=gossip(steps_per_exchange=2), trainer="stepping")
            await hub.nursery.start(alone.exchange.run)
            await trio.sleep(10)

    assert alone.trainer.statistics().held_seconds == 0
    assert alone.trainer.trainer.step >= 95 and alone.exchange.attempts == []


async def test_a_hung_neighbour_holds_a_step_paced_trainer_no_longer_than_one_exchange_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(200):
        async with fake_swarm(seed=10, latency=0.02) as hub:
            a, b = await start_peers(hub, "AB", section=gossip(steps_per_exchange=2), trainer="stepping")
            await hub.nursery.start(a.exchange.run)
            await trio.sleep(3)
            hung_at = trio.current_time()
            hub.hang(b.id)
            await trio.sleep(60)
            hub.revive(b.id)

    chunks = [c.ended for c in steps_of(a) if c.ended >= hung_at]
    gaps = [later - earlier for earlier, later in itertools.pairwise([hung_at, *chunks])]
    assert max(gaps) <= TIMEOUT + 2 * TRAIN_CHUNK_SECONDS, max(gaps)  # the failed exchange released it
    assert len(chunks) >= 60 / (TIMEOUT + 1)  # and it went on training
    assert a.exchange.statistics().failed >= 2


@pytest.mark.parametrize(("idle_cores", "stretched"), [(0.0, True), (2.0, False)])
async def test_a_cpu_budget_stretches_the_pace_while_the_cores_are_busy(
    autojump_clock: trio.testing.MockClock, idle_cores: float, stretched: bool
) -> None:
    # Each exchange a peer takes part in costs it 50 ms of CPU: mixing every 2 steps of a trainer taking ~10
    # steps a second spends half a core, five times a budget of 0.1. With no idle time the pace stretches
    # until mixing fits; with two idle cores it may use them, and stays at 2 steps.
    section = dataclasses.replace(gossip(steps_per_exchange=2), cpu_budget=0.1)
    with trio.fail_after(300):
        async with fake_swarm(seed=11, latency=0.02) as hub:
            peers = await start_peers(hub, "AB", section=section, trainer="stepping")
            for peer in peers:
                trainer, counters = peer.trainer.trainer, peer.exchange.counters

                def cpu(trainer: Trainer = trainer, counters: ExchangeCounters = counters) -> float:
                    return trainer.cpu_seconds + 0.05 * (counters.exchanges + counters.failed)

                peer.exchange.cpu_clock = cpu
                peer.exchange.idle_clock = lambda: idle_cores * trio.current_time()
            await mix_for(hub, peers, 40)

    for peer in peers:
        stats = peer.exchange.statistics()
        pacer = peer.trainer.pacer
        assert pacer is not None and stats.steps_per_exchange == pacer.every and pacer.lag == 2 * pacer.every
        assert stats.mixing_cpu is not None and stats.mixing_cpu_allowed is not None
        assert stats.failed == 0 and stats.exchanges >= 20
        if stretched:
            assert 5 <= pacer.every <= 20, pacer.every
            assert stats.mixing_cpu_allowed == pytest.approx(0.1)
            assert stats.mixing_cpu <= 0.25, stats.mixing_cpu  # brought down from ~0.5 towards the budget
        else:
            assert pacer.every == 2
            assert stats.mixing_cpu_allowed == pytest.approx(0.1 + 2.0 - 0.25)


async def test_without_a_cpu_budget_mixing_s_cpu_is_still_measured_and_the_pace_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # As above, each exchange costs 50 ms of CPU, about half a core at this pace: the status says so (what
    # mixing costs training where they share cores), and with no budget nothing stretches.
    with trio.fail_after(300):
        async with fake_swarm(seed=11, latency=0.02) as hub:
            peers = await start_peers(hub, "AB", section=gossip(steps_per_exchange=2), trainer="stepping")
            for peer in peers:
                trainer, counters = peer.trainer.trainer, peer.exchange.counters

                def cpu(trainer: Trainer = trainer, counters: ExchangeCounters = counters) -> float:
                    return trainer.cpu_seconds + 0.05 * (counters.exchanges + counters.failed)

                peer.exchange.cpu_clock = cpu
            await mix_for(hub, peers, 40)

    for peer in peers:
        stats = peer.exchange.statistics()
        assert peer.exchange.cpu_budget is None and stats.mixing_cpu_allowed is None
        assert stats.mixing_cpu is not None and stats.mixing_cpu >= 0.25, stats.mixing_cpu
        assert stats.steps_per_exchange == 2 and stats.exchanges >= 20


# -- a training budget and the finish ------------------------------------------------------------------------


async def heartbeats(peers: list[Peer], every: float = 1.0, deaf: frozenset[tuple[str, str]] = frozenset()) -> None:
    """What discovery's GossipSub heartbeats do for the finish: each peer learns the others' training steps,
    except that a receiver never hears a sender for each (receiver, sender) in `deaf` (lost announcements)."""
    while True:
        for peer in peers:
            for other in peers:
                if other is not peer and (peer.id, other.id) not in deaf:
                    peer.table.saw(other.id, "pubsub", member=True, step=other.trainer.trainer.step)
        await trio.sleep(every)


async def note_budget(peer: Peer, budget_at: dict[str, float]) -> None:
    """When `peer` reached its training budget (virtual time)."""
    await wait_until(lambda: peer.trainer.training_done)
    budget_at[peer.id] = trio.current_time()


async def test_a_peer_left_alone_past_its_budget_is_finished_after_two_exchange_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Its neighbours finished and left (attached scripts close once their swarm finished): no one to finish
    # with, and no exchange it could start to count towards the cap either.
    with trio.fail_after(120):
        async with fake_swarm(seed=12) as hub:
            (alone,) = await start_peers(hub, "A", section=gossip("powergossip"), trainer="stepping", budgets=[20])
            await hub.nursery.start(alone.exchange.run)
            await wait_until(lambda: alone.trainer.training_done)
            done_at = trio.current_time()
            await wait_until(lambda: alone.exchange.finished)
            finished_at = trio.current_time()
    assert 2 * TIMEOUT <= finished_at - done_at <= 2 * TIMEOUT + 2 * INTERVAL
    assert alone.exchange.attempts == [] and alone.exchange.settled == 0


@pytest.mark.parametrize("steps_per_exchange", [0, 2])
async def test_peers_stop_at_their_budget_then_finish_in_agreement_and_start_no_more_exchanges(
    autojump_clock: trio.testing.MockClock, steps_per_exchange: int
) -> None:
    budget, finish = 40, 12
    section = gossip("powergossip", steps_per_exchange=steps_per_exchange, finish_exchanges=finish)
    with trio.fail_after(300):
        async with fake_swarm(seed=11, latency=0.02) as hub:
            peers = await start_peers(hub, "ABC", section=section, trainer="stepping", budgets=[budget] * 3)
            late = peers[2]
            late.trainer.pause()  # C starts 5 s late, so A and B finish while it still trains
            hub.nursery.start_soon(heartbeats, peers)
            budget_at: dict[str, float] = {}
            for peer in peers:
                hub.nursery.start_soon(note_budget, peer, budget_at)
            before = [await p.params() for p in peers]
            for peer in peers:
                await hub.nursery.start(peer.exchange.run)
            await trio.sleep(5)
            late.trainer.resume()
            await wait_until(lambda: all(p.trainer.training_done for p in peers))
            await wait_until(lambda: all(p.exchange.finished for p in peers))
            done = trio.current_time()
            await wait_until(lambda: not any(p.exchange.in_flight for p in peers))  # the last one's answer
            started = [len(p.exchange.attempts) for p in peers]
            answered = [p.exchange.statistics().exchanges for p in peers]
            await trio.sleep(20)
            await stop_mixing(peers)
            after = [await p.params() for p in peers]

    for peer in peers:
        assert peer.trainer.trainer.step == budget  # exactly its budget: never a step past it
        stats = peer.exchange.statistics()
        assert stats.finished and stats.finish_exchanges == finish
    # Past its budget neither A nor B mixed with C while C still trained: none started with it, and C's own
    # attempts were refused (a finished copy must not absorb a straggler's tail: see the exchange module).
    for peer in peers[:2]:
        window = (budget_at[peer.id], budget_at[late.id])
        assert not any(a.peer == late.id and window[0] <= a.started < window[1] for a in peer.exchange.attempts)
        assert not any(
            a.peer == peer.id and a.succeeded and window[0] <= a.started < window[1] for a in late.exchange.attempts
        )
    assert late.exchange.statistics().failed == 0  # refusals are no failures
    # Finished peers start nothing: in the 20 s after the last one finished, no exchange at all.
    assert [len(p.exchange.attempts) for p in peers] == started
    assert all(a.started <= done for p in peers for a in p.exchange.attempts)
    assert answered == [p.exchange.statistics().exchanges for p in peers]
    # Training never moves these models (lr 1e-30): their spread is what rank-1 mixing has not yet removed.
    assert spread(after) < 0.05 * spread(before), (spread(before), spread(after))
    assert sum_drift(before, after) <= 1e-5


@dataclass
class StragglerRun:
    peers: list[Peer]
    asked: list[list[str]]  # the donors each `adopt` call was offered
    budget_at: dict[str, float]
    finished_at: float  # when C was finished


async def straggler_run(
    finish: int, announce: Callable[[list[Peer]], Callable[[], None]] | None = None
) -> StragglerRun:
    """A and B finish together while C, started late, still trains; neither ever hears C's heartbeats.
    `announce`: given the peers, what C's announcements of its budget do (None: no announcement at all)."""
    asked: list[list[str]] = []
    with trio.fail_after(300):
        async with fake_swarm(seed=14, latency=0.02) as hub:
            peers = await start_peers(
                hub, "ABC", section=gossip(finish_exchanges=finish), trainer="stepping", budgets=[10] * 3
            )
            a, b, c = peers

            async def adopt(donors: Sequence[str], budget: int) -> str | None:
                assert budget == 10
                asked.append(list(donors))
                return donors[0]

            for peer in peers:
                peer.exchange.adopt = adopt
            if announce is not None:
                c.exchange.on_budget = announce(peers)
            c.trainer.pause()
            hub.nursery.start_soon(partial(heartbeats, peers, deaf=frozenset({(a.id, c.id), (b.id, c.id)})))
            budget_at: dict[str, float] = {}
            for peer in peers:
                hub.nursery.start_soon(note_budget, peer, budget_at)
                await hub.nursery.start(peer.exchange.run)
            await wait_until(lambda: a.exchange.finished and b.exchange.finished)
            c.trainer.resume()
            await wait_until(lambda: c.exchange.finished)
            finished_at = trio.current_time()
            await stop_mixing(peers)
    return StragglerRun(peers, asked, budget_at, finished_at)


async def test_a_straggler_its_finished_neighbours_never_heard_reach_its_budget_takes_their_model(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Neither A nor B hears that C reached its budget, so both refuse C as a neighbour still training. Two
    # exchange timeouts later C asks its runtime for the model of a neighbour past the budget (A or B, both
    # live), then is finished.
    finish = 6
    run = await straggler_run(finish)
    (a, b, c), asked = run.peers, run.asked
    assert a.exchange.settled == finish and b.exchange.settled == finish and asked != [] and len(asked) == 1
    assert sorted(asked[0]) == sorted([a.id, b.id])  # only C asked: A and B finished with each other
    assert c.exchange.settled == 0 and c.exchange.adopted_from == asked[0][0]
    assert all(not x.succeeded for x in c.exchange.attempts if x.started >= run.budget_at[c.id])  # all refused
    assert 2 * TIMEOUT <= run.finished_at - run.budget_at[c.id] <= 2 * TIMEOUT + 2 * INTERVAL


async def test_a_straggler_refused_as_training_says_again_that_it_is_past_its_budget_and_finishes_with_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # As above, but only C's first announcement of its budget is lost: refused as a neighbour still training,
    # C announces again (at most every REANNOUNCE_EVERY s), A and B then take its exchanges, and C finishes by
    # mixing, well before a stall would have it copy a model.
    finish = 6
    announced: list[float] = []

    def announcing(peers: list[Peer]) -> Callable[[], None]:
        a, b, c = peers

        def announce() -> None:  # the first is lost; the next get through at once
            announced.append(trio.current_time())
            if len(announced) > 1:
                for peer in (a, b):
                    peer.table.saw(c.id, "pubsub", member=True, step=c.trainer.trainer.step)

        return announce

    run = await straggler_run(finish, announcing)
    c = run.peers[2]
    assert run.asked == [] and c.exchange.adopted_from is None
    assert c.exchange.settled == finish
    assert len(announced) >= 2 and announced[1] - announced[0] >= REANNOUNCE_EVERY
    assert run.finished_at - run.budget_at[c.id] < 2 * TIMEOUT  # before a stall (two timeouts) would copy a model


async def test_past_the_budget_a_peer_mixes_only_with_neighbours_past_it_and_one_with_none_is_finished_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A and B stop at 10 steps; C never trains (paused at step 0): past their budget A and B start nothing
    # with C and finish on their exchanges with each other. D stops at 10 too, alone with C: it starts nothing
    # with it and is finished after two exchange timeouts without an exchange.
    finish = 6
    with trio.fail_after(300):
        async with fake_swarm(seed=12, latency=0.02) as hub:
            peers = await start_peers(
                hub, "ABCD", section=gossip(finish_exchanges=finish), trainer="stepping", budgets=[10] * 4
            )
            a, b, c, d = peers
            c.trainer.pause()
            d.view.members.clear()
            d.view.fill([c.id])
            for peer in (a, b):
                peer.view.members.remove(d.id)
            c.view.members.clear()
            hub.nursery.start_soon(heartbeats, peers)
            budget_at: dict[str, float] = {}
            for peer in peers:
                hub.nursery.start_soon(note_budget, peer, budget_at)
                await hub.nursery.start(peer.exchange.run)
            await wait_until(lambda: a.exchange.finished and b.exchange.finished and d.exchange.finished)
            finished_at = trio.current_time()
            await trio.sleep(5)
            await stop_mixing(peers)

    for peer in (a, b):
        assert peer.exchange.settled == finish
        assert all(x.peer != c.id for x in peer.exchange.attempts if x.started >= budget_at[peer.id])
    assert d.exchange.settled == 0
    assert all(x.started < budget_at[d.id] for x in d.exchange.attempts)  # (one may end past it)
    assert 2 * TIMEOUT <= finished_at - budget_at[d.id] <= 2 * TIMEOUT + 2 * INTERVAL
    assert not c.trainer.training_done and not c.exchange.finished and c.exchange.past_budget == 0


async def test_a_finished_peer_refuses_a_training_neighbour_which_then_trains_on_without_waiting_for_a_mix(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A reached its budget; B, step-paced, has not started yet (paused), with A its only neighbour. No
    # heartbeat has told B that A is past the budget, so it asks A for an exchange: A refuses, and B learns
    # it from the refusal.
    caplog.set_level(logging.DEBUG, logger="gossipd.exchange")
    section = gossip("plain", steps_per_exchange=2)
    with trio.fail_after(300):
        async with fake_swarm(seed=13) as hub:
            a, b = await start_peers(hub, "AB", section=section, trainer="stepping", budgets=[200, 200])
            b.trainer.pause()
            await wait_until(lambda: a.trainer.training_done)
            a.table.saw(b.id, "pubsub", member=True, step=b.trainer.trainer.step)  # B's heartbeat: training
            assert b.exchange.can_mix() and not b.exchange.past_budget_known(a.id)
            assert await exchange(b, a) is None
            assert any(FINISHED in m for m in declines(caplog)), declines(caplog)
            assert b.exchange.past_budget_known(a.id) and not b.exchange.can_mix()
            assert b.exchange.statistics().finished_neighbours == 1
            assert (a.exchange.statistics().failed, b.exchange.statistics().failed) == (0, 0)
            # With no neighbour left to mix with, B's trainer is not held at the pacer's lag: it trains on.
            held = b.trainer.statistics().held_seconds
            b.trainer.resume()
            await wait_until(lambda: b.trainer.training_done)
            assert b.trainer.statistics().held_seconds == pytest.approx(held)
            # Both past the budget (B's heartbeat says so): they finish together.
            a.table.saw(b.id, "pubsub", member=True, step=b.trainer.trainer.step)
            assert b.exchange.same_phase(a.id) and a.exchange.same_phase(b.id)
            assert await exchange(b, a) is not None
            assert await exchange(a, b) is not None


async def test_heartbeats_that_say_a_peers_phase_outweigh_its_step_and_a_refusal_until_a_later_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A's budget is 10 steps, B's 1000 (budgets are each peer's own). Past its budget A must not take B at step
    # 50 for finished: B's version-3 heartbeat says it trains. A version-2 heartbeat says only the step.
    section = gossip("plain", steps_per_exchange=2)
    with trio.fail_after(300):
        async with fake_swarm(seed=15) as hub:
            a, b = await start_peers(hub, "AB", section=section, trainer="stepping", budgets=[10, 1000])
            await wait_until(lambda: a.trainer.training_done)
            a.table.saw(b.id, "pubsub", member=True, step=50)
            assert a.exchange.past_budget_known(b.id)  # a version-2 heartbeat: judged by A's own budget
            a.table.saw(b.id, "pubsub", member=True, step=50, done=False)
            assert not a.exchange.past_budget_known(b.id) and not a.exchange.same_phase(b.id)
            assert not a.exchange.can_mix()  # its one neighbour trains on
            # B has not heard yet that A finished: it asks, A refuses, and B learns it from the refusal ...
            b.table.saw(a.id, "pubsub", member=True, step=5, done=False)
            assert await exchange(b, a) is None
            assert b.exchange.past_budget_known(a.id) and not b.exchange.same_phase(a.id)
            # ... over the older heartbeat; A's next one agrees with the refusal.
            await trio.sleep(1)
            b.table.saw(a.id, "pubsub", member=True, step=10, done=True)
            assert b.exchange.past_budget_known(a.id)
            # A restarted with a larger budget trains again: its later heartbeat outweighs the refusal.
            await trio.sleep(1)
            b.table.saw(a.id, "pubsub", member=True, step=10, done=False)
            assert not b.exchange.past_budget_known(a.id) and b.exchange.same_phase(a.id)
            # A peer without a budget trains: a neighbour past its own is not of its phase.
            b.table.saw(a.id, "pubsub", member=True, step=10, done=True)
            b.trainer.budget = None
            assert not b.exchange.same_phase(a.id)


async def test_a_peer_that_reaches_its_budget_announces_it_once(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[float] = []
    with trio.fail_after(60):
        async with fake_swarm(seed=14) as hub:
            a, b = await start_peers(hub, "AB", section=gossip("plain"), trainer="stepping", budgets=[20, None])
            a.exchange.on_budget = lambda: calls.append(trio.current_time())
            b.exchange.on_budget = lambda: calls.append(-1.0)
            for peer in (a, b):
                await hub.nursery.start(peer.exchange.run)
            await wait_until(lambda: a.trainer.training_done)
            reached = trio.current_time()
            await trio.sleep(10)
            await stop_mixing([a, b])
    assert len(calls) == 1 and reached <= calls[0] <= reached + 2 * INTERVAL


# -- the fake itself -----------------------------------------------------------------------------------------


async def test_the_fake_delivers_frames_in_order_after_latency_then_end_of_stream_and_enforces_limits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received: list[bytes] = []
    with trio.fail_after(10):
        async with fake_swarm(seed=7, latency=0.5) as hub:
            x, y = hub.add_peer("X"), hub.add_peer("Y")

            async def read_two_then_answer(stream: FrameStream) -> None:
                for _ in range(2):
                    received.append(await stream.receive(4))
                with pytest.raises(StreamClosed):  # end of stream, after the frames sent before it
                    await stream.receive(4)
                await stream.send(b"done")
                await stream.close()

            async def send_too_much(stream: FrameStream) -> None:
                await stream.send(b"12345")

            y.set_handler("/echo", read_two_then_answer)
            y.set_handler("/big", send_too_much)
            stream = await x.open_stream(y.peer_id, "/echo")
            sent_at = trio.current_time()
            for frame in (b"one", b"two"):
                await stream.send(frame)
            await stream.close()
            assert await stream.receive(4) == b"done"
            round_trip = trio.current_time() - sent_at
            with pytest.raises(StreamClosed):
                await stream.receive(4)

            big = await x.open_stream(y.peer_id, "/big")
            with pytest.raises(FrameTooLarge):
                await big.receive(4)
            with pytest.raises(StreamClosed):  # FrameTooLarge reset the stream
                await big.send(b"x")
            with pytest.raises(DialError):
                await x.open_stream(y.peer_id, "/nothing")

    assert received == [b"one", b"two"]
    assert round_trip == pytest.approx(2 * 0.5)
    assert x.connected_peers() == [y.peer_id]


async def test_the_fake_holds_a_hung_peer_fails_a_killed_one_at_once_and_stalls_a_stream_after_a_loss(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(200):
        async with fake_swarm(seed=8, latency=0.1) as hub:
            x, y = hub.add_peer("X"), hub.add_peer("Y")

            async def echo(stream: FrameStream) -> None:
                with contextlib.suppress(StreamClosed):
                    while True:
                        await stream.send(await stream.receive(10))

            y.set_handler("/echo", echo)
            held = await x.open_stream(y.peer_id, "/echo")
            hub.hang(y.peer_id)
            await held.send(b"ping")
            with trio.move_on_after(30) as waited:
                await held.receive(10)
            assert waited.cancelled_caught  # a hung peer never answers ...
            with trio.move_on_after(30) as dial:
                await x.open_stream(y.peer_id, "/echo")
            assert dial.cancelled_caught  # ... and dials to it hang
            hub.revive(y.peer_id)
            assert await held.receive(10) == b"ping"  # what it held goes on once it runs again

            hub.kill(y.peer_id)
            with pytest.raises(StreamClosed):  # its open streams fail at once
                await held.receive(10)
            killed_at = trio.current_time()
            with pytest.raises(DialError):
                await x.open_stream(y.peer_id, "/echo")
            assert trio.current_time() - killed_at == pytest.approx(0.1)  # after one latency
            assert x.connected_peers() == []
            hub.revive(y.peer_id)
            assert x.connected_peers() == [y.peer_id]

            lossy = FakeHub(hub.nursery, random.Random(0), loss=1.0)
            p, q = lossy.add_peer("P"), lossy.add_peer("Q")
            q.set_handler("/echo", echo)
            stalled = await p.open_stream(q.peer_id, "/echo")
            await stalled.send(b"lost")
            with trio.move_on_after(30) as lost:
                await stalled.receive(10)
            assert lost.cancelled_caught and lossy.statistics().frames_lost == 1


async def test_the_fake_fans_pubsub_out_signed_by_the_publisher_and_keeps_provider_records(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with fake_swarm(seed=9, latency=0.2) as hub:
            x, y, z = hub.add_peer("X"), hub.add_peer("Y"), hub.add_peer("Z")
            subscriptions = [await n.subscribe("/t") for n in (x, y)]
            await z.publish("/t", b"beat")
            for subscription in subscriptions:
                message = await subscription.__anext__()
                assert (message.sender, message.data) == (z.peer_id, b"beat")
            assert trio.current_time() == pytest.approx(0.2)
            await x.provide("/key")
            await y.provide("/key")
            hub.kill(y.peer_id)  # a provider record outlives its peer
            assert [p.peer_id for p in await z.find_providers("/key")] == [x.peer_id, y.peer_id]
            assert [p.peer_id for p in await x.find_providers("/key")] == [y.peer_id]


async def test_a_task_that_mixes_momentum_brings_the_daemons_momentum_together_with_their_models(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`[gossip] momentum_every = 1`: every whole-model exchange between daemons also carries their
    optimisers' momentum, and each trainer's momentum moves towards its neighbours' as its model does
    (trainers paused: only mixing moves either)."""
    from gossipd.train.sgd import Sgd

    section = dataclasses.replace(gossip("plain"), momentum_every=1)
    with trio.fail_after(120):
        async with fake_swarm(seed=3, latency=0.001) as hub:
            peers = await start_peers(hub, "ABC", section=section, trainer="paused")
            for index, peer in enumerate(peers):
                trainer = peer.trainer.trainer
                trainer.optimizer = Sgd(trainer.trained, lr=0.1, momentum=0.9)
                seeded = torch.Generator().manual_seed(100 + index)
                buffers = [torch.randn(p.shape, generator=seeded) for p in trainer.trained]
                trainer.optimizer.state = {i: {"momentum_buffer": b} for i, b in enumerate(buffers)}
            momentum_before = [{k: v.clone() for k, v in p.trainer.momentum().items()} for p in peers]
            before, after = await mix_for(hub, peers, 30)
            momentum_after = [p.trainer.momentum() for p in peers]
    assert all(p.exchange.statistics().exchanges >= 10 for p in peers)
    # Every exchange carried both ends' momentum, and the status counts each end's.
    assert all(p.exchange.statistics().momentum_mixes == p.exchange.statistics().exchanges for p in peers)
    assert spread(after) < 1e-3 * spread(before)
    assert spread(momentum_after) < 1e-2 * spread(momentum_before), (spread(momentum_before), spread(momentum_after))
