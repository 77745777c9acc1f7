"""Write the golden byte vectors of protocols/mix-v1.md to protocols/vectors/ (run once per protocol change).

Each vector is a message as it appears after the varint length prefix, with an entry in vectors.json that
says what a conforming decoder must produce: the decoded fields, or the rejection reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from gossipd.wire.messages import Message, MessageType, encode_message
from gossipd.wire.tensors import DTYPES, WireTensor

OUT = Path(__file__).resolve().parents[1] / "protocols" / "vectors"
TASK = bytes(range(16))


def tensor(name: str, dtype: str, values: list[Any], shape: tuple[int, ...]) -> WireTensor:
    return WireTensor(name, dtype, shape, np.asarray(values, dtype=DTYPES[dtype]).tobytes())


def header(kind: str, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "type": kind, "task": TASK, "epoch": 81985529216486895, "round": 7, "deg": 2, **extra}


def describe(message: Message) -> dict[str, Any]:
    return {
        "type": message.type.value,
        "task": message.task.hex(),
        "epoch": message.epoch,
        "round": message.round,
        "degree": message.degree,
        "phase": message.phase,
        "reason": message.reason,
        "proof": message.proof.hex(),
        "tensors": [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "data": t.data.hex()} for t in message.tensors
        ],
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {"task": TASK, "epoch": 81985529216486895, "round": 7, "degree": 2}
    valid = {
        "hello": Message(type=MessageType.HELLO, **common),
        "full": Message(
            type=MessageType.FULL,
            tensors=(
                tensor("fc.weight", "float32", [1, 2, 3, 4, 5, 6], (2, 3)),
                tensor("fc.bias", "float32", [0.5, -0.5], (2,)),
            ),
            **common,
        ),
        "power": Message(
            type=MessageType.POWER,
            phase=1,
            tensors=(tensor("fc.weight", "float32", [0.25, -1, 8], (3, 1)),),
            **common,
        ),
        # A float16 task (`wire_dtype = "float16"`): the same projection at half precision, plus a bias whole.
        "power-float16": Message(
            type=MessageType.POWER,
            phase=0,
            tensors=(
                tensor("fc.weight", "float16", [0.25, -1, 8], (3, 1)),
                tensor("fc.bias", "float16", [0.5, -65504], (2,)),
            ),
            **common,
        ),
        "choco-sign": Message(
            type=MessageType.CHOCO,
            tensors=(
                tensor("fc.weight#signs", "uint8", [0b101101], (1,)),
                tensor("fc.weight#scales", "float32", [0.125], (1,)),
            ),
            **common,
        ),
        "abort": Message(type=MessageType.ABORT, reason="busy", **common),
        "auth": Message(type=MessageType.AUTH, phase=1, proof=bytes(range(32, 64)), **common),
    }
    manifest: list[dict[str, Any]] = []
    for name, message in valid.items():
        data = encode_message(message)
        (OUT / f"{name}.bin").write_bytes(data)
        manifest.append({"file": f"{name}.bin", "valid": True, "message": describe(message)})

    full = encode_message(valid["full"])
    nan = Message(type=MessageType.FULL, tensors=(tensor("x", "float32", [1.0, float("nan")], (2,)),), **common)
    invalid: dict[str, tuple[bytes, str]] = {
        "bad-version": (msgpack.packb(header("hello") | {"v": 2}), "unsupported-version"),
        "unknown-type": (msgpack.packb(header("gradient")), "unknown-type"),
        "extra-key": (msgpack.packb(header("hello", extra=1)), "malformed"),
        "bad-task-length": (msgpack.packb(header("hello") | {"task": b"short"}), "malformed"),
        "bad-dtype": (
            msgpack.packb(
                header(
                    "full",
                    phase=0,
                    tensors=[{"name": "x", "dtype": "complex64", "shape": [1], "data": b"\0" * 8}],
                )
            ),
            "bad-dtype",
        ),
        "short-data": (
            msgpack.packb(
                header(
                    "full",
                    phase=0,
                    tensors=[{"name": "x", "dtype": "float32", "shape": [4], "data": b"\0" * 8}],
                )
            ),
            "malformed",
        ),
        "truncated": (full[:-5], "malformed"),
        "trailing-bytes": (full + b"\x00", "malformed"),
        "not-a-map": (msgpack.packb([1, "hello"]), "malformed"),
        "bool-as-int": (msgpack.packb(header("hello") | {"round": True}), "malformed"),
        "nan-tensor": (encode_message(nan), "non-finite"),
    }
    for name, (data, reason) in invalid.items():
        (OUT / f"{name}.bin").write_bytes(data)
        manifest.append({"file": f"{name}.bin", "valid": False, "reason": reason})
    (OUT / "vectors.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(manifest)} vectors to {OUT}")


if __name__ == "__main__":
    main()
