"""An in-memory `Network` for tests: a swarm of peers in one process, on trio's (virtual) clock.

A `FakeHub` connects `FakeNetwork`s, one per peer. Streams are pairs of trio memory channels that carry whole
frames, as `Libp2pStream` does over Yamux; stream handlers run in the nursery the hub was given. Everything
random is drawn from the hub's seeded generator and every delay is a `trio.sleep`, so a test under
`autojump_clock` replays the same swarm every time.

The fault model, modelled on what the services see of py-libp2p:

- *latency* (+ uniform *jitter*): each frame, pubsub message and dial takes that many virtual seconds; the
  frames of one direction of a stream stay in order.
- *bandwidth*: bytes per second each direction of each stream carries: a frame goes out once the frames
  before it in that direction have, taking its size over the bandwidth, then the latency.
- *loss*: each frame is lost with probability `loss`, and its direction of the stream then stalls for good
  (nothing after it arrives, end of stream included), as a connection that lost its packets hangs until the
  reader's deadline. Each pubsub delivery to another peer is dropped with the same probability.
- `hang(peer)` is SIGSTOP: frames from or to the peer are held, its handlers, sends, closes, resets and dials
  wait, and dials to it hang; nothing fails. `revive(peer)` (SIGCONT) lets everything held go on.
- `kill(peer)` is the process dying: every stream it has open fails at both ends at once (`StreamClosed`),
  its stream handlers are cancelled, dials to it and from it raise `DialError` after one latency, and pubsub
  skips it. `revive(peer)` brings it back with the same id and handlers, as a restarted daemon would be (the
  services' state is the test's to keep or rebuild).

Closing a stream half-closes it: the reader sees end of stream after the frames sent before it. Resetting it
fails this end at once and the other end once the frames sent before the reset have arrived (Yamux's RST
travels behind them). `receive(max_bytes)` resets the stream and raises `FrameTooLarge` on a frame above the
limit. An exception escaping a handler escapes the hub's nursery too, failing the test.

The services' own tasks (an `ExchangeService.run`, say) belong to the test, and unlike a stopped process a
hung peer's timers still run: its deadlines pass while it hangs, and what it does about them (an abort, a
reset) waits until it is revived. A killed peer's loops keep running unless the test cancels them, but all
they can do is fail.
"""

from __future__ import annotations

import contextlib
import enum
import math
import random
from collections import Counter
from dataclasses import dataclass

import trio

from gossipd.services.network import (
    DialError,
    FrameTooLarge,
    PeerAddress,
    PubsubMessage,
    StreamClosed,
    StreamHandler,
)


class _Signal(enum.Enum):
    """What travels down a pipe besides frames, in order with them."""

    EOF = "end of stream"
    RESET = "stream reset"


_Frame = tuple[float, bytes | _Signal]  # (virtual time it may be delivered, a frame or a signal)


class PeerState(enum.Enum):
    RUNNING = "running"
    HUNG = "hung"
    DEAD = "dead"


@dataclass
class DialRecord:
    """One `open_stream`/`connect` as the hub saw it, in virtual time; `outcome` is "ok", "unreachable"
    (dead or unknown peer), "no-handler", or "abandoned" (the dialler's deadline passed first)."""

    source: str
    target: str
    protocol: str | None
    started: float
    ended: float | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class HubStatistics:
    frames_sent: int
    frames_lost: int
    streams_opened: int
    streams_reset: int  # by either end (kills not included)
    pubsub_delivered: int
    pubsub_dropped: int


@dataclass
class _Pipe:
    """One direction of a stream."""

    send: trio.MemorySendChannel[_Frame]
    receive: trio.MemoryReceiveChannel[_Frame]
    stalled: bool = False  # a frame was lost: nothing after it arrives
    last_due: float = -math.inf
    sent_until: float = -math.inf  # when the frames sent so far have all left (with a bandwidth)


def _pipe() -> _Pipe:
    send, receive = trio.open_memory_channel[_Frame](math.inf)
    return _Pipe(send, receive)


