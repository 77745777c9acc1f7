"""The libp2p adapter's framing: frames read back to back from chunked reads, one stream read per chunk."""

from __future__ import annotations

import pytest
from libp2p.io.exceptions import IncompleteReadError
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

from gossipd.adapters.libp2p_network import BufferedReader


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
