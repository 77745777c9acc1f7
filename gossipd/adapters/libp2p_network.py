"""The `Network` the services use, over py-libp2p 0.8.1, configured as measured in
../shared/notes/py-libp2p-0.8.1.md: Noise and Yamux only (the default also accepts plaintext dialers; Mplex
deadlocks), one connection per peer (else every dial waits 250 ms), GossipSub with an explicit degree and a
1 s heartbeat, a DHT in server mode, mDNS on request. Every libp2p failure surfaces as this module's typed
errors; libp2p's own loggers are quietened to ERROR by the daemon.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair as new_ed25519
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
from libp2p.custom_types import TProtocol
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.exceptions import BaseLibp2pError
from libp2p.identity_utils import load_identity, save_identity
from libp2p.io.abc import Reader
from libp2p.io.exceptions import MessageTooLarge
from libp2p.io.trio import TrioTCPStream
from libp2p.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.common import PROTOCOL_ID as DHT_PROTOCOL
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited
from multiaddr import Multiaddr

from gossipd.adapters.libp2p_relay import Relaying, circuit_relay, is_circuit
from gossipd.services.network import (
    DialError,
    FrameTooLarge,
    PeerAddress,
    PubsubMessage,
    RelayOffer,
    RelayStatus,
    StreamClosed,
    StreamHandler,
    Subscription,
)

log = logging.getLogger("gossipd.network")


def load_or_create_identity(path: Path) -> KeyPair:
    """The daemon's persistent Ed25519 key (mode 0600): the same peer id after every restart."""
    if path.exists():
        key_pair: KeyPair = load_identity(path)
        return key_pair
    key_pair = new_ed25519()
    save_identity(key_pair, path)
    return key_pair


def ephemeral_identity() -> KeyPair:
    """A throwaway Ed25519 key for a short-lived client host (`gossipd discover`): never the daemon's own
    identity, which a daemon running on this machine may be using at the same time."""
    key_pair: KeyPair = new_ed25519()
    return key_pair


def peer_id_of(key_pair: KeyPair) -> str:
    return str(ID.from_pubkey(key_pair.public_key).to_base58())


# Yamux sends the peer a window update after every read, however small, and libp2p's varint reader reads the
# length one byte at a time: ~14 extra frames per exchange, each its own TCP packet, which measured more bytes
# on the loopback than a float16 rank-1 PowerGossip message (2026-11-30). Reading in chunks makes it one
# update per chunk.
_READ_CHUNK = 1 << 16


_LARGE_READ = 32 * 1024  # bytes in one read: the stream is carrying a large message
_stock_credit = YamuxStream._auto_tune_and_send_window_update


async def _return_credit_at_half_window(self: YamuxStream, *, bytes_read: int = 0) -> None:
    """Yamux read credit returned as go-yamux returns it: one window update once half the receive window
    has been read, none before.

    py-libp2p 0.8.1 also sends one whenever any read credit is owed below that half ("partial slack"), i.e.
    after nearly every message read, each update its own encrypted frame and packet (and its setting
    `PY_YAMUX_RELEASE_ON_READ=0` does not reach that branch). Measured 2026-11-30 on 4 daemons on loopback:
    idle (heartbeats and DHT only), 110 → 60 packets and 20.0 → 16.1 KB a second; on the side-by-side
    benchmark, 6.34 → 6.14 KB per float16 rank-1 exchange, everything counted. Its window auto-tuning is
    kept: it runs with each update, as in py-libp2p.

    A read of a large message's bytes (a plain-gossip model, a state transfer) returns its credit as
    py-libp2p does: its sender polls every 10 ms once its window is spent, and holding credit back to half
    the window took a 10 MB frame on loopback from 195–255 to 99–221 MB/s; a wider window made it worse
    (85–108: the receiver's buffer is trimmed from the front at every read). With the large reads handed
    back: 185–236 MB/s (3 runs each, measured 2026-11-30).
    """
    if bytes_read >= _LARGE_READ:
        await _stock_credit(self, bytes_read=bytes_read)
        return
    increment = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        owed = self.target_recv_window - (self.recv_window + buffered)
        if owed > 0 and owed >= self._grow_threshold():
            increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
    if increment > 0:
        await self.send_window_update(increment, skip_lock=True)


