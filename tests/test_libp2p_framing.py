"""The libp2p adapter's framing: frames read back to back from chunked reads, one stream read per chunk;
TCP reads served from a buffer; Yamux frames that fit one Noise message, written several to a socket write;
a writer out of send window woken by the window update."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair as new_ed25519
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError, MessageTooLarge
from libp2p.io.trio import TrioTCPStream
from libp2p.peer.id import ID
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoisePacketReadWriter, NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE, TYPE_WINDOW_UPDATE, YAMUX_HEADER_FORMAT, Yamux, YamuxStream
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

from gossipd.adapters.libp2p_locks import QuickLock
from gossipd.adapters.libp2p_network import BufferedReader, Libp2pNetwork
from gossipd.services.network import FrameStream, StreamClosed


class ChunkedStream:
    """A yamux stream stand-in: each read returns at most what one arrived chunk holds, and counts."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.reads = 0

    async def read(self, n: int | None = -1) -> bytes:
        self.reads += 1
        if not self.chunks:
            return b""
        chunk = self.chunks[0]
        take = len(chunk) if n is None or n < 0 else min(n, len(chunk))
        self.chunks[0] = chunk[take:]
        if not self.chunks[0]:
            self.chunks.pop(0)
        return chunk[:take]


async def test_frames_in_one_chunk_cost_one_stream_read() -> None:
    frames = [b"hello", b"x" * 300, b""]
    stream = ChunkedStream([b"".join(encode_varint_prefixed(f) for f in frames)])
    reader = BufferedReader(stream)
    assert [await read_varint_prefixed_bytes_limited(reader, 1000) for _ in frames[:2]] == frames[:2]
    assert stream.reads == 1  # libp2p's reader asks for the length byte by byte; the buffer answers


async def test_a_frame_split_across_chunks_is_reassembled() -> None:
    body = bytes(range(256)) * 600  # 153,600 bytes: a 3-byte length, a body over several chunks
    data = encode_varint_prefixed(body)
    stream = ChunkedStream([data[:1], data[1:70_000], data[70_000:]])
    reader = BufferedReader(stream)
    assert await read_varint_prefixed_bytes_limited(reader, len(body)) == body


async def test_a_stream_ending_inside_a_frame_is_an_incomplete_read() -> None:
    stream = ChunkedStream([encode_varint_prefixed(b"x" * 100)[:50]])
    with pytest.raises(IncompleteReadError):
        await read_varint_prefixed_bytes_limited(BufferedReader(stream), 1000)


class WindowUpdates:
    """Counts the plain (flag-less) Yamux window-update frames every muxer in the process writes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        write_frame = Yamux._write_frame

        async def counting(muxer: Yamux, data: bytes) -> None:
            _, kind, flags, _, _ = struct.unpack(YAMUX_HEADER_FORMAT, data[:HEADER_SIZE])
            self.count += int(kind == TYPE_WINDOW_UPDATE and flags == 0)
            await write_frame(muxer, data)

        monkeypatch.setattr(Yamux, "_write_frame", counting)


PROTOCOL = "/gossipd/test/1.0.0"


@contextlib.asynccontextmanager
async def connected_hosts(
    handler: Callable[[FrameStream], Awaitable[None]],
) -> AsyncIterator[tuple[Libp2pNetwork, Libp2pNetwork]]:
    """Two hosts on loopback, the first connected to the second, which answers PROTOCOL with `handler`."""
    async with (
        Libp2pNetwork.running(new_ed25519(), listen=["/ip4/127.0.0.1/tcp/0"]) as a,
        Libp2pNetwork.running(new_ed25519(), listen=["/ip4/127.0.0.1/tcp/0"]) as b,
    ):
        b.set_handler(PROTOCOL, handler)
        await a.connect(b.addresses()[0])
        yield a, b
        await a._host.disconnect(ID.from_base58(b.peer_id))


@contextlib.asynccontextmanager
async def stream_to_handler(handler: Callable[[FrameStream], Awaitable[None]]) -> AsyncIterator[FrameStream]:
    """Two hosts on loopback; a stream from the first to `handler` on the second."""
    async with connected_hosts(handler) as (a, b):
        stream = await a.open_stream(b.peer_id, PROTOCOL)
        yield stream
        await stream.close()


async def test_small_messages_on_a_real_stream_send_no_window_update_per_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 30 request/reply round trips of a few hundred bytes each. py-libp2p as it ships answers nearly every
    # read with a window-update frame of its own; the adapter returns credit once half the 256 KiB window
    # is read, as go-yamux does, and these ~18 KB come nowhere near that.
    updates = WindowUpdates(monkeypatch)
    received: list[bytes] = []

    async def echo(stream: FrameStream) -> None:
        for _ in range(30):
            message = await stream.receive(1000)
            received.append(message)
            await stream.send(message)

    with trio.fail_after(30):
        async with stream_to_handler(echo) as stream:
            before = updates.count  # the connection's own set-up (identify, pubsub, DHT) is not this test's
            for i in range(30):
                await stream.send(bytes([i]) * 300)
                assert await stream.receive(1000) == bytes([i]) * 300
            assert len(received) == 30
            assert updates.count == before


async def test_messages_larger_than_the_window_still_flow_with_credit_returned_at_half(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 1.5 MB each way, six times the 256 KiB window: the sender stalls unless the reader returns credit
    # (for reads this large, as py-libp2p does; the bound only says it is not one update per small read).
    updates = WindowUpdates(monkeypatch)
    body = bytes(range(256)) * 6000

    async def echo(stream: FrameStream) -> None:
        await stream.send(await stream.receive(len(body)))

    with trio.fail_after(60):
        async with stream_to_handler(echo) as stream:
            before = updates.count
            await stream.send(body)
            assert await stream.receive(len(body)) == body
            assert 1 <= updates.count - before <= 2 * (2 * len(body) // (128 * 1024) + 2)


class Socket:
    """A trio SocketStream stand-in under libp2p's TrioTCPStream: each receive returns at most one arrived
    chunk, and counts."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.receives = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self.receives += 1
        await trio.lowlevel.checkpoint()
        if not self.chunks:
            return b""
        chunk = self.chunks[0]
        take = len(chunk) if max_bytes is None else min(max_bytes, len(chunk))
        self.chunks[0] = chunk[take:]
        if not self.chunks[0]:
            self.chunks.pop(0)
        return chunk[:take]


