"""Finding a task's other peers and keeping a small, live, slowly rewired view of them.

Four sources feed the peer table: bootstrap addresses (dialled at start), the DHT (a provider record under
a key derived from the task hash, re-announced and re-queried on a schedule), GossipSub heartbeats on the
task's topic (proof that a peer is alive and runs the task, with its addresses and progress), and mDNS on a
LAN. Providers and LAN sightings are hints until a dial or a heartbeat confirms them. Whenever a peer shows
up again, libp2p's cache of failed dials is cleared for it, so a restarted peer is reachable at once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from gossipd.peering.announce import announce_period
from gossipd.peering.ledger import Ledger
from gossipd.peering.table import PeerTable
from gossipd.peering.view import PeerView
from gossipd.services.network import DialError, Network, PeerAddress, Subscription
from gossipd.task.access import OPEN, Access
from gossipd.wire.auth import derived_name
from gossipd.wire.errors import WireError
from gossipd.wire.heartbeat import Heartbeat, decode_heartbeat, encode_heartbeat

if TYPE_CHECKING:
    # trio-typing's stubs (pulled in by libp2p) shadow trio's own annotations and lack TaskStatus.
    from trio_typing import TaskStatus

log = logging.getLogger("gossipd.discovery")


class NotAllowed(WireError):
    reason = "not-allowed"


DIAL_TIMEOUT = 5.0
MIN_MIXABLE = 2  # members of this peer's own phase the view keeps when the swarm has them (_keep_mixable)
SETTLED_DHT_INTERVAL = 600.0  # seconds between DHT lookups (and re-provides) once the view is full
SETTLED_DHT_NAMES = 8
SETTLED_DHT_LOOKUPS = 4
NEWCOMER_REPLY = 1.0  # seconds: a heartbeat to a newcomer goes out within this (spread, not all at once)
STALE_AFTER = 600.0  # peers not heard for this long leave the table


def topic_for(task_hash: bytes, key: bytes | None = None) -> str:
    """The task's heartbeat topic; for a closed task a name only key holders can compute."""
    if key is not None:
        return f"/gossipd/closed/{derived_name(key, task_hash, 'topic')}/heartbeat"
    return f"/gossipd/task/{task_hash.hex()}/heartbeat"


def provider_key_for(task_hash: bytes, key: bytes | None = None) -> str:
    if key is not None:
        return f"/gossipd/closed/{derived_name(key, task_hash, 'provider')}"
    return f"/gossipd/task/{task_hash.hex()}"