# Replaced on the class, not in a subclass: py-libp2p's Yamux builds its streams by that name. The adapter
# is the one user of libp2p in the process, and libp2p is pinned to 0.8.1, whose private names this uses.
YamuxStream._auto_tune_and_send_window_update = _return_credit_at_half_window  # type: ignore[method-assign]


# A Yamux data frame of py-libp2p's largest payload (64 KiB, plus its 12-byte header) is 29 bytes over what
# one Noise message carries (65,519 bytes of plaintext), so Noise sent every full frame as two messages, the
# second of 29 bytes: two encryptions, two writes, and two length-then-body reads on the far end for each
# 64 KiB. Frames of at most one Noise message's plaintext halve that. Only what this end writes changes
# (py-libp2p reads the name when it slices a write; a reader takes frames of any size up to 64 KiB), so stock
# peers are unaffected.
yamux_module.MAX_MESSAGE_SIZE = MAX_PLAINTEXT_LENGTH


_TCP_READ = 1 << 18  # bytes asked of the socket at once


class _SocketRead:
    """py-libp2p's own read of one TCP connection, for a BufferedReader to refill from."""

    def __init__(self, stream: TrioTCPStream) -> None:
        self._stream = stream

    async def read(self, n: int | None = None) -> bytes:
        data: bytes = await _stock_tcp_read(self._stream, n)
        return data


async def _read_buffered(self: TrioTCPStream, n: int | None = None) -> bytes:
    """Up to n bytes from the TCP connection, served from what an earlier read took beyond its ask.

    Noise reads each message as its 2-byte length, then its body, each a separate socket read: two system
    calls and two trips through trio's scheduler per message even when the kernel holds many messages.
    Asking the socket for up to 256 KiB at once and keeping the rest serves most of those reads from memory.
    Errors and end of stream are as py-libp2p's own read: it runs once the buffer is empty.
    """
    state: tuple[trio.Lock, BufferedReader] | None = getattr(self, "_gossipd_buffered", None)
    if state is None:
        state = self._gossipd_buffered = (trio.Lock(), BufferedReader(_SocketRead(self), chunk=_TCP_READ))  # type: ignore[attr-defined]
    if n == 0:
        return b""
    lock, reader = state
    async with lock:  # one reader at a time, as py-libp2p's read (its own lock guards the socket alone)
        return await reader.read(n)


_stock_tcp_read = TrioTCPStream.read
TrioTCPStream.read = _read_buffered  # type: ignore[method-assign]


_stock_write_msg = Pubsub.write_msg


async def _write_msg_record_once(self: Pubsub, stream: Any, rpc_msg: Any) -> bool:
    """A pubsub RPC without the sender's signed peer record, unless it changes subscriptions.

    py-libp2p 0.8.1 attaches that record (about 250 bytes: addresses, key, signature) to every RPC, each
    forwarded message and IHAVE included; a peer already has it from the stream's first RPC (the hello,
    written elsewhere, keeps it) and gossipd dials from its own heartbeats' addresses. Measured 2026-12-03,
    16 idle daemons, GossipSub bytes sent per daemon: the records were 0.76 of 1.8 KB/s. A receiver reads
    an RPC without one as before (the field is optional), so stock peers are unaffected.
    """
    if not rpc_msg.subscriptions and rpc_msg.HasField("senderRecord"):
        rpc_msg.ClearField("senderRecord")
    ok: bool = await _stock_write_msg(self, stream, rpc_msg)
    return ok


Pubsub.write_msg = _write_msg_record_once  # type: ignore[method-assign]


