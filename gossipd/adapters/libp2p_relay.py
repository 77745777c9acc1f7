"""Reaching peers that cannot be dialled, over py-libp2p 0.8.1's circuit relay v2 and DCUtR.

Every daemon runs the relay protocol's *stop* side (it accepts circuits a relay opens to it) and a circuit
transport to dial through relays; a daemon started with `--relay` also runs the *hop* side for others, within
limits on reservations, circuits per reserved peer, bytes and seconds per circuit. py-libp2p's swarm never
dials a `/p2p-circuit` address itself, so this module does: a peer's direct addresses first, then its relayed
ones, each attempt under a deadline (py-libp2p's circuit dial can wait forever on a relay that stops
answering).

When a peer needs a relay: py-libp2p's AutoNAT v1 judges any address on the asker's IP reachable (its
dial-back reuses the connection the request came on; measured 2026-12-02), so it cannot tell a peer it is
unreachable. Instead a daemon takes a failed dial to all of another task member's direct addresses as its
sign: two peers that cannot dial each other either way (different sites, both behind NAT) each see it, and
each then reserves a slot on a relay it is connected to (a bootstrap or DHT peer that speaks the hop
protocol) and advertises `<relay>/p2p-circuit/p2p/<self>` with its own addresses. A peer behind a NAT
that can dial out never needs one: its own outbound connection carries streams both ways.
`--reachability public|private` overrides the guess.

Relayed connections are upgraded where the network allows: DCUtR runs on every daemon, tries a plain direct
dial and then a hole punch; once a direct connection to a peer exists, relayed ones to it are closed, so the
relay's circuit limits are not spent on peers that no longer need it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.connection_types import ConnectionType
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp import tcp as libp2p_tcp
from multiaddr import Multiaddr

from gossipd.services.network import DialError, RelayOffer, RelayStatus

log = logging.getLogger("gossipd.network")

CIRCUIT = "/p2p-circuit"
DIAL_TIMEOUT = 10.0  # one direct or relayed dial attempt
RESERVE_TIMEOUT = 10.0
RESERVATIONS_WANTED = 2  # relays to hold a slot on at once, when one is needed
RESERVE_INTERVAL = 5.0  # seconds between looks at the reservations (also after any dial failure)
FIND_RELAYS_EVERY = 60.0  # seconds between DHT look-ups for relays while none is connected
NOT_A_RELAY_FOR = 120.0  # seconds a peer that refused or failed a reservation is not asked again
DIRECT_SETTLE = 3.0  # seconds a direct connection must have lived before relayed ones to that peer close

REACHABILITY = ("auto", "public", "private")
RELAY_KEY = "/gossipd/relay"  # the DHT key relays provide


def is_circuit(address: str) -> bool:
    return CIRCUIT in address


def circuit_relay(address: str) -> str | None:
    """The relay's peer id in `<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>`, or None."""
    head, found, _ = address.partition(CIRCUIT)
    if not found or "/p2p/" not in head:
        return None
    return head.rsplit("/p2p/", 1)[1].strip("/") or None


def _connections(host: Any, peer: ID) -> list[Any]:
    found = host.get_network().connections.get(peer) or []
    return found if isinstance(found, list) else [found]


def _kind(connection: Any) -> ConnectionType:
    with suppress(Exception):
        kind = connection.get_connection_type()
        if isinstance(kind, ConnectionType):
            return kind
    with suppress(Exception):
        if any(CIRCUIT in str(a) for a in connection.get_transport_addresses()):
            return ConnectionType.RELAYED
    return ConnectionType.DIRECT


@dataclass
class _Reservation:
    relay: ID
    since: float


