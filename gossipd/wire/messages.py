"""The messages of `/gossipd/mix/2.1.0` and `/gossipd/state/2.0.0`, and their strict msgpack codec.

See protocols/mix-v2.md. A message is a msgpack map with a fixed key order; decoding accepts exactly the
keys of the message's type and bounds every length before trusting it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgpack

from gossipd.wire.errors import (
    FrameTooLarge,
    MalformedMessage,
    UnknownMessageType,
    UnsupportedVersion,
    WrongTask,
)

PROTOCOL_VERSION = 2
TASK_HASH_BYTES = 16
MAX_U64 = (1 << 64) - 1
MAX_DEGREE = 65535
MAX_PHASE = 1024
MAX_REASON_LENGTH = 256


class MessageType(enum.StrEnum):
    HELLO = "hello"  # opens an exchange: the sender's edge epoch, round and degree
    FULL = "full"  # every mixed tensor at full precision (plain gossip, Choco resync, state transfer)
    POWER = "power"  # PowerGossip: projections q of each matrix, plus uncompressed small tensors
    CHOCO = "choco"  # Choco: compressed differences to the public copy
    ABORT = "abort"  # the sender gives up on this exchange; `reason` says why
    AUTH = "auth"  # closed tasks: a challenge nonce (phase 0), then a proof of the task key (phase 1)


_HEADER_KEYS = ("v", "type", "task", "epoch", "round", "deg")
# In a task that weighs by samples ([gossip] weigh_by), every message carries the dataset size its sender
# declares, right after `deg`; in any other task none does (the session checks which; the hash pins it).
EXAMPLES_KEY = "n"
MAX_EXAMPLES = (1 << 48) - 1
# In an auto task ([gossip] algorithm = "auto") every message of an exchange carries the exchange's mode, after
# `n` if both are there: 0 whole models, r ≥ 1 PowerGossip at rank r. Other tasks' messages carry none.
MODE_KEY = "m"
MAX_MODE = 64
_BODY_KEYS: dict[MessageType, tuple[str, ...]] = {
    MessageType.HELLO: (),
    MessageType.FULL: ("phase", "data"),
    MessageType.POWER: ("phase", "data"),
    MessageType.CHOCO: ("phase", "data"),
    MessageType.ABORT: ("reason",),
    MessageType.AUTH: ("phase", "proof"),
}
AUTH_BYTES = 32


@dataclass(frozen=True, kw_only=True)
class Message:
    """One message of an exchange. `epoch`/`round` name the edge state the sender is at. `data` holds the
    round's tensors packed back to back (`pack_tensors`); the receiver splits it by the layout it expects."""

    type: MessageType
    task: bytes
    epoch: int
    round: int
    degree: int
    phase: int = 0
    data: bytes = b""
    reason: str = ""
    proof: bytes = b""
    examples: int | None = None  # the sender's declared dataset size: tasks with `weigh_by = "samples"` only
    mode: int | None = None  # the exchange's mode: auto tasks only (gossipd.mixing.auto)


def encode_message(message: Message) -> bytes:
    """The message as msgpack bytes (without the length prefix the stream adds)."""
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "type": message.type.value,
        "task": message.task,
        "epoch": message.epoch,
        "round": message.round,
        "deg": message.degree,
    }
    if message.examples is not None:
        body[EXAMPLES_KEY] = message.examples
    if message.mode is not None:
        body[MODE_KEY] = message.mode
    keys = _BODY_KEYS[message.type]
    if "phase" in keys:
        body["phase"] = message.phase
    if "data" in keys:
        body["data"] = message.data
    if "proof" in keys:
        body["proof"] = message.proof
    if "reason" in keys:
        body["reason"] = message.reason
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def framed_size(payload_bytes: int) -> int:
    """Bytes on the stream for a payload: the unsigned-varint length prefix plus the payload."""
    return payload_bytes + max(1, (payload_bytes.bit_length() + 6) // 7)


def decode_message(data: bytes, *, max_size: int, task: bytes | None = None) -> Message:
    """Parse and check one message. Raises a `WireError` subclass naming what was wrong.

    `task`, when given, is the receiver's task hash; a message for another task is rejected.
    """
    if len(data) > max_size:
        raise FrameTooLarge(f"message of {len(data)} bytes exceeds the limit of {max_size}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max(MAX_REASON_LENGTH, 16),
            max_bin_len=len(data),
            max_array_len=0,  # no message has an array
            max_map_len=16,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedMessage(f"not a msgpack message: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedMessage(f"expected a map, found {type(obj).__name__}")
    version = obj.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise UnsupportedVersion(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    raw_type = obj.get("type")
    try:
        kind = MessageType(str(raw_type))
    except ValueError:
        raise UnknownMessageType(f"unknown message type {raw_type!r}") from None
    optional = tuple(key for key in (EXAMPLES_KEY, MODE_KEY) if key in obj)
    expected_keys = _HEADER_KEYS + _BODY_KEYS[kind] + optional
    if set(obj) != set(expected_keys):
        extra = sorted(set(obj) - set(expected_keys))
        missing = sorted(set(expected_keys) - set(obj))
        raise MalformedMessage(f"{kind} message: unknown keys {extra}, missing keys {missing}")
    task_hash = _bytes(obj, "task", TASK_HASH_BYTES)
    if task is not None and task_hash != task:
        raise WrongTask(f"message for task {task_hash.hex()}, expected {task.hex()}")
    data = obj.get("data", b"")
    if not isinstance(data, bytes):
        raise MalformedMessage("'data' is not bin")
    proof = _bytes(obj, "proof", AUTH_BYTES) if "proof" in obj else b""
    reason = ""
    if "reason" in obj:
        reason = obj["reason"]
        if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH:
            raise MalformedMessage("'reason' is not a short string")
    return Message(
        type=kind,
        task=task_hash,
        epoch=_int(obj, "epoch", MAX_U64),
        round=_int(obj, "round", MAX_U64),
        degree=_int(obj, "deg", MAX_DEGREE),
        phase=_int(obj, "phase", MAX_PHASE) if "phase" in obj else 0,
        data=data,
        reason=reason,
        proof=proof,
        examples=_int(obj, EXAMPLES_KEY, MAX_EXAMPLES) if EXAMPLES_KEY in obj else None,
        mode=_int(obj, MODE_KEY, MAX_MODE) if MODE_KEY in obj else None,
    )


def _int(obj: dict[str, Any], key: str, high: int) -> int:
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise MalformedMessage(f"{key!r} is {value!r}, expected an integer in 0..{high}")
    return value


def _bytes(obj: dict[str, Any], key: str, length: int) -> bytes:
    value = obj[key]
    if not isinstance(value, bytes) or len(value) != length:
        raise MalformedMessage(f"{key!r} is not {length} bytes")
    return value
