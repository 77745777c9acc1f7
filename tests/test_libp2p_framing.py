"""The libp2p adapter's framing: frames read back to back from chunked reads, one stream read per chunk."""

from __future__ import annotations

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair as new_ed25519
from libp2p.io.exceptions import IncompleteReadError
from libp2p.peer.id import ID
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

from gossipd.adapters.libp2p_network import BufferedReader, Libp2pNetwork, Libp2pStream
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


async def test_small_messages_on_a_real_stream_send_no_window_update_per_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two hosts on loopback; 30 request/reply round trips of a few hundred bytes each. With py-libp2p's
    # default ("release on read") every read answers with its own window-update frame; batched, none of
    # these ~10 KB comes near half the 256 KiB window.
    monkeypatch.delenv("PY_YAMUX_RELEASE_ON_READ", raising=False)
    received: list[bytes] = []
    served: list[FrameStream] = []

    async def echo(stream: FrameStream) -> None:
        served.append(stream)
        for _ in range(30):
            message = await stream.receive(1000)
            received.append(message)
            await stream.send(message)

    with trio.fail_after(30):
        async with (
            Libp2pNetwork.running(new_ed25519(), listen=["/ip4/127.0.0.1/tcp/0"]) as a,
            Libp2pNetwork.running(new_ed25519(), listen=["/ip4/127.0.0.1/tcp/0"]) as b,
        ):
            b.set_handler("/gossipd/test/1.0.0", echo)
            await a.connect(b.addresses()[0])
            stream = await a.open_stream(b.peer_id, "/gossipd/test/1.0.0")
            for i in range(30):
                await stream.send(bytes([i]) * 300)
                assert await stream.receive(1000) == bytes([i]) * 300
            await stream.close()
            assert len(received) == 30
            for end in (stream, served[0]):
                assert isinstance(end, Libp2pStream)
                # py-libp2p's own count of the window updates that returned one read's credit each
                assert end._stream.muxed_stream._window_update_bytes_read_only == 0
            await a._host.disconnect(ID.from_base58(b.peer_id))
