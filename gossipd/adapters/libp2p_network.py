"""The `Network` the services use, over py-libp2p 0.8.1, configured as measured in
../shared/notes/py-libp2p-0.8.1.md: Noise and Yamux only (the default also accepts plaintext dialers; Mplex
deadlocks), one connection per peer (else every dial waits 250 ms), GossipSub with an explicit degree, a
1 s heartbeat and flood publishing of this peer's own messages where its mesh is thin, a DHT in server
mode, mDNS on request. Every libp2p failure surfaces as this module's typed errors; libp2p's own loggers
are quietened to ERROR by the daemon.
"""

from __future__ import annotations

import collections
import functools
import logging
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
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
from libp2p.exceptions import BaseLibp2pError, ParseError
from libp2p.identity_utils import load_identity, save_identity
from libp2p.io.abc import Reader
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError, IOException, MessageTooLarge
from libp2p.io.trio import TrioTCPStream
from libp2p.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.common import PROTOCOL_ID as DHT_PROTOCOL
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.io import (
    MAX_PLAINTEXT_LENGTH,
    SIZE_NOISE_MESSAGE_LEN,
    NoisePacketReadWriter,
    NoiseTransportReadWriter,
)
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE, TYPE_DATA, YAMUX_HEADER_FORMAT, Yamux, YamuxStream
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import decode_uvarint, encode_uvarint
from multiaddr import Multiaddr

from gossipd.adapters.libp2p_locks import QuickLock
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


@functools.lru_cache(maxsize=4096)
def _peer(peer_id: str) -> ID:
    """The libp2p ID of a base58 peer id, one object per id: an ID encodes its base58 form anew per object
    (pure-Python big-integer arithmetic), and a daemon looks its neighbours up after every exchange (the
    small CNN's mixing spent about 3% of its CPU decoding and re-encoding them, py-spy 2026-12-05)."""
    return ID.from_base58(peer_id)


@functools.lru_cache(maxsize=4096)
def _address_text(packed: bytes) -> str:
    """A multiaddr's text from its bytes, decoded once: the peerstore hands out the same few addresses after
    every exchange this peer answers, and decoding one walks its protocols in Python."""
    return str(Multiaddr(packed))


# Yamux sends the peer a window update after every read, however small, and libp2p's varint reader reads the
# length one byte at a time: ~14 extra frames per exchange, each its own TCP packet, which measured more bytes
# on the loopback than a float16 rank-1 PowerGossip message (2026-11-30). Reading in chunks makes it one
# update per chunk.
_READ_CHUNK = 1 << 16


_LARGE_READ = 32 * 1024  # bytes in one read: the stream is carrying a large message


async def _return_credit(self: YamuxStream, *, bytes_read: int = 0) -> None:
    """Yamux read credit returned as go-yamux returns it: one window update once half the receive window
    has been read (a quarter, while a large message is being read), none before.

    py-libp2p 0.8.1 also sends one whenever any read credit is owed below that half ("partial slack"), i.e.
    after nearly every message read, each update its own encrypted frame and packet (and its setting
    `PY_YAMUX_RELEASE_ON_READ=0` does not reach that branch). Measured 2026-11-30 on 4 daemons on loopback:
    idle (heartbeats and DHT only), 110 → 60 packets and 20.0 → 16.1 KB a second; on the side-by-side
    benchmark, 6.34 → 6.14 KB per float16 rank-1 exchange, everything counted. Its window auto-tuning is
    kept: it runs with each update, as in py-libp2p.

    A large message was once credited after every 64 KiB read, as py-libp2p does, because its sender polled
    every 10 ms for credit; this adapter's writer wakes when credit arrives (`_write_stream`), and an update
    per read cost both ends a frame each. A quarter of the window, not half, keeps a sender that still polls
    (a py-libp2p peer) from stalling as often. 12 frames of 10 MB in a row on loopback (2026-12-04), after
    the first three: 24-28 ms each, against 31-41 ms with an update per read.
    """
    increment = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        owed = self.target_recv_window - (self.recv_window + buffered)
        threshold = self.target_recv_window // 4 if bytes_read >= _LARGE_READ else self._grow_threshold()
        if owed > 0 and owed >= threshold:
            increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
    if increment > 0:
        await self.send_window_update(increment, skip_lock=True)


