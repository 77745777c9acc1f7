"""A swarm that is cut in two, or loses one peer to a hang, mixes back together once the link returns, with no
service restarted: on the fake network, on virtual time.

Six peers train a logistic regression at a real learning rate (full-batch SGD, so that what moves them apart is
their data, not gradient noise), each on its own random inputs, labelled by one linear rule on one side of
the cut and by another on the other side: peers that stop mixing drift toward their own side's model. All six
know each other as live members (no heartbeats: liveness never lapses) and hold each other in their views.

`tests.fake_network` has no partitions, so `CutNetwork` wraps a peer's `FakeNetwork`: while a `Partition`
separates two peers, a dial from one to the other fails (a dead link: no route to the host) or hangs until
the dialler's deadline (a hung link: packets dropped), and frames sent across the cut on streams opened before
it are lost, stalling the stream as a lost frame does in the fake.

The fake's `hang` holds a peer's network only: its trainer keeps stepping (like its timers, see
`tests.fake_network`), so a hung peer drifts toward its own data while the others mix without it.

Torch work runs inline and a training chunk costs virtual time, through `tests.test_exchange_service`'s
autouse fixture `torch_work_inline` (imported here, which makes pytest use it in this file too).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest
import torch
import trio
import trio.testing

from gossipd.data.spec import ArrayDataset
from gossipd.metrics import consensus_distance, distance
from gossipd.mixing.algorithm import Algorithm
from gossipd.mixing.layout import ParamLayout, max_message_bytes, mixed_parameters
from gossipd.mixing.local import plain_exchange_bytes
from gossipd.mixing.plain import PlainConfig
from gossipd.mixing.registry import make_algorithm
from gossipd.models.logistic import LogisticConfig
from gossipd.models.registry import build_model
from gossipd.peering.table import PeerTable
from gossipd.peering.view import PeerView
from gossipd.services.exchange import ExchangeService
from gossipd.services.network import DialError, FrameStream, PeerAddress, StreamHandler, Subscription
from gossipd.services.trainer_service import TrainerService
from gossipd.task.schema import GossipSection, ModelSection, TrainSection
from gossipd.train.trainer import Trainer
from tests.fake_network import FakeHub, FakeNetwork
from tests.test_exchange_service import (  # torch_work_inline is an autouse fixture: importing it applies it
    CPU,
    SPEC,
    TASK,
    TRAIN_CHUNK_SECONDS,
    fake_swarm,
    route_mix_streams,
    torch_work_inline,  # noqa: F401
)

LEFT, RIGHT = "ABC", "DEF"  # the two sides of the cut; each side's peers share a labelling rule
LATENCY = 0.02
TIMEOUT = 5.0  # [gossip] exchange_timeout (virtual seconds)
INTERVAL = 0.2  # [gossip] exchange_interval (the default)
LR = 0.2
SECTION = GossipSection(
    algorithm="plain",
    config=PlainConfig(),
    view_size=len(LEFT + RIGHT) - 1,  # everyone in everyone's view
    exchange_interval=INTERVAL,
    exchange_timeout=TIMEOUT,
)
LinkFault = Literal["dead", "hung"]
Models = dict[str, torch.Tensor]  # one peer's mixed parameters


# -- a network that can be cut -------------------------------------------------------------------------------


class Partition:
    """Which peers can reach which: everyone, or only those on the same side of a cut."""

    def __init__(self) -> None:
        self._side: dict[str, int] = {}

    def split(self, *groups: str) -> None:
        self._side = {peer: side for side, group in enumerate(groups) for peer in group}

    def heal(self) -> None:
        self._side = {}

    def separates(self, a: str, b: str) -> bool:
        return bool(self._side) and self._side.get(a) != self._side.get(b)


class CutStream:
    """A stream end whose frames are lost while its link is cut; after a loss nothing more gets through."""

    def __init__(self, inner: FrameStream, owner: str, partition: Partition) -> None:
        self._inner = inner
        self._owner = owner
        self._partition = partition
        self._stalled = False

    @property
    def peer_id(self) -> str:
        return self._inner.peer_id

    async def send(self, payload: bytes) -> None:
        if self._stalled or self._partition.separates(self._owner, self.peer_id):
            self._stalled = True
            await trio.lowlevel.checkpoint()
            return
        await self._inner.send(payload)

    async def receive(self, max_bytes: int) -> bytes:
        return await self._inner.receive(max_bytes)

    async def close(self) -> None:
        if not self._stalled:
            await self._inner.close()
        await trio.lowlevel.checkpoint()

    async def reset(self) -> None:
        await self._inner.reset()


class CutNetwork:
    """A `FakeNetwork` behind a `Partition`; implements `gossipd.services.network.Network`."""

    def __init__(self, inner: FakeNetwork, partition: Partition, fault: LinkFault) -> None:
        self._inner = inner
        self._partition = partition
        self._fault = fault

    @property
    def peer_id(self) -> str:
        return self._inner.peer_id

    def addresses(self) -> list[str]:
        return self._inner.addresses()

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        async def behind_the_cut(stream: FrameStream) -> None:
            await handler(CutStream(stream, self.peer_id, self._partition))

        self._inner.set_handler(protocol, behind_the_cut)

    async def open_stream(self, peer_id: str, protocol: str) -> FrameStream:
        if self._partition.separates(self.peer_id, peer_id):
            if self._fault == "hung":
                await trio.sleep_forever()  # until the dialler's deadline
            await trio.sleep(LATENCY)
            raise DialError(f"{peer_id}: no route from {self.peer_id}")
        stream = await self._inner.open_stream(peer_id, protocol)
        return CutStream(stream, self.peer_id, self._partition)

    async def connect(self, address: str) -> str:
        return await self._inner.connect(address)

    async def connect_peer(self, peer: PeerAddress) -> None:
        await self._inner.connect_peer(peer)

    def connection_kind(self, peer_id: str) -> str | None:
        return None if self._partition.separates(self.peer_id, peer_id) else self._inner.connection_kind(peer_id)

    def relay_status(self) -> None:
        return None

    def connected_peers(self) -> list[str]:
        return self._inner.connected_peers()

    def known_addresses(self, peer_id: str) -> tuple[str, ...]:
        return self._inner.known_addresses(peer_id)

    def forget_failures(self, peer_id: str) -> None:
        self._inner.forget_failures(peer_id)

    async def subscribe(self, topic: str) -> Subscription:
        return await self._inner.subscribe(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        await self._inner.publish(topic, data)

    async def provide(self, key: str) -> None:
        await self._inner.provide(key)

    async def find_providers(self, key: str) -> list[PeerAddress]:
        return await self._inner.find_providers(key)

    async def refresh_routing(self) -> None:
        await self._inner.refresh_routing()

    def local_discoveries(self) -> list[PeerAddress]:
        return self._inner.local_discoveries()


# -- a swarm that learns -------------------------------------------------------------------------------------


@dataclass
class Learner:
    id: str
    trainer: TrainerService
    exchange: ExchangeService

    async def params(self) -> Models:
        """The mixed parameters at the next step boundary (every delta submitted so far applied)."""
        model = self.trainer.trainer.model
        return await self.trainer.at_boundary(lambda: {n: t.clone() for n, t in mixed_parameters(model).items()})


def own_data(seed: int, rule: int, n: int = 64) -> ArrayDataset:
    """This peer's own random inputs, labelled by the linear rule numbered `rule` (10% of the labels flipped,
    so that the optimum is finite)."""
    x = torch.randn(n, *SPEC.input_shape, generator=torch.Generator().manual_seed(seed))  # (n, 6)
    rule_generator = torch.Generator().manual_seed(10_000 + rule)
    weights = torch.randn(*SPEC.input_shape, SPEC.num_classes, generator=rule_generator)  # (6, classes)
    y = (x @ weights).argmax(dim=1)  # (n,)
    g = torch.Generator().manual_seed(20_000 + seed)
    flipped = torch.rand(n, generator=g) < 0.1
    y[flipped] = torch.randint(0, SPEC.num_classes, (int(flipped.sum()),), generator=g)
    return ArrayDataset(x, y)


async def start_learner(
    hub: FakeHub, name: str, *, seed: int, rule: int, partition: Partition, fault: LinkFault
) -> Learner:
    network = CutNetwork(hub.add_peer(name), partition, fault)
    model = build_model(ModelSection(name="logistic", options=LogisticConfig()), SPEC, 0)  # one initial model
    data = own_data(seed, rule)
    section = TrainSection(lr=LR, momentum=0.0, batch_size=len(data))
    trainer = TrainerService(
        Trainer(model, section, data, kind="classification", device=CPU, seed=seed),
        own_data(seed, rule, n=0),
        eval_every=10**9,
        eval_samples=1,
        chunk_seconds=TRAIN_CHUNK_SECONDS,
    )
    params = mixed_parameters(model)
    layout = ParamLayout.of(params)
    algorithm: Algorithm[Any] = make_algorithm(SECTION)
    exchange = ExchangeService(
        task_hash=TASK,
        gossip=SECTION,
        algorithm=algorithm,
        layout=layout,
        max_message_bytes=max_message_bytes(layout),
        plain_exchange_bytes=plain_exchange_bytes(params, TASK),
        trainer=trainer,
        network=network,
        peers=PeerTable(self_id=name, clock=trio.current_time, liveness=math.inf),  # no heartbeats here
        view=PeerView(SECTION.view_size, random.Random(seed)),
        ready=lambda: True,
        rng=random.Random(1000 + seed),
        device=CPU,
    )
    route_mix_streams(network, {TASK: exchange})  # type: ignore[arg-type]  # any Network will do
    await hub.nursery.start(trainer.run)
    return Learner(name, trainer, exchange)


async def start_swarm(hub: FakeHub, partition: Partition, fault: LinkFault = "dead") -> list[Learner]:
    """Six learners that all know each other and mix."""
    learners = [
        await start_learner(hub, name, seed=i, rule=int(name in RIGHT), partition=partition, fault=fault)
        for i, name in enumerate(LEFT + RIGHT)
    ]
    for learner in learners:
        others = [p.id for p in learners if p is not learner]
        for other in others:
            learner.exchange.peers.saw(other, "bootstrap", member=True)
        learner.exchange.view.fill(others)
        await hub.nursery.start(learner.exchange.run)
    return learners


async def models(learners: list[Learner]) -> list[Models]:
    return [await p.params() for p in learners]


def mean(group: list[Models]) -> Models:
    return {name: torch.stack([m[name] for m in group]).mean(0) for name in group[0]}


def gap(models_: list[Models]) -> float:
    """The distance between the mean models of the two sides of the cut (LEFT's peers come first)."""
    return distance(mean(models_[: len(LEFT)]), mean(models_[len(LEFT) :]))


# -- the scenarios ------------------------------------------------------------------------------------------

WARM_UP = 10.0  # virtual seconds of mixing before the fault
FAULT_FOR = 10.0  # how long the partition or the hang lasts
RECOVERY = 30.0  # virtual seconds the swarm gets to mix back together (back-offs cap at 30 s)
SETTLE = 5.0  # then it must stay together this long
GROWTH = 3.0  # the fault must multiply the distance at least this much ...
RECOVERED = 0.5  # ... and mixing must bring it below this fraction of its value when the fault ended


def exchange_counts(swarm: list[Learner]) -> Counter[tuple[str, str]]:
    """Exchanges each peer completed with each other peer, started by either end (its peer table's count)."""
    counts: Counter[tuple[str, str]] = Counter()
    for peer in swarm:
        for other, record in peer.exchange.peers.records.items():
            counts[peer.id, other] = record.exchanges
    return counts


def exchanged_since(swarm: list[Learner], since: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
    return exchange_counts(swarm) - since


async def wait_until_mixed(swarm: list[Learner], measure: Callable[[list[Models]], float], bound: float) -> None:
    """Until `measure` of the swarm's models is at most `bound` (checked every 0.5 virtual seconds)."""
    # The services expose no event for this; on virtual time, polling is free.
    while measure(await models(swarm)) > bound:  # noqa: ASYNC110
        await trio.sleep(0.5)


async def mean_over(swarm: list[Learner], measure: Callable[[list[Models]], float], seconds: float) -> float:
    """The mean of `measure` of the swarm's models, sampled every 0.5 virtual seconds for `seconds`."""
    samples = []
    for _ in range(round(seconds / 0.5)):
        await trio.sleep(0.5)
        samples.append(measure(await models(swarm)))
    return sum(samples) / len(samples)


@pytest.mark.parametrize("fault", ["dead", "hung"])
async def test_a_partition_heals_without_restarts(fault: LinkFault, autojump_clock: trio.testing.MockClock) -> None:
    partition = Partition()
    with trio.fail_after(WARM_UP + FAULT_FOR + RECOVERY + SETTLE + 10):
        async with fake_swarm(seed=11, latency=LATENCY) as hub:
            swarm = await start_swarm(hub, partition, fault)
            await trio.sleep(WARM_UP)
            mixed = await models(swarm)
            partition.split(LEFT, RIGHT)
            at_split = exchange_counts(swarm)
            await trio.sleep(FAULT_FOR)
            cut = await models(swarm)
            during = exchanged_since(swarm, at_split)
            at_heal = exchange_counts(swarm)
            healed_at = trio.current_time()
            partition.heal()
            with trio.move_on_after(RECOVERY) as too_slow:
                await wait_until_mixed(swarm, consensus_distance, RECOVERED * consensus_distance(cut))
            recovered_after = trio.current_time() - healed_at
            await trio.sleep(SETTLE)
            settled = await models(swarm)
            # A pair that failed at the very end of the cut may be backed off for up to 30 s, longer than the
            # swarm takes to mix back together: give every pair until RECOVERY + SETTLE to meet again.
            crossing = [(a.id, b.id) for a in swarm for b in swarm if (a.id in LEFT) != (b.id in LEFT)]
            with trio.move_on_at(healed_at + RECOVERY + SETTLE):
                while not all(exchanged_since(swarm, at_heal)[pair] > 0 for pair in crossing):  # noqa: ASYNC110
                    await trio.sleep(0.5)
            after = exchanged_since(swarm, at_heal)

    # While cut, each group kept mixing inside itself, never across, and the two groups drifted apart.
    for peer in swarm:
        inside = sum(n for (a, b), n in during.items() if a == peer.id and (b in LEFT) == (a in LEFT))
        assert inside >= 5, (peer.id, during)
    # An exchange in flight at the split may end on one side only: an opener whose peer skipped its hello sends
    # its last round and is done, while the cut loses that round. Never both ends, never more than that one.
    assert all(during[a, b] + during[b, a] <= 1 for a, b in crossing), during
    assert gap(cut) >= GROWTH * gap(mixed), (gap(mixed), gap(cut))
    assert consensus_distance(cut) >= GROWTH * consensus_distance(mixed)
    # Healed, with every service still the one that ran through the cut: every pair across it exchanges
    # again, and the swarm mixes back together within RECOVERY and stays so.
    assert not too_slow.cancelled_caught, f"still apart {RECOVERY} s after the partition healed"
    assert all(after[pair] > 0 for pair in crossing), after
    assert consensus_distance(settled) <= RECOVERED * consensus_distance(cut), (
        consensus_distance(cut),
        consensus_distance(settled),
        recovered_after,
    )


async def test_a_hung_peer_mixes_back_in_once_revived(autojump_clock: trio.testing.MockClock) -> None:
    partition = Partition()  # never split: only the hang
    hung = 5

    def apart(models_: list[Models]) -> float:
        """The hung peer's distance to the mean model of the others."""
        return distance(models_[hung], mean([m for i, m in enumerate(models_) if i != hung]))

    with trio.fail_after(WARM_UP + FAULT_FOR + RECOVERY + SETTLE + 10):
        async with fake_swarm(seed=12, latency=LATENCY) as hub:
            swarm = await start_swarm(hub, partition)
            victim = swarm[hung].id
            await trio.sleep(WARM_UP / 2)
            # One snapshot of a mixing peer may catch it just before or just after a mix (0.05 to 0.38 apart
            # over one warm-up): the baseline is the mean distance over the warm-up's second half.
            mixed_apart = await mean_over(swarm, apart, WARM_UP / 2)
            at_hang = exchange_counts(swarm)
            hub.hang(victim)
            await trio.sleep(FAULT_FOR)
            held = await models(swarm)
            during = exchanged_since(swarm, at_hang)
            at_revival = exchange_counts(swarm)
            hub.revive(victim)
            with trio.move_on_after(RECOVERY) as too_slow:
                await wait_until_mixed(swarm, apart, RECOVERED * apart(held))
            await trio.sleep(SETTLE)
            settled = await models(swarm)
            after = exchanged_since(swarm, at_revival)

    # While hung, the others kept mixing among themselves, no exchange with it completed, and it drifted
    # away from them. As at a split, an exchange in flight at the hang may end on one side only (an opener
    # whose peer skipped its hello sends its last round and is done, and the hang loses that round): never
    # both ends, never more than that one per neighbour.
    for peer in swarm[:hung]:
        assert sum(n for (a, b), n in during.items() if a == peer.id and b != victim) >= 5, (peer.id, during)
    assert all(during[victim, peer.id] + during[peer.id, victim] <= 1 for peer in swarm[:hung]), during
    assert apart(held) >= GROWTH * mixed_apart, (mixed_apart, apart(held))
    # Revived, with nothing restarted: it exchanges with the swarm again and mixes back in.
    assert not too_slow.cancelled_caught, f"still apart {RECOVERY} s after the hung peer was revived"
    assert sum(n for (a, b), n in after.items() if a == victim) >= 5, after
    assert apart(settled) <= RECOVERED * apart(held), (apart(held), apart(settled))