class FakeStream:
    """One end of a stream: `peer_id` is the other end's."""

    def __init__(self, hub: FakeHub, owner: str, remote: str, protocol: str, outbound: _Pipe, inbound: _Pipe):
        self._hub = hub
        self._owner = owner
        self._remote = remote
        self.protocol = protocol
        self._outbound = outbound
        self._inbound = inbound
        self._closed = False  # this end sent end of stream
        self._eof = False  # this end received end of stream
        self._reset = False  # this end reset the stream, or learnt that the other end did
        self._held: _Frame | None = None  # taken from the channel, not yet due
        self._partner: FakeStream | None = None  # the other end

    @property
    def peer_id(self) -> str:
        return self._remote

    async def send(self, payload: bytes) -> None:
        await trio.lowlevel.checkpoint()
        await self._hub._wait_running(self._owner)  # a stopped process sends nothing
        if self._reset:
            raise StreamClosed(f"sending to {self._remote}: stream reset")
        if self._closed:
            raise StreamClosed(f"sending to {self._remote}: stream closed")
        self._hub._transmit(self._outbound, bytes(payload))

    async def receive(self, max_bytes: int) -> bytes:
        payload = await self._next()
        if isinstance(payload, bytes):
            if len(payload) > max_bytes:
                await self.reset()
                raise FrameTooLarge(f"frame of {len(payload)} bytes from {self._remote} exceeds {max_bytes}")
            return payload
        if payload is _Signal.RESET:
            self._reset = True
        elif payload is _Signal.EOF:
            self._eof = True
        raise StreamClosed(f"receiving from {self._remote}: {'stream reset' if self._reset else 'end of stream'}")

    async def _next(self) -> bytes | _Signal | None:
        """The next due frame or signal, or None once this end is reset or at end of stream."""
        while not (self._reset or self._eof):
            if self._held is None:
                try:
                    self._held = await self._inbound.receive.receive()
                except (trio.ClosedResourceError, trio.EndOfChannel):  # reset here, or a peer was killed
                    self._reset = True
                continue
            due, payload = self._held
            if trio.current_time() >= due and self._hub._can_deliver(self._remote, self._owner):
                self._held = None
                return payload
            changed = self._hub._changed
            # Not due yet: wake when it is; due but an end is hung: wake when a peer changes state.
            with trio.move_on_at(due if trio.current_time() < due else math.inf):
                await changed.wait()
        return None

    async def close(self) -> None:
        await self._hub._wait_running(self._owner)
        if not (self._closed or self._reset):
            self._closed = True
            self._hub._transmit(self._outbound, _Signal.EOF)
        await trio.lowlevel.checkpoint()

    async def reset(self) -> None:
        await self._hub._wait_running(self._owner)  # a stopped process resets nothing either
        if not self._reset:
            self._reset = True
            self._hub._counts["streams_reset"] += 1
            self._hub._transmit(self._outbound, _Signal.RESET)  # after the frames already sent
            self._inbound.receive.close()  # what is still on its way here is dropped
        await trio.lowlevel.checkpoint()

    def _abort(self) -> None:
        """The process at one end died: both ends fail at once."""
        self._reset = True
        self._outbound.send.close()
        self._inbound.receive.close()


class FakeSubscription:
    def __init__(self, hub: FakeHub, owner: str, receive: trio.MemoryReceiveChannel[tuple[float, PubsubMessage]]):
        self._hub = hub
        self._owner = owner
        self._receive = receive

    def __aiter__(self) -> FakeSubscription:
        return self

    async def __anext__(self) -> PubsubMessage:
        due, message = await self._receive.receive()
        await trio.sleep_until(due)
        await self._hub._wait_running(self._owner)
        return message