# Replaced on the class, not in a subclass: py-libp2p's Yamux builds its streams by that name. The adapter
# is the one user of libp2p in the process, and libp2p is pinned to 0.8.1, whose private names this uses.
YamuxStream._auto_tune_and_send_window_update = _return_credit  # type: ignore[method-assign]


# A Yamux data frame of py-libp2p's largest payload (64 KiB, plus its 12-byte header) is 29 bytes over what
# one Noise message carries (65,519 bytes of plaintext), so Noise sent every full frame as two messages, the
# second of 29 bytes: two encryptions, two writes, and two length-then-body reads on the far end for each
# 64 KiB. Frames of at most one Noise message's plaintext halve that. Only what this end writes changes
# (py-libp2p reads the name when it slices a write; a reader takes frames of any size up to 64 KiB), so stock
# peers are unaffected.
yamux_module.MAX_MESSAGE_SIZE = MAX_PLAINTEXT_LENGTH


_FRAME_PAYLOAD = yamux_module.MAX_MESSAGE_SIZE - HEADER_SIZE
_FRAMES_PER_WRITE = 4  # data frames encrypted and handed to the socket together


def _get_send_window(self: YamuxStream) -> int:
    window: int = self.__dict__["_gossipd_send_window"]
    return window


def _set_send_window(self: YamuxStream, value: int) -> None:
    grew = value > self.__dict__.get("_gossipd_send_window", 0)
    self.__dict__["_gossipd_send_window"] = value
    waiting: trio.Event | None = self.__dict__.get("_gossipd_window_grew")
    if grew and waiting is not None:
        waiting.set()


# py-libp2p's writer polls every 10 ms once its send window is spent, and a 10 MB frame takes about 25 ms on
# loopback: one poll is a third more. A window that grows (a window update arrives: the muxer adds to this
# attribute wherever it reads one) wakes the writer at once.
YamuxStream.send_window = property(_get_send_window, _set_send_window)  # type: ignore[assignment]


async def _write_frames(muxer: Yamux, frames: list[bytes]) -> None:
    """Yamux frames onto the connection as `Yamux._write_frame` writes each, but over Noise on TCP as one
    socket write: each frame still its own Noise message, encrypted in order under the muxer's write lock.
    """
    session = muxer.secured_conn
    noise = getattr(session, "conn", None)
    async with muxer._write_lock:
        if isinstance(session, SecureSession) and isinstance(noise, NoiseTransportReadWriter):
            sealed = [noise.encrypt(frame) for frame in frames]
            wire = b"".join(part for message in sealed for part in (len(message).to_bytes(2, "big"), message))
            await noise.read_writer.read_write_closer.write(wire)
        else:
            for frame in frames:
                await session.write(frame)
    await trio.lowlevel.checkpoint()


def _write_lock(stream: YamuxStream) -> QuickLock:
    """The stream's writers one at a time, as py-libp2p's read-write lock orders them (nothing else takes it:
    a Yamux stream's reads are not locked), without its semaphore's schedule point."""
    lock: QuickLock | None = stream.__dict__.get("_gossipd_write_lock")
    if lock is None:
        lock = stream.__dict__["_gossipd_write_lock"] = QuickLock()
    return lock


async def _write_stream(self: YamuxStream, data: bytes) -> None:
    """py-libp2p's `YamuxStream.write`, but taking up to four frames of the send window at a time (one
    socket write, a quarter of the sender's trips through the stack) and waking when the window grows."""
    if self.send_closed:
        raise MuxedStreamError("Stream is closed for sending")
    total = len(data)
    view = memoryview(data)
    sent = 0
    while sent < total:
        frames: list[bytes] = []
        while not frames:
            async with _write_lock(self):
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                async with self.window_lock:
                    if self.closed:
                        raise MuxedStreamError("Stream is closed")
                    take = min(self.send_window, total - sent, _FRAMES_PER_WRITE * _FRAME_PAYLOAD)
                    if take > 0:
                        self.send_window -= take
                        for at in range(sent, sent + take, _FRAME_PAYLOAD):
                            size = min(_FRAME_PAYLOAD, sent + take - at)
                            header = struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_DATA, 0, self.stream_id, size)
                            frames.append(header + view[at : at + size])
                    else:
                        self._gossipd_window_grew = trio.Event()  # type: ignore[attr-defined]
            if frames:
                break
            self._zero_window_waits += 1
            # Within py-libp2p's 5 s; a closed stream is noticed at the next 10 ms look, as py-libp2p's.
            with trio.move_on_after(5.0) as waited:
                while True:
                    async with self.window_lock:
                        if self.send_window > 0 or self.closed:
                            break
                    with trio.move_on_after(0.01):
                        await self._gossipd_window_grew.wait()  # type: ignore[attr-defined]
            if waited.cancelled_caught:
                raise MuxedStreamError("Timed out waiting for window update after 5 seconds.")
        await _write_frames(self.conn, frames)
        sent += take