class Relaying:
    """The relay side of one host: dialling through relays, holding reservations, serving as a relay."""

    def __init__(
        self,
        host: Any,
        *,
        offer: RelayOffer | None,
        reachability: str = "auto",
        admits: Callable[[str], bool] = lambda peer: True,
        dht: Any = None,
    ) -> None:
        if reachability not in REACHABILITY:
            raise ValueError(f"reachability must be one of {', '.join(REACHABILITY)}, not {reachability!r}")
        self._host = host
        self._dht = dht
        self._offer = offer
        self._reachability = reachability
        limits = None
        if offer is not None:
            limits = RelayLimits(
                duration=offer.max_circuit_seconds,
                data=offer.max_circuit_bytes,
                max_circuit_conns=offer.max_circuits,
                max_reservations=offer.max_reservations,
            )
        self.protocol = CircuitV2Protocol(host, limits=limits, allow_hop=offer is not None)
        if offer is not None:
            _admit_only(self.protocol, admits)
        # STOP only: with the CLIENT role py-libp2p's dial also takes a reservation of its own on the relay.
        self.transport = CircuitV2Transport(host, self.protocol, RelayConfig(roles=RelayRole.STOP))
        self.hole_punch = DCUtRProtocol(host)
        self._reservations: dict[ID, _Reservation] = {}
        self._not_a_relay: dict[ID, float] = {}
        self._looked_for_relays = -FIND_RELAYS_EVERY
        self._ever_relayed: set[ID] = set()  # peers a relayed connection was ever held to
        self._direct_since: dict[ID, float] = {}
        self._upgraded: set[ID] = set()  # direct now, relayed first: hole-punched (or upgraded) connections
        self._wanted = trio.Event()
        self._unreachable_seen = 0  # peers whose direct addresses all failed
        self.relayed_dials = 0
        self.refused_reservations = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with (
            background_trio_service(self.protocol),
            background_trio_service(self.hole_punch),
            trio.open_nursery() as nursery,
        ):
            await self.protocol.event_started.wait()
            nursery.start_soon(self._keep_reservations, nursery)
            nursery.start_soon(self._retire_relayed)
            if self._offer is not None and self._dht is not None:
                nursery.start_soon(self._announce_relay)
            task_status.started()

    # -- dialling ---------------------------------------------------------------------------------------

    async def connect(self, peer: ID, addresses: list[str]) -> None:
        """Direct addresses first, then through each relay the peer advertises. Raises DialError."""
        if not addresses:  # a hint with no addresses (a DHT provider): what the peerstore knows
            with suppress(BaseLibp2pError, KeyError):
                addresses = [str(a) for a in self._host.get_peerstore().addrs(peer)]
        direct = [a for a in addresses if not is_circuit(a)]
        relayed = [a for a in addresses if is_circuit(a)]
        errors: list[str] = []
        if direct:
            try:
                with trio.fail_after(DIAL_TIMEOUT):
                    await self._host.connect(PeerInfo(peer, [Multiaddr(a) for a in direct]))
                return
            except (BaseLibp2pError, ValueError, OSError, trio.TooSlowError) as exc:
                errors.append(f"direct: {type(exc).__name__} {exc}")
                self.saw_unreachable()
        for address in self._circuits_to(peer, relayed):
            try:
                with trio.fail_after(DIAL_TIMEOUT):
                    await self.transport.dial(Multiaddr(address))
                self.relayed_dials += 1
                self._ever_relayed.add(peer)
                return
            except (BaseLibp2pError, ValueError, OSError, ConnectionError, trio.TooSlowError) as exc:
                errors.append(f"via {circuit_relay(address)}: {type(exc).__name__} {exc}")
        raise DialError(f"{peer}: " + ("; ".join(errors) or "no addresses"))

    def saw_unreachable(self) -> None:
        """A dial to all of a peer's direct addresses failed: perhaps it (and we) need a relay."""
        self._unreachable_seen += 1
        self._wanted.set()

    def _circuits_to(self, peer: ID, advertised: list[str]) -> list[str]:
        """Circuit addresses to try, built with this host's own addresses of each relay (the advertiser's
        addresses of it may be on a network this host cannot reach), relays already connected first."""
        relays: list[str] = []
        for address in advertised:
            relay = circuit_relay(address)
            if relay is not None and relay not in relays:
                relays.append(relay)
        connected = {p.to_base58() for p in self._host.get_connected_peers()}
        relays.sort(key=lambda r: r not in connected)
        found = []
        for relay in relays:
            try:
                known = self._host.get_peerstore().addrs(ID.from_base58(relay))
            except (BaseLibp2pError, ValueError, KeyError):
                known = []
            for base in [str(a) for a in known if not is_circuit(str(a))]:
                found.append(f"{base.split('/p2p/')[0]}/p2p/{relay}{CIRCUIT}/p2p/{peer}")
        found += [a for a in advertised if a.split(CIRCUIT)[0].count("/") > 2]  # as advertised, last
        return list(dict.fromkeys(found))

    # -- reservations -----------------------------------------------------------------------------------

    def relayed_addresses(self) -> list[str]:
        """`<relay addr>/p2p/<relay>/p2p-circuit/p2p/<self>` for each relay holding a slot for this host."""
        own = self._host.get_id().to_base58()
        addresses = []
        for relay in self._reservations:
            try:
                known = self._host.get_peerstore().addrs(relay)
            except (BaseLibp2pError, KeyError):
                continue
            for address in known:
                base = str(address).split("/p2p/")[0]
                if not is_circuit(base):
                    addresses.append(f"{base}/p2p/{relay.to_base58()}{CIRCUIT}/p2p/{own}")
        return addresses

    def _needs_relay(self) -> bool:
        if self._reachability == "public":
            return False
        return self._reachability == "private" or self._unreachable_seen > 0

    async def _keep_reservations(self, nursery: trio.Nursery) -> None:
        while True:
            with trio.move_on_after(RESERVE_INTERVAL):
                await self._wanted.wait()
            self._wanted = trio.Event()
            connected = set(self._host.get_connected_peers())
            for relay in [r for r in self._reservations if r not in connected]:
                log.info("lost the relay %s (disconnected); will reserve again when it is back", relay)
                del self._reservations[relay]
            if not self._needs_relay() or len(self._reservations) >= RESERVATIONS_WANTED:
                continue
            now = time.monotonic()
            if not self._relay_candidates(connected, now):
                await self._find_relays(now)
                connected = set(self._host.get_connected_peers())
            for relay in self._relay_candidates(connected, now):
                if len(self._reservations) >= RESERVATIONS_WANTED:
                    break
                await self._reserve(relay, nursery, now)

    async def _announce_relay(self) -> None:
        """A relay's provider record, for peers that need one and are connected to none."""
        while True:
            with trio.move_on_after(RESERVE_TIMEOUT), suppress(BaseLibp2pError):
                await self._dht.provide(RELAY_KEY)
            await trio.sleep(60.0)

    async def _find_relays(self, now: float) -> None:
        """Connects to relays listed in the DHT (called when no connected peer is one)."""
        if self._dht is None or now - self._looked_for_relays < FIND_RELAYS_EVERY:
            return
        self._looked_for_relays = now
        try:
            with trio.fail_after(RESERVE_TIMEOUT):
                found = await self._dht.find_providers(RELAY_KEY)
        except (BaseLibp2pError, trio.TooSlowError) as exc:
            log.debug("looking for relays in the DHT failed: %s", exc)
            return
        own = self._host.get_id()
        for info in {i.peer_id: i for i in found}.values():
            if info.peer_id == own or self._not_a_relay.get(info.peer_id, 0.0) > now:
                continue
            with suppress(BaseLibp2pError, ValueError, OSError, trio.TooSlowError), trio.fail_after(DIAL_TIMEOUT):
                await self._host.connect(info)

    def _relay_candidates(self, connected: set[ID], now: float) -> list[ID]:
        candidates = []
        for peer in connected:
            if peer in self._reservations or self._not_a_relay.get(peer, 0.0) > now:
                continue
            try:
                protocols = self._host.get_peerstore().get_protocols(peer)
            except (BaseLibp2pError, KeyError):
                protocols = []
            # Identify fills this in; a peer not identified yet is asked anyway (a refusal costs one stream).
            if not protocols or HOP_PROTOCOL in protocols:
                candidates.append(peer)
        return candidates

    async def _reserve(self, relay: ID, nursery: trio.Nursery, now: float) -> None:
        try:
            with trio.fail_after(RESERVE_TIMEOUT):
                stream = await self._host.new_stream(relay, [HOP_PROTOCOL])
                try:
                    accepted = await self.transport.reserve(stream, relay, nursery)
                finally:
                    with suppress(BaseLibp2pError):
                        await stream.close()
        except (BaseLibp2pError, OSError, ConnectionError, trio.TooSlowError) as exc:
            log.debug("%s is not a relay for us: %s", relay, exc)
            accepted = False
        if not accepted:
            self.refused_reservations += 1
            self._not_a_relay[relay] = now + NOT_A_RELAY_FOR
            return
        log.info("reserved a slot on the relay %s; reachable through it as well", relay)
        self._reservations[relay] = _Reservation(relay=relay, since=now)

    # -- upgrades ---------------------------------------------------------------------------------------

    def connection_kind(self, peer_id: str) -> str | None:
        """How this host reaches a peer now: "direct", "relayed", "hole-punched", or None (not connected)."""
        try:
            peer = ID.from_base58(peer_id)
        except ValueError:
            return None
        kinds = {_kind(c) for c in _connections(self._host, peer)}
        if ConnectionType.RELAYED in kinds:
            self._ever_relayed.add(peer)
        if ConnectionType.DIRECT in kinds:
            return "hole-punched" if peer in self._upgraded else "direct"
        return "relayed" if kinds else None

    def connection_kinds(self, peer_id: str) -> list[str]:
        try:
            peer = ID.from_base58(peer_id)
        except ValueError:
            return []
        return [_kind(c).value for c in _connections(self._host, peer)]

    async def _retire_relayed(self) -> None:
        """Closes relayed connections to peers also reached directly (after DCUtR or a plain dial)."""
        while True:
            await trio.sleep(1.0)
            now = time.monotonic()
            for peer, connections in list(self._host.get_network().connections.items()):
                listed = connections if isinstance(connections, list) else [connections]
                relayed = [c for c in listed if _kind(c) is ConnectionType.RELAYED]
                if relayed:
                    self._ever_relayed.add(peer)
                if len(relayed) == len(listed):
                    self._direct_since.pop(peer, None)
                    continue
                since = self._direct_since.setdefault(peer, now)
                if peer in self._ever_relayed and peer not in self._upgraded:
                    self._upgraded.add(peer)
                    log.info("reached %s directly after a relayed connection", peer)
                if relayed and now - since >= DIRECT_SETTLE:
                    for connection in relayed:
                        with suppress(BaseLibp2pError, OSError), trio.move_on_after(5.0):
                            await connection.close()

    def statistics(self) -> RelayStatus:
        manager = getattr(self.protocol, "resource_manager", None)
        served = len(getattr(manager, "_reservations", {}) or {}) if self._offer is not None else 0
        return RelayStatus(
            offering=self._offer,
            reachability=self._reachability,
            needs_relay=self._needs_relay(),
            reservations=tuple(r.to_base58() for r in self._reservations),
            reservations_served=served,
            relayed_dials=self.relayed_dials,
            refused_reservations=self.refused_reservations,
        )


