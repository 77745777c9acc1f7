"""Payload throughput of one framed stream between two processes: gossipd's libp2p mix stream (Noise +
Yamux, the daemon's own adapter and framing) against a raw trio TCP socket on loopback.

    python -m gossipd.tools.throughput serve libp2p|tcp     # prints its address, then serves
    python -m gossipd.tools.throughput send libp2p|tcp ADDRESS SIZE REPEATS

The receiver reads one length-prefixed frame and answers one byte; the sender times send + ack.
"""

from __future__ import annotations

import statistics
import sys
import time

import trio

from gossipd.adapters.libp2p_network import Libp2pNetwork
from gossipd.services.network import FrameStream

PROTOCOL = "/gossipd/bench/1.0.0"
LIMIT = 1 << 30


async def _serve_libp2p() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    async with Libp2pNetwork.running(create_new_key_pair(), listen=["/ip4/127.0.0.1/tcp/0"]) as network:

        async def handler(stream: FrameStream) -> None:
            await stream.receive(LIMIT)
            await stream.send(b"k")
            await stream.close()

        network.set_handler(PROTOCOL, handler)
        print(network.addresses()[0], flush=True)
        await trio.sleep_forever()


async def _send_libp2p(address: str, size: int, repeats: int) -> list[float]:
    from libp2p.crypto.ed25519 import create_new_key_pair

    payload = bytes(size)
    times = []
    async with Libp2pNetwork.running(create_new_key_pair(), listen=["/ip4/127.0.0.1/tcp/0"]) as network:
        peer = await network.connect(address)
        for _ in range(repeats):
            started = time.perf_counter()
            stream = await network.open_stream(peer, PROTOCOL)
            await stream.send(payload)
            await stream.receive(16)
            times.append(time.perf_counter() - started)
            await stream.close()
    return times


async def _read_exactly(stream: trio.SocketStream, count: int) -> bytes:
    buffer = bytearray()
    while len(buffer) < count:
        chunk = await stream.receive_some(min(1 << 20, count - len(buffer)))
        if not chunk:
            raise EOFError("connection closed")
        buffer += chunk
    return bytes(buffer)


async def _serve_tcp() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        while True:
            try:
                header = await _read_exactly(stream, 8)
            except EOFError:
                return
            await _read_exactly(stream, int.from_bytes(header, "big"))
            await stream.send_all(b"k")

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    print(f"127.0.0.1:{port}", flush=True)
    await trio.serve_listeners(handler, listeners)


async def _send_tcp(address: str, size: int, repeats: int) -> list[float]:
    host, port = address.rsplit(":", 1)
    payload = bytes(size)
    times = []
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        for _ in range(repeats):
            started = time.perf_counter()
            await stream.send_all(size.to_bytes(8, "big") + payload)
            await _read_exactly(stream, 1)
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    mode, kind = sys.argv[1], sys.argv[2]
    if mode == "serve":
        trio.run(_serve_libp2p if kind == "libp2p" else _serve_tcp)
        return
    address, size, repeats = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    send = _send_libp2p if kind == "libp2p" else _send_tcp
    times = trio.run(send, address, size, repeats)
    print(f"{size / statistics.median(times) / 1e6:.1f}")


if __name__ == "__main__":
    main()