YamuxStream.write = _write_stream  # type: ignore[method-assign]


_TCP_READ = 1 << 18  # bytes asked of the socket at once


class _SocketRead:
    """py-libp2p's own read of one TCP connection, for a BufferedReader to refill from."""

    def __init__(self, stream: TrioTCPStream) -> None:
        self._stream = stream

    async def read(self, n: int | None = None) -> bytes:
        data: bytes = await _stock_tcp_read(self._stream, n)
        return data


def _buffered(stream: TrioTCPStream) -> tuple[QuickLock, BufferedReader]:
    state: tuple[QuickLock, BufferedReader] | None = getattr(stream, "_gossipd_buffered", None)
    if state is None:
        state = stream._gossipd_buffered = (QuickLock(), BufferedReader(_SocketRead(stream), chunk=_TCP_READ))  # type: ignore[attr-defined]
    return state


async def _read_buffered(self: TrioTCPStream, n: int | None = None) -> bytes:
    """Up to n bytes from the TCP connection, served from what an earlier read took beyond its ask.

    Noise reads each message as its 2-byte length, then its body, each a separate socket read: two system
    calls and two trips through trio's scheduler per message even when the kernel holds many messages.
    Asking the socket for up to 256 KiB at once and keeping the rest serves most of those reads from memory.
    Errors and end of stream are as py-libp2p's own read: it runs once the buffer is empty.
    """
    if n == 0:
        return b""
    lock, reader = _buffered(self)
    async with lock:  # one reader at a time, as py-libp2p's read (its own lock guards the socket alone)
        return await reader.read(n)


_stock_tcp_read = TrioTCPStream.read
TrioTCPStream.read = _read_buffered  # type: ignore[method-assign]


async def _read_noise_packet(self: NoisePacketReadWriter) -> bytes:
    """One Noise message off a TCP connection: its 2-byte length and its body in one pass over the buffer.

    py-libp2p reads the two through four layers each (msgio, the raw connection, the TCP stream, its lock),
    with a retrying loop and a copy at every layer; a 10 MB frame is 160 such messages. Errors are as
    py-libp2p's: end of stream is an IncompleteReadError, a broken socket a RawConnError, and a closed one
    a ConnectionClosedError. Another transport (a relayed circuit) takes py-libp2p's path.
    """
    raw = self.read_write_closer
    tcp = raw.stream if isinstance(raw, RawConnection) else raw
    if not isinstance(tcp, TrioTCPStream):
        return await _stock_read_packet(self)
    lock, reader = _buffered(tcp)
    try:
        async with lock:
            length = int.from_bytes(await reader.read_exactly(SIZE_NOISE_MESSAGE_LEN), "big")
            return await reader.read_exactly(length)
    except (ConnectionClosedError, IncompleteReadError):
        raise
    except (IOException, ConnectionResetError) as error:
        if raw is tcp:
            raise
        raise RawConnError from error


_stock_read_packet = NoisePacketReadWriter.read_msg
NoisePacketReadWriter.read_msg = _read_noise_packet  # type: ignore[method-assign, assignment]


async def _read_secure(self: SecureSession, n: int | None = None) -> bytes:
    """Up to n bytes of a secured connection's plaintext (all it has buffered, or its next message, if n is
    None), as py-libp2p's read returns them, from the rest of the last message kept as bytes and an offset.

    py-libp2p keeps that rest in a BytesIO: a copy in and a copy out of every message. Yamux reads each
    frame as its 12-byte header, then its body, from one message; here the body is one slice of it.
    """
    if n == 0:
        return b""
    rest: bytes = getattr(self, "_gossipd_rest", b"")
    at: int = getattr(self, "_gossipd_at", 0)
    parts: list[bytes] = []
    have = 0
    while True:
        available = len(rest) - at
        if available:
            take = available if n is None else min(available, n - have)
            parts.append(rest if at == 0 and take == len(rest) else rest[at : at + take])
            at += take
            have += take
            if n is None or have == n:
                break
        self._gossipd_rest, self._gossipd_at = b"", 0  # type: ignore[attr-defined]
        message: bytes = await self.conn.read_msg()
        if message == b"":
            if parts:
                return b"".join(parts)
            raise ConnectionClosedError("Connection closed")
        rest, at = message, 0
    self._gossipd_rest, self._gossipd_at = (rest, at) if at < len(rest) else (b"", 0)  # type: ignore[attr-defined]
    return parts[0] if len(parts) == 1 else b"".join(parts)


