"""`/gossipd/state/2.0.0`: a joining peer copies a neighbour's whole model before compressed gossip starts
(a low-rank or sparse correction per exchange cannot close a full-rank gap). Whole, but for the personal
parameters ([gossip] personal): neither end sends or expects them, and the joiner keeps its own."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import trio

from gossipd.mixing.personal import shared_part
from gossipd.mixing.state import read_state, state_message
from gossipd.services.model_host import ModelHost
from gossipd.services.network import FrameStream, Network
from gossipd.services.streams import authenticate
from gossipd.wire.auth import AuthHandshake
from gossipd.wire.messages import Message, MessageType, decode_message, encode_message, framed_size
from gossipd.wire.tensors import DTYPES, TensorSpec

STATE_PROTOCOL = "/gossipd/state/2.0.0"


def max_state_bytes(specs: Mapping[str, TensorSpec]) -> int:
    data = sum(math.prod(s.shape) * DTYPES[s.dtype].itemsize for s in specs.values())
    return data + 512 * len(specs) + 4096


async def serve_state(
    stream: FrameStream,
    trainer: ModelHost,
    *,
    task_hash: bytes,
    half: bool,
    personal: frozenset[str] = frozenset(),
) -> int:
    """Send this peer's model state (taken at a step boundary; floating tensors as float16 with `half`) and
    close; returns the bytes sent. The caller bounds it with a deadline. The `personal` entries ([gossip]
    personal) never leave the peer: the joiner keeps its own."""
    state = shared_part(await trainer.at_boundary(trainer.model_state), personal)
    message = state_message(state, task=task_hash, step=trainer.step, degree=1, half=half)
    payload = await trio.to_thread.run_sync(encode_message, message)
    await stream.send(payload)
    await stream.close()
    return framed_size(len(payload))


async def fetch_state(
    network: Network,
    peer: str,
    *,
    task_hash: bytes,
    specs: Mapping[str, TensorSpec],
    device: torch.device,
    handshake: AuthHandshake | None = None,
) -> tuple[dict[str, torch.Tensor], int, int]:
    """A neighbour's model state, its training step and the bytes received. Raises the network's errors or
    a `WireError` if the state does not match this peer's model exactly. The caller bounds it with a deadline."""
    limit = max_state_bytes(specs)
    stream = await network.open_stream(peer, STATE_PROTOCOL)
    try:
        if handshake is not None:
            await authenticate(stream, handshake)
        request = Message(type=MessageType.HELLO, task=task_hash, epoch=0, round=0, degree=1)
        await stream.send(encode_message(request))
        raw = await stream.receive(limit)
    finally:
        await stream.close()
    message = decode_message(raw, max_size=limit, task=task_hash)
    state = await trio.to_thread.run_sync(read_state, message, specs, device)
    return state, message.round, framed_size(len(raw))
