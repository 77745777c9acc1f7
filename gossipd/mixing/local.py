"""Running an exchange between two sessions in one process, through the real wire codec.

The simulator and the tests use this; every message is encoded and decoded exactly as on a stream, so the
byte counts are those that would travel (msgpack payload plus the varint length prefix).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import torch

from gossipd.mixing.layout import ParamLayout, Params, max_message_bytes
from gossipd.mixing.plain import PlainConfig, PlainGossip
from gossipd.mixing.session import ExchangeSession
from gossipd.wire.errors import ProtocolViolation
from gossipd.wire.messages import Message, decode_message, encode_message, framed_size


@dataclass(frozen=True)
class Traffic:
    """Bytes each end sent in one exchange, framing included."""

    a_sent: int
    b_sent: int
    messages: int

    @property
    def total(self) -> int:
        return self.a_sent + self.b_sent


def run_pair(a: ExchangeSession, b: ExchangeSession, *, max_message_bytes: int) -> Traffic:
    """Drive an exchange that `a` opens and `b` answers to completion, each end reading the other's messages
    in the order they were sent; raises the first rejection either end makes."""
    sent = {a: 0, b: 0}
    messages = 0

    def carry(message: Message, sender: ExchangeSession, receiver: ExchangeSession) -> Message:
        nonlocal messages
        wire = encode_message(message)
        sent[sender] += framed_size(len(wire))
        messages += 1
        return decode_message(wire, max_size=max_message_bytes, task=receiver.task)

    to_a = deque(b.answer(carry(a.start(), a, b)))
    to_b: deque[Message] = deque()
    while to_a or to_b:
        if to_a:
            to_b.extend(a.receive(carry(to_a.popleft(), b, a)))
        if to_b:
            to_a.extend(b.receive(carry(to_b.popleft(), a, b)))
    if not (a.done and b.done):
        raise ProtocolViolation("one end finished the exchange while the other expected more rounds")
    return Traffic(sent[a], sent[b], messages)


def plain_exchange_bytes(params: Params, task: bytes) -> int:
    """Bytes one uncompressed exchange of this model takes (both directions), measured through the codec:
    the yardstick for compression ratios."""
    layout = ParamLayout.of(params)
    # Byte counts depend on shapes only; zeros also keep a diverged (NaN) model from failing the measure.
    params = {name: torch.zeros_like(t) for name, t in params.items()}
    other = {name: t.clone() for name, t in params.items()}
    ends = [
        ExchangeSession(
            algorithm=PlainGossip(PlainConfig()),
            params=p,
            layout=layout,
            self_id=me,
            peer_id=them,
            edge=None,
            degree=1,
            task=task,
            fixed_weight=None,
            rng=random.Random(0),
            device=torch.device("cpu"),
        )
        for p, me, them in ((params, b"a", b"b"), (other, b"b", b"a"))
    ]
    return run_pair(ends[0], ends[1], max_message_bytes=max_message_bytes(layout)).total