SecureSession.read = _read_secure  # type: ignore[method-assign]


_DATA_READ_TIMEOUT = yamux_module._yamux_data_read_timeout()  # py-libp2p reads its environment at every frame


async def _read_data_body(self: Yamux, length: int) -> bytes:
    """A Yamux DATA frame's body, bounded by py-libp2p's timeout: as its own, without growing a bytearray
    and copying it out (the body is usually one read of the secured connection)."""
    with trio.fail_after(_DATA_READ_TIMEOUT):
        body: bytes = await self.secured_conn.read(length)
        if len(body) == length:
            return body
        parts, have = [body], len(body)
        while have < length:
            part: bytes = await self.secured_conn.read(length - have)
            if not part:
                raise IncompleteReadError(
                    f"connection ended {length - have} bytes into a {length}-byte frame",
                    expected_bytes=length,
                    received_bytes=have,
                )
            parts.append(part)
            have += len(part)
        return b"".join(parts)


Yamux._read_data_body = _read_data_body  # type: ignore[method-assign]


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
    """Serves reads from a buffer refilled a chunk at a time, so small reads do not each cost the peer a frame.

    The buffer is the last chunk read and an offset into it: a read hands out a slice, and only a request
    that spans chunks joins pieces (py-libp2p's readers grow a bytearray and copy it out again).
    """

    def __init__(self, stream: Any, *, chunk: int = _READ_CHUNK) -> None:
        self._stream = stream
        self._chunk = chunk
        self._data = b""
        self._at = 0

    def _buffered(self) -> int:
        return len(self._data) - self._at

    def _take(self, n: int) -> bytes:
        data, at = self._data, self._at
        if at == 0 and n == len(data):
            self._data = b""
            return data
        self._at = at + n
        if self._at == len(data):
            self._data, self._at = b"", 0
        return data[at : at + n]

    def _put_back(self, parts: list[bytes]) -> None:
        """Taken pieces back in front of the buffer: a read that fails part way loses nothing it had."""
        if parts:
            self._data, self._at = b"".join([*parts, self._data[self._at :]]), 0

    async def read(self, n: int | None = None) -> bytes:
        if not self._buffered():
            # Asking for at least the caller's n: a large frame's body arrives in as few reads as yamux allows.
            chunk: bytes = await self._stream.read(max(n or 0, self._chunk))
            if not chunk:
                return b""
            self._data, self._at = chunk, 0
        available = self._buffered()
        return self._take(available if n is None or n < 0 else min(n, available))

    async def read_exactly(self, n: int) -> bytes:
        """Exactly n bytes; IncompleteReadError if the stream ends first."""
        if self._buffered() >= n:
            return self._take(n)
        parts = [self._take(self._buffered())] if self._buffered() else []
        have = len(parts[0]) if parts else 0
        try:
            while have < n:
                chunk: bytes = await self._stream.read(max(n - have, self._chunk))
                if not chunk:
                    raise IncompleteReadError(
                        f"stream ended {n - have} bytes short of {n}", expected_bytes=n, received_bytes=have
                    )
                self._data, self._at = chunk, 0
                part = self._take(min(len(chunk), n - have))
                parts.append(part)
                have += len(part)
        except BaseException:
            self._put_back(parts)
            raise
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_frame(self, max_bytes: int) -> bytes:
        """One unsigned-varint length-prefixed frame, refused (MessageTooLarge) before its body is read if its
        length exceeds max_bytes.

        libp2p's own reader takes the body through this buffer and a growing bytearray: seven copies of a
        10 MB frame, a fifth of the receiving end's CPU. Here the buffered start and the reads beyond it are
        joined once.
        """
        prefix = bytearray()
        while not prefix or prefix[-1] & 0x80:
            if len(prefix) == 10:
                raise ParseError("varint length prefix longer than 64 bits")
            byte = await self.read(1)
            if not byte:
                raise IncompleteReadError("stream ended in a length prefix", expected_bytes=1, received_bytes=0)
            prefix += byte
        length = decode_uvarint(bytes(prefix))
        if length > max_bytes:
            raise MessageTooLarge(f"Message length {length} exceeds maximum allowed {max_bytes}")
        parts = [self._take(min(length, self._buffered()))] if self._buffered() else []
        remaining = length - (len(parts[0]) if parts else 0)
        while remaining:
            # A large rest straight from the stream; a small one through the buffer, so it costs no extra frame.
            part: bytes = await (self._stream.read(remaining) if remaining >= self._chunk else self.read(remaining))
            if not part:
                raise IncompleteReadError(
                    f"stream ended {remaining} bytes short of a {length}-byte frame",
                    expected_bytes=length,
                    received_bytes=length - remaining,
                )
            parts.append(part)
            remaining -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)


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
            if len(payload) < _READ_CHUNK:
                await self._stream.write(encode_uvarint(len(payload)) + payload)
            else:  # two writes rather than a copy of a large payload; yamux frames each anyway
                await self._stream.write(encode_uvarint(len(payload)))
                await self._stream.write(payload)
        except BaseLibp2pError as exc:
            raise StreamClosed(f"sending to {self._peer}: {type(exc).__name__} {exc}") from exc

    async def receive(self, max_bytes: int) -> bytes:
        try:
            data: bytes = await self._reader.read_frame(max_bytes)
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