async def test_noise_messages_read_from_one_socket_receive_come_back_whole_and_in_order() -> None:
    # Noise reads a 2-byte length, then the body: one receive of what the kernel holds serves them all.
    messages = [bytes([i]) * size for i, size in enumerate([65_535, 29, 1, 40_000])]
    wire = b"".join(len(m).to_bytes(2, "big") + m for m in messages)
    socket = Socket([wire[:100_000], wire[100_000:]])
    stream = TrioTCPStream(socket)  # type: ignore[arg-type]
    reader = NoisePacketReadWriter(stream)
    assert [await reader.read_msg() for _ in messages] == messages
    assert socket.receives == 2
    assert await stream.read(10) == b""  # then the end of the stream, as py-libp2p's read reports it


async def test_concurrent_reads_of_one_connection_never_reorder_its_bytes() -> None:
    wire = bytes(range(256)) * 4096  # 1 MiB in chunks of 1000 bytes
    socket = Socket([wire[i : i + 1000] for i in range(0, len(wire), 1000)])
    stream = TrioTCPStream(socket)  # type: ignore[arg-type]
    pieces: list[tuple[int, bytes]] = []
    order = 0

    async def reader(size: int) -> None:
        nonlocal order
        while data := await stream.read(size):
            pieces.append((order, data))
            order += 1

    async with trio.open_nursery() as nursery:
        for size in (7, 300, 5000):
            nursery.start_soon(reader, size)
    assert b"".join(data for _, data in sorted(pieces)) == wire


async def test_a_large_frame_is_written_as_whole_noise_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    # py-libp2p's 64 KiB Yamux payload plus its header is 29 bytes more than one Noise message carries; the
    # adapter's frames fit in one, so 1 MB goes as 1 MB / 65,507 data frames, each one Noise message.
    sizes: list[int] = []
    encrypt = NoiseTransportReadWriter.encrypt

    def counting(self: NoiseTransportReadWriter, msg: bytes) -> bytes:
        sizes.append(len(msg))
        return encrypt(self, msg)

    monkeypatch.setattr(NoiseTransportReadWriter, "encrypt", counting)
    body = bytes(range(256)) * 4096

    async def echo(stream: FrameStream) -> None:
        await stream.send(await stream.receive(len(body)))

    with trio.fail_after(60):
        async with stream_to_handler(echo) as stream:
            sizes.clear()
            await stream.send(body)
            assert await stream.receive(len(body)) == body
    assert max(sizes) <= MAX_PLAINTEXT_LENGTH  # py-libp2p as it ships hands Noise 65,548 bytes: two messages
    assert sum(size > 60_000 for size in sizes) >= 2 * len(body) // 65_507


async def test_concurrent_large_sends_on_several_streams_arrive_intact() -> None:
    # Each stream's writer encrypts up to four frames at once under the connection's write lock; three
    # writers and the window updates flowing back share one connection and one Noise nonce sequence.
    bodies = [bytes([i]) * 700_000 + bytes(range(256)) * 97 for i in range(3)]
    echoed: list[bytes] = [b""] * 3

    async def echo(stream: FrameStream) -> None:
        await stream.send(await stream.receive(1 << 20))

    with trio.fail_after(60):
        async with connected_hosts(echo) as (a, b):

            async def round_trip(i: int) -> None:
                stream = await a.open_stream(b.peer_id, PROTOCOL)
                # ... all of it on locks taken without a schedule point (gossipd.adapters.libp2p_locks)
                net: Any = stream._stream
                for lock in (net._state_lock, net.muxed_stream.window_lock, net.muxed_stream.conn.streams_lock):
                    assert isinstance(lock, QuickLock)
                await stream.send(bodies[i])
                echoed[i] = await stream.receive(1 << 20)
                await stream.close()

            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(round_trip, i)
    assert echoed == bodies


