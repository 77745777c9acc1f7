"""Discovery announcements on a task's GossipSub topic: who I am, where to dial me, how far I am.

Small (well under GossipSub's 1 MiB cap) and strict: a heartbeat that is not exactly this shape is dropped.
libp2p signs pubsub messages, so the receiver also checks that `peer` is the signer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack

from gossipd.wire.auth import AuthFailed, heartbeat_mac, same
from gossipd.wire.errors import MalformedMessage, UnsupportedVersion, WrongTask

HEARTBEAT_VERSION = 3
MAX_HEARTBEAT_BYTES = 8192
MAX_ADDRESSES = 16
MAX_ADDRESS_LENGTH = 256
MAX_KEYS = 32  # a later version's heartbeat may add keys (read as this version's), up to this many in all
# Version 2 adds the dataset size a peer declares (for neighbours' ledgers and `weigh_by`) and the seconds
# until its next heartbeat (its liveness, see gossipd.peering.announce); version 3 adds `done`, whether the
# peer is past its own training budget (neighbours keep the two phases apart, gossipd.services.exchange: a
# step compared with the receiver's budget misjudges peers whose budgets differ). Versions 1 and 2 (daemons
# of before 2026-12-05) are still read, without them. A heartbeat of a later version is read as version 3
# when it holds at least version 3's keys: later versions only add keys, so today's daemons keep hearing
# tomorrow's (a version-2 daemon drops version 3's, which is why none of this was learnt sooner).
_KEYS = {
    1: ("v", "task", "peer", "addrs", "step", "loss", "exchanges"),
    2: ("v", "task", "peer", "addrs", "step", "loss", "exchanges", "dataset", "every"),
    3: ("v", "task", "peer", "addrs", "step", "loss", "exchanges", "dataset", "every", "done"),
}
MIN_PERIOD, MAX_PERIOD = 0.1, 3600.0


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    task: bytes
    peer: str
    addresses: tuple[str, ...]
    step: int
    loss: float | None
    exchanges: int
    dataset: int | None = None  # training examples it declares; None: it does not say (an attached script)
    every: float | None = 2.0  # seconds until its next heartbeat; None: not said (a version-1 heartbeat)
    done: bool | None = False  # past its own training budget; None: not said (a version-1 or 2 heartbeat)


def encode_heartbeat(beat: Heartbeat, key: bytes | None = None) -> bytes:
    """The heartbeat; for a closed task, wrapped with a MAC under the task key so non-members' are dropped."""
    body = _encode_body(beat)
    if key is None:
        return body
    wrapped: bytes = msgpack.packb({"hb": body, "mac": heartbeat_mac(key, body)}, use_bin_type=True)
    return wrapped


def _encode_body(beat: Heartbeat) -> bytes:
    packed: bytes = msgpack.packb(
        {
            "v": HEARTBEAT_VERSION,
            "task": beat.task,
            "peer": beat.peer,
            "addrs": list(beat.addresses[:MAX_ADDRESSES]),
            "step": beat.step,
            "loss": beat.loss if beat.loss is not None and math.isfinite(beat.loss) else None,
            "exchanges": beat.exchanges,
            "dataset": beat.dataset,
            "every": float(beat.every if beat.every is not None else 2.0),
            "done": bool(beat.done),
        },
        use_bin_type=True,
    )
    return packed


def decode_heartbeat(data: bytes, *, task: bytes, key: bytes | None = None) -> Heartbeat:
    if len(data) > MAX_HEARTBEAT_BYTES:
        raise MalformedMessage(f"heartbeat of {len(data)} bytes")
    if key is not None:
        data = _unwrap(data, key)
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_ADDRESS_LENGTH,
            max_bin_len=64,
            max_array_len=MAX_ADDRESSES,
            max_map_len=MAX_KEYS,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedMessage(f"heartbeat is not msgpack: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedMessage("heartbeat is not a map")
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UnsupportedVersion(f"heartbeat version {version!r}")
    if version > HEARTBEAT_VERSION:
        if not set(_KEYS[HEARTBEAT_VERSION]) <= set(obj):
            raise MalformedMessage(f"heartbeat version {version} lacks keys of version {HEARTBEAT_VERSION}")
        version = HEARTBEAT_VERSION  # what this daemon knows of it; the keys it adds are not read
    elif set(obj) != set(_KEYS[version]):
        raise MalformedMessage(f"heartbeat version {version} does not have exactly the expected keys")
    if obj["task"] != task:
        raise WrongTask("heartbeat for another task")
    peer, addresses = obj["peer"], obj["addrs"]
    if not isinstance(peer, str) or not 0 < len(peer) <= 128:
        raise MalformedMessage("heartbeat peer id is not a short string")
    if not isinstance(addresses, list) or not all(isinstance(a, str) and a for a in addresses):
        raise MalformedMessage("heartbeat addresses are not strings")
    return Heartbeat(
        task=task,
        peer=peer,
        addresses=tuple(addresses),
        step=_count(obj, "step"),
        loss=_loss(obj["loss"]),
        exchanges=_count(obj, "exchanges"),
        dataset=None if obj.get("dataset") is None else _count(obj, "dataset"),
        every=_period(obj["every"]) if version >= 2 else None,
        done=_flag(obj, "done") if version >= 3 else None,
    )


def _count(obj: dict[str, Any], key: str) -> int:
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise MalformedMessage(f"heartbeat {key} is not a count")
    return value


def _flag(obj: dict[str, Any], key: str) -> bool:
    value = obj[key]
    if not isinstance(value, bool):
        raise MalformedMessage(f"heartbeat {key} is not true or false")
    return value


def _period(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not MIN_PERIOD <= value <= MAX_PERIOD:
        raise MalformedMessage(f"heartbeat period is not a number of seconds in {MIN_PERIOD}..{MAX_PERIOD}")
    return float(value)


def _loss(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise MalformedMessage("heartbeat loss is not a finite number")
    return float(value)


def _unwrap(data: bytes, key: bytes) -> bytes:
    try:
        obj = msgpack.unpackb(data, raw=False, max_bin_len=MAX_HEARTBEAT_BYTES, max_map_len=2, max_array_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedMessage(f"heartbeat is not msgpack: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != {"hb", "mac"}:
        raise AuthFailed("heartbeat of a closed task without its MAC")
    body, mac = obj["hb"], obj["mac"]
    if not isinstance(body, bytes) or not isinstance(mac, bytes) or not same(mac, heartbeat_mac(key, body)):
        raise AuthFailed("heartbeat MAC does not match the task key")
    return body