class FloodPublishingGossipSub(GossipSub):
    """GossipSub that sends this peer's own messages to every peer subscribed to the topic while its mesh for
    the topic is thinner than `degree_low` (flood publishing, as GossipSub v1.1 recommends, kept to when the
    mesh cannot deliver; py-libp2p 0.8.1 has none). Forwarding others' messages goes by the mesh as ever.

    Why: the mesh alone lost a peer's heartbeats for good. On 8 daemons of one machine (degree 3, 2..4),
    pruning left one peer with no mesh, and the peers that had pruned it ignored its grafts for the prune
    backoff, so what it published went to no one and, pruned from their meshes, it heard no one either: for
    40 s and more its neighbours took it for a peer still training (its budget announcement and 14 repeats
    of it never arrived) and it them. From a thin mesh its own messages now reach everyone; what it hears
    waits for its grafts, but a neighbour that refuses it as one still training says that it is past its own
    budget (gossipd.services.exchange), which is what the finish needs. Measured on 16 idle daemons, one run
    each, traffic that is not exchanges per daemon, in + out: 2.48 KB/s with the mesh alone, 2.80 when every
    own message was flooded, 3.25 flooding from a thin mesh with a 10 s prune backoff (libp2p's is 60 s:
    the meshes churned more)."""

    def _get_peers_to_send(
        self, topic_ids: Iterable[str], msg_forwarder: ID, origin: ID, msg_id: bytes | None = None
    ) -> Iterable[ID]:
        topics = list(topic_ids)
        chosen = set(super()._get_peers_to_send(topics, msg_forwarder, origin, msg_id))
        pubsub = self.pubsub
        if pubsub is not None and origin == pubsub.my_id:
            for topic in topics:
                if len(self.mesh.get(topic, ())) < self.degree_low:
                    chosen.update(pubsub.peer_topics.get(topic, ()))
            chosen.difference_update((msg_forwarder, origin))
        yield from chosen


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
        gossipsub = FloodPublishingGossipSub(
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
            framed = Libp2pStream(stream)
            try:
                await handler(framed)
            except Exception:
                # A bug in a handler costs its stream, never the host: py-libp2p runs handlers in the
                # connection's nursery, where an exception ends the connection and, up the chain, the daemon
                # (a race in answering an exchange did, 2026-12-04).
                log.exception("handling a %s stream from %s failed", protocol, framed.peer_id)
                await framed.reset()

        self._host.set_stream_handler(TProtocol(protocol), on_stream)

    async def open_stream(self, peer_id: str, protocol: str) -> Libp2pStream:
        try:
            peer = _peer(peer_id)
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
            peer_id = _peer(peer.peer_id)
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
            addrs = self._host.get_peerstore().addrs(_peer(peer_id))
        except (BaseLibp2pError, ValueError, KeyError):
            return ()
        return tuple(_address_text(a.to_bytes()) for a in addrs)

    def forget_failures(self, peer_id: str) -> None:
        with suppress(BaseLibp2pError, ValueError, KeyError, AttributeError):
            self._host.get_network().unblock_peer(_peer(peer_id))

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
