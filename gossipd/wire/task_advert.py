"""A task advertisement: what a daemon tells the world about an open task it runs, so that others can find it
and join (`gossipd discover`, `gossipd join --from`). Spec: protocols/tasks-v1.md.

Published on the well-known pubsub topic and listed on the `/gossipd/tasks` stream. Small (well under
GossipSub's 1 MiB cap) and strict: an advert that is not exactly this shape is rejected before anything is
built from it. libp2p signs pubsub messages and Noise authenticates streams, so a receiver also checks that
`peer` is the signer (or the stream's peer): a daemon can only advertise itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from gossipd.wire.errors import MalformedMessage, UnsupportedVersion, WireError

ADVERT_VERSION = 1
MAX_ADVERT_BYTES = 8192
MAX_TASK_ID = 64  # as the task file's `[task] id` (gossipd.task.loader.TASK_ID)
MAX_DESCRIPTION_BYTES = 1024  # UTF-8 bytes; longer descriptions are cut at a character boundary when sent
MAX_NAME = 64  # a model or algorithm name
MAX_PEER_ID = 128
MAX_ADDRESSES = 16
MAX_ADDRESS_LENGTH = 256
MAX_INPUT_DIMS = 8
MAX_DIM = 1 << 31
HASH_BYTES = 16
_KEYS = ("v", "task", "hash", "desc", "model", "params", "input", "algo", "peer", "addrs", "peers")


class WrongSigner(WireError):
    """An advert names another peer than the one that signed (or streamed) it: a forgery, or a relay of one."""

    reason = "wrong-signer"


@dataclass(frozen=True, kw_only=True)
class TaskAdvert:
    task_id: str
    task_hash: bytes  # gossipd.task.loader.task_hash: what peers must agree on to mix
    description: str
    model: str  # the [model] name
    parameters: int  # the model's parameter count
    input_shape: tuple[int, ...]  # one example's shape
    algorithm: str  # the [gossip] algorithm
    peer: str  # the advertising daemon's peer id
    addresses: tuple[str, ...]  # where to dial it, each ending in /p2p/<peer>
    peers: int  # how many live peers of the task the advertiser sees (itself not counted)


def encode_advert(advert: TaskAdvert) -> bytes:
    """Canonical bytes (keys in the spec's order); a long description is cut, and addresses that are too long,
    too many or not the advertiser's own (ending in /p2p/<peer>) are left out."""
    packed: bytes = msgpack.packb(
        {
            "v": ADVERT_VERSION,
            "task": advert.task_id,
            "hash": advert.task_hash,
            "desc": truncate_utf8(advert.description, MAX_DESCRIPTION_BYTES),
            "model": advert.model,
            "params": advert.parameters,
            "input": list(advert.input_shape),
            "algo": advert.algorithm,
            "peer": advert.peer,
            "addrs": [a for a in advert.addresses if _dialable(a, advert.peer)][:MAX_ADDRESSES],
            "peers": advert.peers,
        },
        use_bin_type=True,
    )
    return packed


def truncate_utf8(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")


def decode_advert(data: bytes) -> TaskAdvert:
    """Raises a `WireError` naming why the bytes are not an advert."""
    if len(data) > MAX_ADVERT_BYTES:
        raise MalformedMessage(f"advert of {len(data)} bytes, above {MAX_ADVERT_BYTES}")
    obj = unpack_strict(data, max_str=MAX_DESCRIPTION_BYTES, max_bin=HASH_BYTES, max_array=MAX_ADDRESSES)
    if not isinstance(obj, dict) or set(obj) != set(_KEYS):
        raise MalformedMessage("advert does not have exactly the expected keys")
    check_version(obj["v"], ADVERT_VERSION, "advert")
    return TaskAdvert(
        task_id=_text(obj, "task", MAX_TASK_ID),
        task_hash=_hash(obj["hash"]),
        description=_text(obj, "desc", MAX_DESCRIPTION_BYTES, empty=True),
        model=_text(obj, "model", MAX_NAME),
        parameters=_count(obj, "params"),
        input_shape=_shape(obj["input"]),
        algorithm=_text(obj, "algo", MAX_NAME),
        peer=_text(obj, "peer", MAX_PEER_ID),
        addresses=_addresses(obj["addrs"], obj["peer"]),
        peers=_count(obj, "peers"),
    )


def check_signer(advert: TaskAdvert, signer: str) -> TaskAdvert:
    """The advert, if the peer it names is the one that signed it (pubsub) or sent it (a stream)."""
    if advert.peer != signer:
        raise WrongSigner(f"advert names {advert.peer} but came from {signer}")
    return advert


# -- strict decoding helpers, shared with gossipd.wire.task_requests ------------------------------------


def unpack_strict(data: bytes, *, max_str: int, max_bin: int, max_array: int) -> Any:
    """One msgpack object, nothing after it, no extension types, with msgpack's own size caps set so no large
    string, binary or array is allocated before the caller checks it."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_str,
            max_bin_len=max_bin,
            max_array_len=max_array,
            max_map_len=len(_KEYS),
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # msgpack raises ExtraData (a ValueError) for trailing bytes and ValueError for truncation.
        raise MalformedMessage(f"not one msgpack object: {type(exc).__name__} {exc}") from None


def check_version(value: Any, expected: int, what: str) -> None:
    if isinstance(value, bool) or value != expected:
        raise UnsupportedVersion(f"{what} version {value!r}, expected {expected}")


def _hash(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        raise MalformedMessage(f"task hash is not {HASH_BYTES} bytes")
    return value


def _text(obj: dict[str, Any], key: str, limit: int, *, empty: bool = False) -> str:
    value = obj[key]
    if not isinstance(value, str) or len(value.encode()) > limit or (not value and not empty):
        raise MalformedMessage(f"advert {key} is not a string of {'0' if empty else '1'}-{limit} bytes")
    return value


def _count(obj: dict[str, Any], key: str) -> int:
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise MalformedMessage(f"advert {key} is not a count")
    return value


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_INPUT_DIMS:
        raise MalformedMessage(f"advert input shape is not a list of 1-{MAX_INPUT_DIMS} sizes")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIM for d in value):
        raise MalformedMessage("advert input shape holds something other than positive sizes")
    return tuple(value)


def _addresses(value: Any, peer: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) and _dialable(a, peer) for a in value):
        raise MalformedMessage(f"advert addresses are not the peer's own, of at most {MAX_ADDRESS_LENGTH} bytes")
    return tuple(value)


def _dialable(address: str, peer: str) -> bool:
    """A multiaddr of the advertising peer: dialling it reaches that peer or fails, never another one."""
    return len(address.encode()) <= MAX_ADDRESS_LENGTH and address.endswith(f"/p2p/{peer}")