class BufferedReader(Reader):
    """Serves reads from a buffer refilled a chunk at a time, so small reads do not each cost the peer a frame."""

    def __init__(self, stream: Any, *, chunk: int = _READ_CHUNK) -> None:
        self._stream = stream
        self._chunk = chunk
        self._buffer = bytearray()

    async def read(self, n: int | None = None) -> bytes:
        if not self._buffer:
            # Asking for at least the caller's n: a large frame's body arrives in as few reads as yamux allows.
            chunk: bytes = await self._stream.read(max(n or 0, self._chunk))
            if not chunk:
                return b""
            self._buffer += chunk
        take = len(self._buffer) if n is None or n < 0 else min(n, len(self._buffer))
        data = bytes(self._buffer[:take])
        del self._buffer[:take]
        return data


class Libp2pStream:
    """A libp2p stream carrying unsigned-varint length-prefixed frames."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._reader = BufferedReader(stream)
        self._peer = str(stream.muxed_conn.peer_id.to_base58())

    @property
    def peer_id(self) -> str:
        return self._peer

    async def send(self, payload: bytes) -> None:
        try:
            await self._stream.write(encode_varint_prefixed(payload))
        except BaseLibp2pError as exc:
            raise StreamClosed(f"sending to {self._peer}: {type(exc).__name__} {exc}") from exc

    async def receive(self, max_bytes: int) -> bytes:
        try:
            data: bytes = await read_varint_prefixed_bytes_limited(self._reader, max_bytes)
        except MessageTooLarge as exc:
            await self.reset()
            raise FrameTooLarge(str(exc)) from exc
        except BaseLibp2pError as exc:
            raise StreamClosed(f"receiving from {self._peer}: {type(exc).__name__} {exc}") from exc
        return data

    async def close(self) -> None:
        with suppress(BaseLibp2pError):  # already gone: nothing left to close
            await self._stream.close()

    async def reset(self) -> None:
        with suppress(BaseLibp2pError):
            await self._stream.reset()


class Libp2pSubscription:
    def __init__(self, subscription: Any) -> None:
        self._subscription = subscription

    async def __aiter__(self) -> AsyncIterator[PubsubMessage]:
        while True:
            message = await self._subscription.get()
            sender = str(ID(message.from_id).to_base58()) if message.from_id else ""
            yield PubsubMessage(sender=sender, data=bytes(message.data))


def _after(
    ready: trio.Event, closing: trio.Event, handler: Callable[[Any], Awaitable[None]]
) -> Callable[[Any], Awaitable[None]]:
    async def guarded(stream: Any) -> None:
        await ready.wait()
        try:
            await handler(stream)
        except RuntimeError:
            # Pubsub and the DHT stop before the host does; a stream they were still reading then hands them
            # work they can no longer take ("Nursery is closed to new arrivals"), which would otherwise fail
            # the host's teardown and turn a clean shutdown into exit status 1 (seen in `make soak`).
            if not closing.is_set():
                raise

    return guarded


class Libp2pNetwork:
    """A running libp2p host with pubsub and the DHT. Build it with `Libp2pNetwork.running(...)`."""

    def __init__(self, host: Any, pubsub: Pubsub, dht: KadDHT, relaying: Relaying) -> None:
        self._host = host
        self._pubsub = pubsub
        self._dht = dht
        self._relaying = relaying
        self._peer_id = str(host.get_id().to_base58())
        self._lan: collections.deque[PeerAddress] = collections.deque(maxlen=1024)
        self._lan_lock = threading.Lock()

    @classmethod
    @asynccontextmanager
    async def running(
        cls,
        key_pair: KeyPair,
        *,
        listen: Sequence[str],
        mdns: bool = False,
        relay: RelayOffer | None = None,
        reachability: str = "auto",
        admits: Callable[[str], bool] = lambda peer: True,
    ) -> AsyncIterator[Libp2pNetwork]:
        # Bootstrap peers are dialled by the discovery service once pubsub and the DHT run (libp2p's own
        # bootstrap option dials inside host.run, before them, and hung there in our tests).
        try:
            listen_addrs = [Multiaddr(a) for a in listen]
        except (ValueError, BaseLibp2pError) as exc:
            raise DialError(f"bad listen multiaddr: {exc}") from exc
        host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_ID: NoiseTransport(key_pair, noise_privkey=new_x25519().private_key)},
            muxer_opt={YAMUX_ID: Yamux},  # type: ignore[dict-item]
            connection_config=ConnectionConfig(max_connections_per_peer=1),
            enable_mDNS=mdns,
        )
        gossipsub = GossipSub(
            protocols=[PROTOCOL_ID_V11],
            # Every message reaches each member about once per mesh link it has, so the mesh degree
            # multiplies all discovery traffic. The topics carry a message a second or less (see
            # gossipd.peering.announce), which a degree of 3 delivers; IHAVE gossip to 6 others covers a
            # lost link. Adaptive gossip raised the degrees to 7 and more on loopback (its health score
            # misreads a swarm on one address): 16 idle daemons, GossipSub bytes each way per daemon, measured
            # 2026-12-03: 6.2 KB/s with degree 4 (2..8) and adaptive gossip, 1.8 KB/s with 3 (2..4) without.
            degree=3,
            degree_low=2,
            degree_high=4,
            adaptive_gossip_enabled=False,
            heartbeat_interval=1,
            # Announcements are small and rare; libp2p's 10 msg/s limit would only drop them silently.
            spam_protection_enabled=False,
        )
        pubsub = Pubsub(host, gossipsub)
        dht = KadDHT(host, DHTMode.SERVER)
        services_ready = trio.Event()
        closing = trio.Event()
        # A peer may open a pubsub or DHT stream as soon as the host listens (the bootstrap dials happen
        # inside host.run), before those services run; their handlers then crash the connection and the
        # host with it. Hold such streams until the services are up.
        for protocol in gossipsub.get_protocols():
            host.set_stream_handler(protocol, _after(services_ready, closing, pubsub.stream_handler))
        host.set_stream_handler(DHT_PROTOCOL, _after(services_ready, closing, dht.handle_stream))
        relaying = Relaying(host, offer=relay, reachability=reachability, admits=admits, dht=dht)
        network = cls(host, pubsub, dht, relaying)
        if mdns:
            peerDiscovery.register_peer_discovered_handler(network._on_lan_peer)
        try:
            async with (
                host.run(listen_addrs=listen_addrs),
                background_trio_service(pubsub),
                background_trio_service(gossipsub),
                background_trio_service(dht),
                trio.open_nursery() as nursery,
            ):
                await pubsub.wait_until_ready()
                await nursery.start(relaying.run)
                services_ready.set()
                try:
                    yield network
                finally:
                    closing.set()
                    nursery.cancel_scope.cancel()
        finally:
            if mdns:
                peerDiscovery.unregister_peer_discovered_handler(network._on_lan_peer)

    # -- identity and streams --------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def addresses(self) -> list[str]:
        """The listen addresses, then one relayed address per relay address for each relay holding a slot."""
        return [str(a) for a in self._host.get_addrs()] + self._relaying.relayed_addresses()

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        async def on_stream(stream: Any) -> None:
            await handler(Libp2pStream(stream))

        self._host.set_stream_handler(TProtocol(protocol), on_stream)

    async def open_stream(self, peer_id: str, protocol: str) -> Libp2pStream:
        try:
            peer = ID.from_base58(peer_id)
        except ValueError as exc:
            raise DialError(f"{peer_id}: not a peer id") from exc
        if peer not in self._host.get_connected_peers():
            # py-libp2p's own dial skips relayed addresses: dial here, direct first, then through a relay.
            await self._relaying.connect(peer, [])
        try:
            stream = await self._host.new_stream(peer, [TProtocol(protocol)])
        except (BaseLibp2pError, ValueError, OSError) as exc:
            raise DialError(f"{peer_id}: {type(exc).__name__} {exc}") from exc
        return Libp2pStream(stream)

    async def connect(self, address: str) -> str:
        if is_circuit(address):
            peer = address.rsplit("/p2p/", 1)[-1]
            if circuit_relay(address) is None or not peer:
                raise DialError(f"{address}: a relayed address ends in /p2p/<peer> after /p2p/<relay>/p2p-circuit")
            await self.connect_peer(PeerAddress(peer, (address,)))
            return peer
        try:
            info = info_from_p2p_addr(Multiaddr(address))
            await self._host.connect(info)
        except (BaseLibp2pError, ValueError, OSError) as exc:
            raise DialError(f"{address}: {type(exc).__name__} {exc}") from exc
        await self._add_to_routing(info.peer_id)
        return str(info.peer_id.to_base58())

    async def connect_peer(self, peer: PeerAddress) -> None:
        """Its direct addresses first, then through the relays it advertises (DialError if all fail)."""
        try:
            peer_id = ID.from_base58(peer.peer_id)
        except ValueError as exc:
            raise DialError(f"{peer.peer_id}: not a peer id") from exc
        if peer_id in self._host.get_connected_peers():
            return
        await self._relaying.connect(peer_id, list(peer.addresses))
        await self._add_to_routing(peer_id)

    async def _add_to_routing(self, peer_id: ID) -> None:
        try:
            await self._dht.add_peer(peer_id)
        except BaseLibp2pError as exc:
            log.debug("could not add %s to the DHT routing table: %s", peer_id, exc)

    def connected_peers(self) -> list[str]:
        return [str(p.to_base58()) for p in self._host.get_connected_peers()]

    def connection_kind(self, peer_id: str) -> str | None:
        return self._relaying.connection_kind(peer_id)

    def connection_kinds(self, peer_id: str) -> list[str]:
        """Each open connection to the peer: "direct" or "relayed" (a peer may briefly have both)."""
        return self._relaying.connection_kinds(peer_id)

    def relay_status(self) -> RelayStatus:
        return self._relaying.statistics()

    def known_addresses(self, peer_id: str) -> tuple[str, ...]:
        try:
            addrs = self._host.get_peerstore().addrs(ID.from_base58(peer_id))
        except (BaseLibp2pError, ValueError, KeyError):
            return ()
        return tuple(str(a) for a in addrs)

    def forget_failures(self, peer_id: str) -> None:
        with suppress(BaseLibp2pError, ValueError, KeyError, AttributeError):
            self._host.get_network().unblock_peer(ID.from_base58(peer_id))

    # -- pubsub and the DHT -------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> Subscription:
        return Libp2pSubscription(await self._pubsub.subscribe(topic))

    async def publish(self, topic: str, data: bytes) -> None:
        try:
            await self._pubsub.publish(topic, data)
        except BaseLibp2pError as exc:
            log.debug("publish on %s failed: %s", topic, exc)

    async def provide(self, key: str) -> None:
        try:
            await self._dht.provide(key)
        except BaseLibp2pError as exc:
            log.debug("provide %s failed: %s", key, exc)

    async def find_providers(self, key: str) -> list[PeerAddress]:
        try:
            found = await self._dht.find_providers(key)
        except BaseLibp2pError as exc:
            log.debug("find_providers %s failed: %s", key, exc)
            return []
        unique: dict[str, PeerAddress] = {}  # libp2p returns duplicates
        for info in found:
            peer = str(info.peer_id.to_base58())
            if peer != self._peer_id:
                unique[peer] = PeerAddress(peer, tuple(str(a) for a in info.addrs))
        return list(unique.values())

    async def refresh_routing(self) -> None:
        try:
            await self._dht.refresh_routing_table()
        except BaseLibp2pError as exc:
            log.debug("routing table refresh failed: %s", exc)

    # -- mDNS ----------------------------------------------------------------------------------------

    def _on_lan_peer(self, info: PeerInfo) -> None:
        # Called from zeroconf's thread, not trio's: only queue it here.
        peer = str(info.peer_id.to_base58())
        if peer != self._peer_id:
            with self._lan_lock:
                self._lan.append(PeerAddress(peer, tuple(str(a) for a in info.addrs)))

    def local_discoveries(self) -> list[PeerAddress]:
        with self._lan_lock:
            found = list(self._lan)
            self._lan.clear()
        return found