class FakeHub:
    """The medium every `FakeNetwork` of a test shares; handlers run in `nursery`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        rng: random.Random,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        loss: float = 0.0,
        bandwidth: float = math.inf,
    ) -> None:
        if latency < 0 or jitter < 0 or not 0 <= loss <= 1 or not bandwidth > 0:
            raise ValueError("latency and jitter must be >= 0, loss in [0, 1] and bandwidth > 0")
        self.nursery = nursery
        self.rng = rng
        self.latency = latency
        self.bandwidth = bandwidth
        self.jitter = jitter
        self.loss = loss
        self.networks: dict[str, FakeNetwork] = {}
        self.dials: list[DialRecord] = []
        self._states: dict[str, PeerState] = {}
        self._streams: dict[str, list[FakeStream]] = {}  # each peer's ends of streams
        self._handler_scopes: dict[str, set[trio.CancelScope]] = {}
        self._connections: set[frozenset[str]] = set()
        self._subscriptions: dict[str, list[tuple[str, trio.MemorySendChannel[tuple[float, PubsubMessage]]]]] = {}
        self._providers: dict[str, dict[str, None]] = {}
        self._changed = trio.Event()  # set (and replaced) whenever a peer or stream changes state
        self._counts: Counter[str] = Counter()

    # -- peers and faults ------------------------------------------------------------------------------

    def add_peer(self, peer_id: str | None = None) -> FakeNetwork:
        peer_id = peer_id or f"12D3KooWFake{len(self.networks):04d}"
        if peer_id in self.networks:
            raise ValueError(f"peer {peer_id} already exists")
        network = FakeNetwork(self, peer_id)
        self.networks[peer_id] = network
        self._states[peer_id] = PeerState.RUNNING
        self._handler_scopes[peer_id] = set()
        self._streams[peer_id] = []
        return network

    def state(self, peer_id: str) -> PeerState:
        return self._states[peer_id]

    def hang(self, peer_id: str) -> None:
        self._set_state(peer_id, PeerState.HUNG)

    def kill(self, peer_id: str) -> None:
        self._set_state(peer_id, PeerState.DEAD)
        ends, self._streams[peer_id] = self._streams[peer_id], []
        for stream in ends:
            partner = stream._partner
            stream._abort()
            if partner is not None:
                partner._abort()
                self._streams[stream.peer_id].remove(partner)
        for scope in self._handler_scopes[peer_id]:
            scope.cancel()

    def revive(self, peer_id: str) -> None:
        self._set_state(peer_id, PeerState.RUNNING)

    def announce_on_lan(self, peer_id: str) -> None:
        """Every other running peer's `local_discoveries()` will list `peer_id` (an mDNS answer)."""
        found = PeerAddress(peer_id, tuple(self.networks[peer_id].addresses()))
        for other, network in self.networks.items():
            if other != peer_id and self._states[other] is not PeerState.DEAD:
                network._lan.append(found)

    def statistics(self) -> HubStatistics:
        c = self._counts
        return HubStatistics(
            frames_sent=c["frames_sent"],
            frames_lost=c["frames_lost"],
            streams_opened=c["streams_opened"],
            streams_reset=c["streams_reset"],
            pubsub_delivered=c["pubsub_delivered"],
            pubsub_dropped=c["pubsub_dropped"],
        )

    def dials_between(self, source: str, target: str) -> list[DialRecord]:
        return [d for d in self.dials if d.source == source and d.target == target]

    def _set_state(self, peer_id: str, state: PeerState) -> None:
        if peer_id not in self._states:
            raise KeyError(f"unknown peer {peer_id}")
        self._states[peer_id] = state
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_running(self, peer_id: str) -> None:
        """Block while the peer is hung (its process is stopped)."""
        while self._states[peer_id] is PeerState.HUNG:
            await self._changed.wait()

    def _can_deliver(self, source: str, target: str) -> bool:
        return PeerState.HUNG not in (self._states[source], self._states[target])

    def _delay(self) -> float:
        return self.latency + (self.jitter * self.rng.random() if self.jitter else 0.0)

    def _lost(self) -> bool:
        return self.loss > 0 and self.rng.random() < self.loss

    # -- streams ---------------------------------------------------------------------------------------

    async def _dial(self, source: str, target: str, protocol: str | None) -> StreamHandler | None:
        """Wait out a dial: DialError if either end is dead or the target lacks the protocol; hangs while
        either end is hung. Returns the target's handler for `protocol`."""
        record = DialRecord(source, target, protocol, started=trio.current_time())
        self.dials.append(record)
        try:
            await trio.sleep(self._delay())
            while True:
                states = (self._states[source], self._states.get(target, PeerState.DEAD))
                if PeerState.DEAD in states:
                    record.outcome = "unreachable"
                    raise DialError(f"{target}: unreachable from {source}")
                if PeerState.HUNG not in states:
                    break
                await self._changed.wait()
            handler = self.networks[target]._handlers.get(protocol) if protocol is not None else None
            if protocol is not None and handler is None:
                record.outcome = "no-handler"
                raise DialError(f"{target}: protocol {protocol} not supported")
            self._connections.add(frozenset((source, target)))
            record.outcome = "ok"
            return handler
        finally:
            if record.outcome is None:
                record.outcome = "abandoned"
            record.ended = trio.current_time()

    def _open(self, source: str, target: str, protocol: str, handler: StreamHandler) -> FakeStream:
        there, back = _pipe(), _pipe()
        dialler = FakeStream(self, source, target, protocol, outbound=there, inbound=back)
        listener = FakeStream(self, target, source, protocol, outbound=back, inbound=there)
        dialler._partner, listener._partner = listener, dialler
        self._streams[source].append(dialler)
        self._streams[target].append(listener)
        self._counts["streams_opened"] += 1
        self.nursery.start_soon(self._serve, target, handler, listener)
        return dialler

    async def _serve(self, owner: str, handler: StreamHandler, stream: FakeStream) -> None:
        with trio.CancelScope() as scope:
            self._handler_scopes[owner].add(scope)
            try:
                await self._wait_running(owner)
                if self._states[owner] is not PeerState.DEAD:
                    await handler(stream)
            finally:
                self._handler_scopes[owner].discard(scope)

    def _transmit(self, pipe: _Pipe, payload: bytes | _Signal) -> None:
        if pipe.stalled:
            return
        if isinstance(payload, bytes):
            self._counts["frames_sent"] += 1
            if self._lost():
                self._counts["frames_lost"] += 1
                pipe.stalled = True
                return
        leaves = trio.current_time()
        if isinstance(payload, bytes) and math.isfinite(self.bandwidth):
            leaves = pipe.sent_until = max(leaves, pipe.sent_until) + len(payload) / self.bandwidth
        due = max(pipe.last_due, leaves + self._delay())
        pipe.last_due = due
        # The reader may be gone already (it reset the stream): the frame is dropped on arrival.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            pipe.send.send_nowait((due, payload))

    # -- pubsub ----------------------------------------------------------------------------------------

    def _subscribe(self, owner: str, topic: str) -> FakeSubscription:
        send, receive = trio.open_memory_channel[tuple[float, PubsubMessage]](math.inf)
        self._subscriptions.setdefault(topic, []).append((owner, send))
        return FakeSubscription(self, owner, receive)

    def _publish(self, sender: str, topic: str, data: bytes) -> None:
        if self._states[sender] is PeerState.DEAD:
            return
        now = trio.current_time()
        for owner, send in self._subscriptions.get(topic, []):
            if self._states[owner] is PeerState.DEAD:
                continue
            if owner != sender and self._lost():
                self._counts["pubsub_dropped"] += 1
                continue
            due = now if owner == sender else now + self._delay()
            send.send_nowait((due, PubsubMessage(sender=sender, data=bytes(data))))
            self._counts["pubsub_delivered"] += 1


