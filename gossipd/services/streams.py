"""Helpers for the framed streams both ends write first on: send a frame while reading the peer's (Yamux
resets a stream whose reader stalls, so a two-way swap must read while it writes), and the key handshake
of closed tasks."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from gossipd.mixing.session import PeerAborted
from gossipd.services.network import FrameStream
from gossipd.wire.auth import AuthHandshake
from gossipd.wire.messages import Message, MessageType, decode_message, encode_message

AUTH_LIMIT = 1024  # an auth message is ~100 bytes


async def duplex(stream: FrameStream, payload: bytes | Sequence[bytes], limit: int) -> bytes:
    """Send `payload` (one frame, or several in order) and receive one frame at the same time."""
    received: list[bytes] = []
    frames = [payload] if isinstance(payload, bytes) else list(payload)

    async def send() -> None:
        for frame in frames:
            await stream.send(frame)

    async def receive() -> None:
        received.append(await stream.receive(limit))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            nursery.start_soon(receive)
    except BaseExceptionGroup as group:
        # Both directions often fail together (a reset stream): report one error, as callers expect.
        raise first_error(group) from None
    return received[0]


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a group that is not a cancellation; the group itself if all are."""
    for error in group.exceptions:
        inner = first_error(error) if isinstance(error, BaseExceptionGroup) else error
        if not isinstance(inner, trio.Cancelled | BaseExceptionGroup):
            return inner
    return group


async def authenticate(stream: FrameStream, handshake: AuthHandshake, *, first: Message | None = None) -> None:
    """Run the mutual proof of the task key; `first` is the peer's challenge if it was already read.
    Raises `AuthFailed` (or the stream's errors)."""
    challenge = encode_message(handshake.challenge())
    if first is None:
        first = _not_aborted(decode_message(await duplex(stream, challenge, AUTH_LIMIT), max_size=AUTH_LIMIT))
    else:
        await stream.send(challenge)
    proof = encode_message(handshake.prove(first))
    reply = _not_aborted(decode_message(await duplex(stream, proof, AUTH_LIMIT), max_size=AUTH_LIMIT))
    handshake.verify(reply)


def _not_aborted(message: Message) -> Message:
    # A refusal (busy, not allowed, stopping) may come instead of a challenge: it is the peer's answer, not a
    # failed proof.
    if message.type is MessageType.ABORT:
        raise PeerAborted(f"peer aborted the exchange: {message.reason or 'no reason given'}")
    return message