class DiscoveryService:
    def __init__(
        self,
        *,
        network: Network,
        task_hash: bytes,
        peers: PeerTable,
        view: PeerView[str],
        heartbeat: Callable[[], Heartbeat],
        on_leave_view: Callable[[str], None],
        mixable: Callable[[str], bool] = lambda _: True,
        bootstrap: tuple[str, ...] = (),
        heartbeat_interval: float = 2.0,
        dht_interval: float = 15.0,
        rewire_interval: float = 30.0,
        access: Access = OPEN,
        ledger: Ledger | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.network = network
        self.rng = rng if rng is not None else random.Random()
        self.task_hash = task_hash
        self.peers = peers
        self.view = view
        self.heartbeat = heartbeat
        self.on_leave_view = on_leave_view
        self.mixable = mixable  # whether this peer may start an exchange with a neighbour now (its phase)
        self.bootstrap = bootstrap
        self.heartbeat_interval = heartbeat_interval
        self.dht_interval = dht_interval
        self.rewire_interval = rewire_interval
        self.access = access
        self.ledger = ledger  # the task's contribution ledger: what neighbours declare in their heartbeats
        self.topic = topic_for(task_hash, access.key)
        self.provider_key = provider_key_for(task_hash, access.key)
        self.rejections: dict[str, int] = {}  # heartbeats ignored, by reason
        self._dialling: set[str] = set()
        self._newcomer = trio.Event()  # set when a heartbeat comes from a member not heard before, or by news
        self._news = False  # this peer has news of its own to announce (announce_now)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        subscription = await self.network.subscribe(self.topic)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._read_heartbeats, subscription)
            await self._dial_bootstrap()
            task_status.started()
            nursery.start_soon(self._announce)
            nursery.start_soon(self._query_dht)
            nursery.start_soon(self._watch_lan)
            nursery.start_soon(self._maintain_view)
            nursery.start_soon(self._redial_bootstrap)

    # -- sources ---------------------------------------------------------------------------------------

    async def _dial_bootstrap(self) -> None:
        for address in self.bootstrap:
            with trio.move_on_after(DIAL_TIMEOUT):
                try:
                    peer = await self.network.connect(address)
                except DialError as exc:
                    log.warning("bootstrap %s unreachable: %s", address, exc)
                    continue
                self.peers.saw(peer, "bootstrap", addresses=(address,))
        if self.bootstrap:
            with trio.move_on_after(DIAL_TIMEOUT):
                await self.network.refresh_routing()

    async def _redial_bootstrap(self) -> None:
        """Keep bootstrap peers connected: a restarted bootstrap is found again within this interval."""
        while self.bootstrap:
            await trio.sleep(10.0)
            connected = set(self.network.connected_peers())
            for address in self.bootstrap:
                peer = address.rsplit("/p2p/", 1)[-1]
                if peer not in connected:
                    self._dial_soon(PeerAddress(peer, (address,)), "bootstrap")

    async def _announce(self) -> None:
        while True:
            period = await self.announce()
            with trio.move_on_after(period):
                await self._newcomer.wait()
                if not self._news:
                    # A member this peer had not heard of: it is looking for a model to copy and for
                    # neighbours, and the swarm's periods are long; answer with a heartbeat now, not a period
                    # later (spread, so that a swarm does not answer all at once).
                    await trio.sleep(NEWCOMER_REPLY * self.rng.random())
            self._newcomer = trio.Event()
            self._news = False

    async def announce(self) -> float:
        """Send a heartbeat now; the period it announces."""
        period = announce_period(self.heartbeat_interval, len(self.peers.live_members()))
        beat = dataclasses.replace(self.heartbeat(), every=period)
        await self.network.publish(self.topic, encode_heartbeat(beat, key=self.access.key))
        return period

    def announce_now(self) -> None:
        """Send a heartbeat at once rather than a period later: this peer's neighbours act on what it says
        (that it reached the training budget: see gossipd.services.exchange)."""
        self._news = True
        self._newcomer.set()

    async def _read_heartbeats(self, subscription: Subscription) -> None:
        async for message in subscription:
            if message.sender == self.network.peer_id:
                continue
            try:
                beat = decode_heartbeat(message.data, task=self.task_hash, key=self.access.key)
                if beat.peer != message.sender:
                    raise WireError(f"heartbeat names {beat.peer} but was signed by {message.sender}")
                if not self.access.admits(beat.peer):
                    raise NotAllowed(f"{beat.peer} is not on the task's allow-list")
            except WireError as exc:
                reason = f"heartbeat-{exc.reason}"
                self.rejections[reason] = self.rejections.get(reason, 0) + 1
                if self.ledger is not None:
                    self.ledger.rejected(message.sender, reason)
                log.debug("ignored a heartbeat from %s: %s", message.sender, exc)
                continue
            known = message.sender in self.peers
            record = self.peers.get(message.sender)
            if record is None or record.last_heard is None:
                self._newcomer.set()
            self.peers.saw(
                beat.peer,
                "pubsub",
                addresses=beat.addresses,
                member=True,
                step=beat.step,
                done=beat.done,
                loss=beat.loss,
                period=beat.every,
            )
            if self.ledger is not None:
                self.ledger.heard(beat.peer, step=beat.step, dataset=beat.dataset)
            self.network.forget_failures(beat.peer)
            if not known or beat.peer not in self.network.connected_peers():
                self._dial_soon(PeerAddress(beat.peer, beat.addresses), "pubsub")

    def _settled(self) -> bool:
        """The view is full (or holds every live member): the DHT has little to tell this peer."""
        live = len(self.peers.live_members())
        return live > 0 and len(self.view) >= min(self.view.capacity, live)

    async def _query_dht(self) -> None:
        # Announce and look quickly at first (a swarm is forming), then settle to the interval; a peer whose
        # view is full asks only every SETTLED_DHT_INTERVAL: each lookup walks the DHT (about 40 KB among
        # 16 daemons), and the topic's heartbeats already tell it of newcomers.
        delay = 1.0
        last = -math.inf
        named: set[str] = set()  # every provider the DHT has named to this peer
        lookups = 0  # past the ramp
        while True:
            ramping_up = delay < self.dht_interval  # the first lookups of a forming swarm always run
            # Settled: the view is full and the DHT works for this peer (its lookups so far named the live
            # members, up to SETTLED_DHT_NAMES of them); until then a newcomer keeps looking every
            # dht_interval. Counted over all lookups: py-libp2p answers with the providers one node holds,
            # often a few, and counted per lookup 16 daemons never settled (about 1 KB/s each way each). A peer
            # that holds records itself is answered from them alone, always the same few: once it has looked
            # SETTLED_DHT_LOOKUPS times past the ramp, any name proves its DHT works.
            wanted = min(len(self.peers.live_members()), SETTLED_DHT_NAMES)
            answered = len(named) >= wanted or (bool(named) and lookups >= SETTLED_DHT_LOOKUPS)
            settled = answered and not ramping_up and self._settled()
            if settled and trio.current_time() - last < SETTLED_DHT_INTERVAL:
                await trio.sleep(delay)
                continue
            last = trio.current_time()
            lookups += 0 if ramping_up else 1
            with trio.move_on_after(DIAL_TIMEOUT * 2) as provide_scope:
                await self.network.provide(self.provider_key)
            if provide_scope.cancelled_caught:
                log.debug("announcing %s in the DHT timed out", self.provider_key)
            with trio.move_on_after(DIAL_TIMEOUT * 2):
                providers = await self.network.find_providers(self.provider_key)
                log.debug("the DHT lists %d other providers of %s", len(providers), self.provider_key)
                for provider in providers:
                    if len(named) >= SETTLED_DHT_NAMES:
                        break  # all the rule counts
                    named.add(provider.peer_id)
                for provider in providers:
                    # A provider record proves membership, not life: the dial decides that.
                    self.peers.saw(provider.peer_id, "dht", addresses=provider.addresses, member=True, heard=False)
                    if provider.peer_id not in self.network.connected_peers():
                        self._dial_soon(provider, "dht")
            await trio.sleep(delay)
            delay = min(self.dht_interval, delay * 2)

    async def _watch_lan(self) -> None:
        while True:
            for found in self.network.local_discoveries():
                self.peers.saw(found.peer_id, "mdns", addresses=found.addresses, heard=False)
                self._dial_soon(found, "mdns")
            await trio.sleep(1.0)

    def _dial_soon(self, peer: PeerAddress, source: str) -> None:
        if self._nursery is None or peer.peer_id in self._dialling or peer.peer_id == self.network.peer_id:
            return
        if not self.access.admits(peer.peer_id):
            return
        self._dialling.add(peer.peer_id)
        self._nursery.start_soon(self._dial, peer, source)

    async def _dial(self, peer: PeerAddress, source: str) -> None:
        try:
            self.network.forget_failures(peer.peer_id)
            with trio.move_on_after(DIAL_TIMEOUT):
                await self.network.connect_peer(peer)
                self.peers.saw(peer.peer_id, source, addresses=peer.addresses)
        except DialError as exc:
            log.debug("could not dial %s found through %s: %s", peer.peer_id, source, exc)
        finally:
            self._dialling.discard(peer.peer_id)

    # -- the view --------------------------------------------------------------------------------------

    def _keep_mixable(self, live: list[str]) -> None:
        """A view of neighbours this peer may not mix with leaves it alone: while training, one whose view all
        reached their budgets would train on unmixed, and past its budget one whose view all train would
        finish with nobody, though live members of its own phase exist outside the view (the exchange
        service mixes only within a phase). So while the view holds fewer than MIN_MIXABLE of this peer's
        phase, one such outsider a second comes in for a member of the other phase."""
        swapped = self.view.prefer(live, self.mixable, MIN_MIXABLE)
        if swapped is not None:
            log.debug("view: %s in for %s, as it is in this peer's phase (past the budget or not)", *swapped[::-1])
            if swapped[0] is not None:
                self.on_leave_view(swapped[0])

    async def _maintain_view(self) -> None:
        since_rewire = 0.0
        while True:
            live = self.peers.live_members()
            for member in [m for m in self.view.members if m not in set(live)]:
                self.view.remove(member)
                self.on_leave_view(member)
            self.view.fill(live)
            if self.rewire_interval > 0 and since_rewire >= self.rewire_interval:
                swapped = self.view.rewire(live)
                if swapped is not None and swapped[0] is not None:
                    self.on_leave_view(swapped[0])
                since_rewire = 0.0
            self._keep_mixable(live)
            self.peers.forget_stale(STALE_AFTER)
            await trio.sleep(1.0)
            since_rewire += 1.0