async def test_read_frame_returns_frames_back_to_back_and_a_large_one_whole() -> None:
    large = bytes(range(256)) * 1000  # 256,000 bytes: beyond the 64 KiB chunk, read straight from the stream
    frames = [b"a", b"", large, b"tail"]
    wire = b"".join(encode_varint_prefixed(f) for f in frames)
    stream = ChunkedStream([wire[i : i + 50_000] for i in range(0, len(wire), 50_000)])
    reader = BufferedReader(stream)
    assert [await reader.read_frame(len(large)) for _ in frames] == frames
    assert await reader.read(10) == b""


async def test_read_frame_refuses_an_oversized_length_before_reading_its_body() -> None:
    stream = ChunkedStream([encode_varint_prefixed(b"x" * 10_000)[:3], b"x" * 9_998])
    with pytest.raises(MessageTooLarge):
        await BufferedReader(stream).read_frame(9_999)
    assert stream.reads == 1 and stream.chunks == [b"x" * 9_998]


async def test_read_frame_reports_a_truncated_frame_and_an_overlong_length() -> None:
    with pytest.raises(IncompleteReadError):
        await BufferedReader(ChunkedStream([encode_varint_prefixed(b"x" * 100_000)[:70_000]])).read_frame(1 << 20)
    with pytest.raises(IncompleteReadError):
        await BufferedReader(ChunkedStream([b"\x80"])).read_frame(1 << 20)  # the stream ends inside the length
    with pytest.raises(ParseError):
        await BufferedReader(ChunkedStream([b"\xff" * 11])).read_frame(1 << 20)


class FailingOnce(ChunkedStream):
    """Fails the read after the first, once: a read that is cancelled or breaks part way."""

    async def read(self, n: int | None = -1) -> bytes:
        if self.reads == 1:
            self.reads += 1
            raise trio.TooSlowError
        return await super().read(n)


async def test_read_exactly_that_fails_part_way_loses_none_of_the_bytes_it_took() -> None:
    wire = bytes(range(200))
    reader = BufferedReader(FailingOnce([wire[:30], wire[30:]]), chunk=16)
    assert await reader.read_exactly(10) == wire[:10]
    with pytest.raises(trio.TooSlowError):
        await reader.read_exactly(100)  # takes the 20 buffered bytes, then the stream fails
    assert await reader.read_exactly(190) == wire[10:]


class Messages:
    """A Noise transport stand-in under a SecureSession: hands out whole decrypted messages, then b""."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = messages

    async def read_msg(self) -> bytes:
        return self.messages.pop(0) if self.messages else b""


def session(messages: list[bytes]) -> SecureSession:
    secure = SecureSession.__new__(SecureSession)  # the read path needs only the connection it reads from
    secure.conn = Messages(messages)  # type: ignore[assignment]
    return secure


async def test_secure_session_reads_a_frame_header_then_its_body_from_one_message() -> None:
    header, body = b"H" * 12, bytes(range(256)) * 255
    secure = session([header + body, b"next"])
    assert await secure.read(12) == header
    assert await secure.read(len(body)) == body
    assert await secure.read(100) == b"next"  # up to n: what the next message holds


async def test_secure_session_reads_span_messages_and_end_as_py_libp2p_reads_do() -> None:
    secure = session([b"abc", b"defgh", b"ij"])
    assert await secure.read(2) == b"ab"
    assert await secure.read(None) == b"c"  # n None: what is buffered, without reading on
    assert await secure.read(6) == b"defghi"  # across two messages, the rest of the second kept
    assert await secure.read(5) == b"j"  # the connection ends: what was read so far
    with pytest.raises(ConnectionClosedError):
        await secure.read(5)


async def test_a_writer_waiting_for_send_window_is_woken_when_the_window_grows() -> None:
    stream = YamuxStream.__new__(YamuxStream)  # the window attribute alone
    stream.send_window = 0
    grew = stream._gossipd_window_grew = trio.Event()  # type: ignore[attr-defined]
    stream.send_window -= 0
    assert not grew.is_set()
    stream.send_window += 65_536  # as the muxer applies a window update
    assert grew.is_set() and stream.send_window == 65_536


async def test_a_handler_that_fails_costs_its_stream_and_the_host_answers_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def buggy_then_echo(stream: FrameStream) -> None:
        nonlocal calls
        calls += 1
        message = await stream.receive(1000)
        if calls == 1:
            raise RuntimeError("a bug while answering")
        await stream.send(message)

    with trio.fail_after(30):
        async with connected_hosts(buggy_then_echo) as (a, b):
            first = await a.open_stream(b.peer_id, PROTOCOL)
            await first.send(b"one")
            with pytest.raises(StreamClosed):
                await first.receive(1000)  # reset by the failed handler
            second = await a.open_stream(b.peer_id, PROTOCOL)
            await second.send(b"two")
            assert await second.receive(1000) == b"two"
            await second.close()
    assert calls == 2
    assert any("a bug while answering" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
