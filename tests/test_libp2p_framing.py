"""The libp2p adapter's framing: frames read back to back from chunked reads, one stream read per chunk;
TCP reads served from a buffer; Yamux frames that fit one Noise message."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair as new_ed25519
from libp2p.io.exceptions import IncompleteReadError
from libp2p.io.trio import TrioTCPStream
from libp2p.peer.id import ID
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoisePacketReadWriter, NoiseTransportReadWriter
from libp2p.stream_muxer.yamux.yamux import HEADER_SIZE, TYPE_WINDOW_UPDATE, YAMUX_HEADER_FORMAT, Yamux
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

from gossipd.adapters.libp2p_network import BufferedReader, Libp2pNetwork
from gossipd.services.network import FrameStream


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


@contextlib.asynccontextmanager
async def stream_to_handler(handler: Callable[[FrameStream], Awaitable[None]]) -> AsyncIterator[FrameStream]:
    """Two hosts on loopback; a stream from the first to `handler` on the second."""
    async with (
        Libp2pNetwork.running(new_ed25519(), listen=["/ip4/127.0.0.1/tcp/0"]) as a,
        Libp2pNetwork.running(new_ed25519(), listen=["/ip4/127.0.0.1/tcp/0"]) as b,
    ):
        b.set_handler("/gossipd/test/1.0.0", handler)
        await a.connect(b.addresses()[0])
        stream = await a.open_stream(b.peer_id, "/gossipd/test/1.0.0")
        yield stream
        await stream.close()
        await a._host.disconnect(ID.from_base58(b.peer_id))


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
    write_msg = NoiseTransportReadWriter.write_msg

    async def counting(self: NoiseTransportReadWriter, msg: bytes, prefix_encoded: bool = False) -> None:
        sizes.append(len(msg))
        await write_msg(self, msg, prefix_encoded)

    monkeypatch.setattr(NoiseTransportReadWriter, "write_msg", counting)
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
