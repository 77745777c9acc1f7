"""The network as the services see it: framed streams, pubsub, provider records and local discovery.

`gossipd.adapters.libp2p_network` implements it over py-libp2p; tests use an in-memory fake with seeded
loss, delay and peer death. Peer ids are libp2p's base58 strings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol


class StreamClosed(Exception):
    """The peer went away mid-stream: end of stream, reset, or a lost connection."""


class DialError(Exception):
    """No stream could be opened to the peer."""


class FrameTooLarge(Exception):
    """The peer announced a frame above the limit; the stream is reset."""


class FrameStream(Protocol):
    """A bidirectional stream of length-prefixed frames to one peer."""

    @property
    def peer_id(self) -> str: ...

    async def send(self, payload: bytes) -> None: ...

    async def receive(self, max_bytes: int) -> bytes:
        """One whole frame; FrameTooLarge before reading a body above `max_bytes`, StreamClosed on EOF."""
        ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


StreamHandler = Callable[[FrameStream], Awaitable[None]]


@dataclass(frozen=True)
class PeerAddress:
    peer_id: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class RelayOffer:
    """What a daemon started with `--relay` gives other peers (circuit relay v2 limits)."""

    max_reservations: int = 64  # peers holding a slot at once
    max_circuits: int = 8  # open circuits to one reserved peer
    max_circuit_bytes: int = 1 << 30  # bytes through one circuit, both ways, over its whole life
    max_circuit_seconds: int = 3600  # a circuit's life


@dataclass(frozen=True, kw_only=True)
class RelayStatus:
    offering: RelayOffer | None  # None: this daemon is not a relay
    reachability: str  # auto, public or private (`--reachability`)
    needs_relay: bool  # whether it holds (or looks for) reservations
    reservations: tuple[str, ...]  # relays holding a slot for this daemon
    reservations_served: int  # peers holding a slot on this daemon (a relay)
    relayed_dials: int  # connections opened through a relay
    refused_reservations: int  # reservations a relay refused (or peers that were not relays)


@dataclass(frozen=True)
class PubsubMessage:
    sender: str  # the peer id that signed the message
    data: bytes


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[PubsubMessage]: ...


class Network(Protocol):
    @property
    def peer_id(self) -> str: ...

    def addresses(self) -> list[str]:
        """This host's listen addresses, each ending in /p2p/<peer id>."""
        ...

    def set_handler(self, protocol: str, handler: StreamHandler) -> None: ...

    async def open_stream(self, peer_id: str, protocol: str) -> FrameStream:
        """Raises DialError when the peer cannot be reached."""
        ...

    async def connect(self, address: str) -> str:
        """Dial a full multiaddr (ending in /p2p/<id>); returns the peer id. Raises DialError."""
        ...

    async def connect_peer(self, peer: PeerAddress) -> None: ...

    def connected_peers(self) -> list[str]: ...

    def connection_kind(self, peer_id: str) -> str | None:
        """How the peer is reached now: "direct", "relayed", "hole-punched"; None when not connected."""
        ...

    def relay_status(self) -> RelayStatus | None:
        """Relays used and offered; None where the network has no relaying (the in-memory fake)."""
        ...

    def known_addresses(self, peer_id: str) -> tuple[str, ...]: ...

    def forget_failures(self, peer_id: str) -> None:
        """Clear any cache of failed dials to the peer (it was just seen alive again)."""
        ...

    async def subscribe(self, topic: str) -> Subscription: ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    async def provide(self, key: str) -> None:
        """Announce in the DHT that this peer serves `key`."""
        ...

    async def find_providers(self, key: str) -> list[PeerAddress]: ...

    async def refresh_routing(self) -> None: ...

    def local_discoveries(self) -> list[PeerAddress]:
        """Peers found on the LAN (mDNS) since the last call."""
        ...
