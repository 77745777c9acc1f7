"""The messages of `/gossipd/tasks/1.0.0` (protocols/tasks-v1.md): a peer asks a daemon for the adverts of the
open tasks it runs, or for one task's file by its hash, and gets one answer frame.

Every message is a msgpack map with `v` and `type`; decoding is strict and bounded as in the advert codec.
A task file travels as its exact bytes with their SHA-256, which the decoder checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from gossipd.wire.errors import MalformedMessage, UnknownMessageType, WireError, WrongTask
from gossipd.wire.task_advert import (
    HASH_BYTES,
    MAX_ADVERT_BYTES,
    TaskAdvert,
    check_signer,
    check_version,
    decode_advert,
    unpack_strict,
)

TASKS_PROTOCOL = "/gossipd/tasks/1.0.0"
TASKS_TOPIC = "/gossipd/tasks/1"  # where daemons publish their open tasks' adverts
TASK_LIST_KEY = "/gossipd/tasks/1/list"  # the DHT key every daemon with an open task provides
TASKS_VERSION = 1
MAX_REQUEST_BYTES = 64
MAX_ADVERTS = 64  # adverts in one list answer: far more open tasks than one daemon runs
MAX_TASK_FILE_BYTES = 1 << 20  # as gossipd.task.loader.MAX_TASK_FILE_BYTES (a test keeps them equal)
MAX_REASON = 256
MAX_LIST_BYTES = MAX_ADVERTS * (MAX_ADVERT_BYTES + 5) + 64  # each advert a bin of up to 8 KiB, its header 3 bytes
MAX_FILE_BYTES = MAX_TASK_FILE_BYTES + 128
DIGEST_BYTES = 32


class DigestMismatch(WireError):
    """The task file's bytes are not those its SHA-256 names: corrupted or tampered with."""

    reason = "digest-mismatch"


class Refused(WireError):
    """The daemon answered with a refusal (no such open task here); `str()` is its reason."""

    reason = "refused"


@dataclass(frozen=True)
class ListRequest:
    """The adverts of every open task the daemon runs."""


@dataclass(frozen=True)
class FileRequest:
    """The file of the open task with this hash."""

    task_hash: bytes


Request = ListRequest | FileRequest


def _pack(obj: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb({"v": TASKS_VERSION, **obj}, use_bin_type=True)
    return packed


def encode_request(request: Request) -> bytes:
    if isinstance(request, FileRequest):
        return _pack({"type": "file", "hash": request.task_hash})
    return _pack({"type": "list"})


def decode_request(data: bytes) -> Request:
    if len(data) > MAX_REQUEST_BYTES:
        raise MalformedMessage(f"request of {len(data)} bytes, above {MAX_REQUEST_BYTES}")
    obj = _message(data, max_str=16, max_bin=HASH_BYTES, max_array=0)
    if obj["type"] == "list" and set(obj) == {"v", "type"}:
        return ListRequest()
    if obj["type"] == "file" and set(obj) == {"v", "type", "hash"}:
        task_hash = obj["hash"]
        if not isinstance(task_hash, bytes) or len(task_hash) != HASH_BYTES:
            raise MalformedMessage(f"file request's hash is not {HASH_BYTES} bytes")
        return FileRequest(task_hash)
    if obj["type"] in ("list", "file"):
        raise MalformedMessage(f"{obj['type']} request does not have exactly the expected keys")
    raise UnknownMessageType(f"request type {obj['type']!r}")


def encode_adverts(adverts: Sequence[bytes]) -> bytes:
    """The answer to `list`: adverts already encoded by `encode_advert`, at most MAX_ADVERTS of them."""
    return _pack({"type": "adverts", "adverts": list(adverts[:MAX_ADVERTS])})


def decode_adverts(data: bytes, *, sender: str) -> tuple[TaskAdvert, ...]:
    """The adverts of a `list` answer. One bad advert rejects the whole answer, as does one naming another
    peer than `sender` (the stream's Noise-authenticated peer); a refusal raises `Refused`."""
    obj = _response(data, "adverts", max_bin=MAX_ADVERT_BYTES, max_array=MAX_ADVERTS, limit=MAX_LIST_BYTES)
    if set(obj) != {"v", "type", "adverts"} or not isinstance(obj["adverts"], list):
        raise MalformedMessage("adverts answer does not have exactly the expected keys")
    if not all(isinstance(item, bytes) for item in obj["adverts"]):
        raise MalformedMessage("adverts answer holds something other than encoded adverts")
    adverts = tuple(decode_advert(item) for item in obj["adverts"])
    for advert in adverts:
        check_signer(advert, sender)
    return adverts


def encode_file(task_hash: bytes, text: bytes) -> bytes:
    """The answer to `file`: the task file's exact bytes and their SHA-256."""
    return _pack({"type": "file", "hash": task_hash, "text": text, "sha256": hashlib.sha256(text).digest()})


def decode_file(data: bytes, *, task_hash: bytes) -> bytes:
    """The file's bytes, once their SHA-256 matches and they are UTF-8; a refusal raises `Refused`."""
    obj = _response(data, "file", max_bin=MAX_TASK_FILE_BYTES, max_array=0, limit=MAX_FILE_BYTES)
    if set(obj) != {"v", "type", "hash", "text", "sha256"}:
        raise MalformedMessage("file answer does not have exactly the expected keys")
    text, digest = obj["text"], obj["sha256"]
    if not isinstance(text, bytes) or not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
        raise MalformedMessage("file answer's text or sha256 is not binary of the right size")
    if obj["hash"] != task_hash:
        raise WrongTask("file answer is for another task than the one asked for")
    if hashlib.sha256(text).digest() != digest:
        raise DigestMismatch("the task file's bytes do not match their SHA-256")
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage("the task file is not UTF-8 text") from None
    return bytes(text)


def encode_refusal(reason: str) -> bytes:
    return _pack({"type": "refused", "reason": reason.encode()[:MAX_REASON].decode(errors="ignore")})


def _message(data: bytes, *, max_str: int, max_bin: int, max_array: int) -> dict[str, Any]:
    obj = unpack_strict(data, max_str=max_str, max_bin=max_bin, max_array=max_array)
    if not isinstance(obj, dict) or "v" not in obj or "type" not in obj:
        raise MalformedMessage("not a map with `v` and `type`")
    check_version(obj["v"], TASKS_VERSION, "tasks message")
    if not isinstance(obj["type"], str):
        raise MalformedMessage("message type is not a string")
    return obj


def _response(data: bytes, expected: str, *, max_bin: int, max_array: int, limit: int) -> dict[str, Any]:
    if len(data) > limit:
        raise MalformedMessage(f"answer of {len(data)} bytes, above {limit}")
    obj = _message(data, max_str=MAX_REASON, max_bin=max_bin, max_array=max_array)
    if obj["type"] == "refused":
        reason = obj.get("reason")
        if set(obj) != {"v", "type", "reason"} or not isinstance(reason, str):
            raise MalformedMessage("refusal does not have exactly the expected keys")
        raise Refused(reason)
    if obj["type"] != expected:
        raise UnknownMessageType(f"answer type {obj['type']!r} where {expected!r} or 'refused' was expected")
    return obj