async def _open_tcp_stream_from(host: str, port: int, source: tuple[str, int]) -> trio.SocketStream:
    """py-libp2p 0.8.1's dial from a bound source port (hole punching), closing its socket on every way out.

    Its own version closes the socket on OSError only; DCUtR cancels the dials that lose a simultaneous open,
    and each cancelled one left an unclosed socket behind (seen as ResourceWarnings in tests/test_relay.py).
    """
    source_ip, source_port = source
    if (":" in source_ip) != (":" in host):
        raise OpenConnectionError(f"Source/destination IP family mismatch: {source_ip} vs {host}")
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    try:
        sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    except OSError as exc:
        raise OpenConnectionError(f"Failed to create TCP socket: {exc}") from exc
    try:
        libp2p_tcp._set_reuse_flags(sock)
        try:
            await sock.bind((source_ip, source_port))
        except OSError:
            sock.close()
            return await trio.open_tcp_stream(host, port)  # no hole punching from here; a plain dial
        await sock.connect((host, port))
    except OSError as exc:
        sock.close()
        raise OpenConnectionError(f"Failed to connect {host}:{port} from {source_ip}:{source_port}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


# Replaced in the module, as the Yamux credit rule is in libp2p_network: libp2p is pinned to 0.8.1.
libp2p_tcp._open_tcp_stream_from = _open_tcp_stream_from


def _admit_only(protocol: CircuitV2Protocol, admits: Callable[[str], bool]) -> None:
    """Refuses reservations from peers the daemon's tasks do not admit (a closed task's allow-list)."""
    manager = protocol.resource_manager
    stock = manager.can_accept_reservation

    def can_accept_reservation(peer_id: ID) -> bool:
        return admits(str(peer_id)) and bool(stock(peer_id))

    manager.can_accept_reservation = can_accept_reservation  # type: ignore[method-assign]