class FakeNetwork:
    """One peer's view of the hub; implements `gossipd.services.network.Network`."""

    def __init__(self, hub: FakeHub, peer_id: str) -> None:
        self._hub = hub
        self._peer_id = peer_id
        self._handlers: dict[str, StreamHandler] = {}
        self._lan: list[PeerAddress] = []
        self.forgotten: Counter[str] = Counter()  # forget_failures calls per peer

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def addresses(self) -> list[str]:
        return [f"/memory/{self._peer_id}/p2p/{self._peer_id}"]

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler

    async def open_stream(self, peer_id: str, protocol: str) -> FakeStream:
        handler = await self._hub._dial(self._peer_id, peer_id, protocol)
        if handler is None:  # _dial raises first; this keeps the type checker informed
            raise DialError(f"{peer_id}: protocol {protocol} not supported")
        return self._hub._open(self._peer_id, peer_id, protocol, handler)

    async def connect(self, address: str) -> str:
        if "/p2p/" not in address:
            raise DialError(f"{address}: no /p2p/ peer id")
        peer_id = address.rsplit("/p2p/", 1)[-1]
        await self._hub._dial(self._peer_id, peer_id, None)
        return peer_id

    async def connect_peer(self, peer: PeerAddress) -> None:
        await self._hub._dial(self._peer_id, peer.peer_id, None)

    def connection_kind(self, peer_id: str) -> str | None:
        return "direct" if peer_id in self.connected_peers() else None

    def relay_status(self) -> None:
        return None

    def connected_peers(self) -> list[str]:
        hub = self._hub
        return sorted(
            other
            for pair in hub._connections
            if self._peer_id in pair
            for other in pair - {self._peer_id}
            if hub._states[other] is not PeerState.DEAD
        )

    def known_addresses(self, peer_id: str) -> tuple[str, ...]:
        network = self._hub.networks.get(peer_id)
        return tuple(network.addresses()) if network is not None else ()

    def forget_failures(self, peer_id: str) -> None:
        self.forgotten[peer_id] += 1

    async def subscribe(self, topic: str) -> FakeSubscription:
        await trio.lowlevel.checkpoint()
        return self._hub._subscribe(self._peer_id, topic)

    async def publish(self, topic: str, data: bytes) -> None:
        await self._hub._wait_running(self._peer_id)
        self._hub._publish(self._peer_id, topic, data)
        await trio.lowlevel.checkpoint()

    async def provide(self, key: str) -> None:
        await trio.lowlevel.checkpoint()
        self._hub._providers.setdefault(key, {})[self._peer_id] = None

    async def find_providers(self, key: str) -> list[PeerAddress]:
        await trio.sleep(self._hub._delay())
        return [
            PeerAddress(peer, tuple(self._hub.networks[peer].addresses()))
            for peer in self._hub._providers.get(key, {})
            if peer != self._peer_id
        ]

    async def refresh_routing(self) -> None:
        await trio.lowlevel.checkpoint()

    def local_discoveries(self) -> list[PeerAddress]:
        found, self._lan = self._lan, []
        return found
