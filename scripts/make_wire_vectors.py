"""Write the golden byte vectors of protocols/mix-v2.md to protocols/vectors/ (run once per protocol change).

Each vector is a message as it appears after the varint length prefix, with an entry in vectors.json that
says what a conforming decoder must produce: the decoded fields, or the rejection reason. A message that
carries tensors comes with the `layout` its receiver expects (derived, in a real exchange, from its own model
and settings), by which `data` splits into the listed tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from gossipd.wire.messages import Message, MessageType, encode_message
from gossipd.wire.tensors import DTYPES, TensorSpec, WireTensor, pack_tensors

OUT = Path(__file__).resolve().parents[1] / "protocols" / "vectors"
TASK = bytes(range(16))


def tensor(name: str, dtype: str, values: list[Any], shape: tuple[int, ...]) -> WireTensor:
    return WireTensor(name, dtype, shape, np.asarray(values, dtype=DTYPES[dtype]).tobytes())


def header(kind: str, **extra: Any) -> dict[str, Any]:
    return {"v": 2, "type": kind, "task": TASK, "epoch": 81985529216486895, "round": 7, "deg": 2, **extra}


def layout_of(tensors: tuple[WireTensor, ...]) -> dict[str, TensorSpec]:
    return {t.name: TensorSpec(t.dtype, t.shape) for t in tensors}


def carrying(
    kind: MessageType, tensors: tuple[WireTensor, ...], **fields: Any
) -> tuple[Message, tuple[WireTensor, ...]]:
    return Message(type=kind, data=pack_tensors(tensors, layout_of(tensors)), **fields), tensors


def describe(message: Message, tensors: tuple[WireTensor, ...]) -> dict[str, Any]:
    return {
        "type": message.type.value,
        "task": message.task.hex(),
        "epoch": message.epoch,
        "round": message.round,
        "degree": message.degree,
        "phase": message.phase,
        "reason": message.reason,
        "proof": message.proof.hex(),
        "examples": message.examples,
        "mode": message.mode,
        "data": message.data.hex(),
        "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "data": t.data.hex()} for t in tensors],
    }


def layout_entry(tensors: tuple[WireTensor, ...]) -> list[dict[str, Any]]:
    return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in tensors]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {"task": TASK, "epoch": 81985529216486895, "round": 7, "degree": 2}
    valid: dict[str, tuple[Message, tuple[WireTensor, ...]]] = {
        "hello": (Message(type=MessageType.HELLO, **common), ()),
        "full": carrying(
            MessageType.FULL,
            (
                tensor("fc.weight", "float32", [1, 2, 3, 4, 5, 6], (2, 3)),
                tensor("fc.bias", "float32", [0.5, -0.5], (2,)),
            ),
            **common,
        ),
        "power": carrying(
            MessageType.POWER, (tensor("fc.weight", "float32", [0.25, -1, 8], (3, 1)),), phase=1, **common
        ),
        # A float16 task (`wire_dtype = "float16"`): the same projection at half precision, plus a bias whole.
        "power-float16": carrying(
            MessageType.POWER,
            (
                tensor("fc.weight", "float16", [0.25, -1, 8], (3, 1)),
                tensor("fc.bias", "float16", [0.5, -65504], (2,)),
            ),
            phase=0,
            **common,
        ),
        "choco-sign": carrying(
            MessageType.CHOCO,
            (
                tensor("fc.weight#signs", "uint8", [0b101101], (1,)),
                tensor("fc.weight#scales", "float32", [0.125], (1,)),
            ),
            **common,
        ),
        # A task weighted by samples (`weigh_by = "samples"`): every message declares the sender's examples.
        "hello-weighted": (Message(type=MessageType.HELLO, examples=60000, **common), ()),
        "power-weighted": carrying(
            MessageType.POWER, (tensor("fc.weight", "float32", [0.25, -1, 8], (3, 1)),), phase=0, examples=7, **common
        ),
        # An auto task (`algorithm = "auto"`): every message names the exchange's mode, chosen by the opener.
        "hello-auto": (Message(type=MessageType.HELLO, mode=2, **common), ()),
        # Its rank-2 rung (float16, one power iteration): q = Mᵀp of a 4×6 weight, (6, 2), then the bias whole,
        # then the probe: the weight's values at min(32, 24) = all 24 of its coordinates, in flat order.
        "power-auto-rank2": carrying(
            MessageType.POWER,
            (
                tensor("fc.weight", "float16", [0.5, -1, 2, 0.25, -0.125, 4, 1, 1.5, -2, 3, 0, -0.5], (6, 2)),
                tensor("fc.bias", "float16", [0.5, -0.5, 1, -1], (4,)),
                tensor("#probe", "float16", [i / 8 - 1.5 for i in range(24)], (24,)),
            ),
            phase=0,
            mode=2,
            **common,
        ),
        # Its whole-model rung (mode 0) with `full_dtype = "float16"`, the default: floating parameters as float16.
        "full-auto-float16": carrying(
            MessageType.FULL,
            (
                tensor("fc.weight", "float16", [1, 2, 3, 4, 5, 6], (2, 3)),
                tensor("fc.bias", "float16", [0.5, -0.5], (2,)),
            ),
            mode=0,
            **common,
        ),
        # The same with `full_dtype = "float32"`: every parameter in its own dtype.
        "full-auto": carrying(
            MessageType.FULL,
            (
                tensor("fc.weight", "float32", [1, 2, 3, 4, 5, 6], (2, 3)),
                tensor("fc.bias", "float32", [0.5, -0.5], (2,)),
            ),
            mode=0,
            **common,
        ),
        # Both optional keys: `n` first, then `m`.
        "hello-auto-weighted": (Message(type=MessageType.HELLO, examples=60000, mode=1, **common), ()),
        "abort": (Message(type=MessageType.ABORT, reason="busy", **common), ()),
        "auth": (Message(type=MessageType.AUTH, phase=1, proof=bytes(range(32, 64)), **common), ()),
    }
    manifest: list[dict[str, Any]] = []
    for name, (message, tensors) in valid.items():
        data = encode_message(message)
        (OUT / f"{name}.bin").write_bytes(data)
        entry: dict[str, Any] = {"file": f"{name}.bin", "valid": True, "message": describe(message, tensors)}
        if tensors:
            entry["layout"] = layout_entry(tensors)
        manifest.append(entry)

    full_message, full_tensors = valid["full"]
    full = encode_message(full_message)
    nan_message, nan_tensors = carrying(
        MessageType.FULL, (tensor("x", "float32", [1.0, float("nan")], (2,)),), **common
    )
    # (bytes, reason, the layout the receiver expects if the message gets as far as its tensors)
    invalid: dict[str, tuple[bytes, str, tuple[WireTensor, ...]]] = {
        "bad-version": (msgpack.packb(header("hello") | {"v": 1}), "unsupported-version", ()),
        "unknown-type": (msgpack.packb(header("gradient")), "unknown-type", ()),
        "extra-key": (msgpack.packb(header("hello", extra=1)), "malformed", ()),
        "bad-task-length": (msgpack.packb(header("hello") | {"task": b"short"}), "malformed", ()),
        # Tensor records with names and shapes, as before 2026-11-30: not a key of the protocol any more.
        "tensor-records": (
            msgpack.packb(
                header(
                    "full",
                    phase=0,
                    tensors=[{"name": "x", "dtype": "float32", "shape": [1], "data": b"\0" * 4}],
                )
            ),
            "malformed",
            (),
        ),
        "data-not-bin": (msgpack.packb(header("full", phase=0, data="text")), "malformed", ()),
        "short-data": (msgpack.packb(header("full", phase=0, data=b"\0" * 28)), "shape-mismatch", full_tensors),
        "long-data": (msgpack.packb(header("full", phase=0, data=b"\0" * 36)), "shape-mismatch", full_tensors),
        "truncated": (full[:-5], "malformed", ()),
        "trailing-bytes": (full + b"\x00", "malformed", ()),
        "not-a-map": (msgpack.packb([1, "hello"]), "malformed", ()),
        "bool-as-int": (msgpack.packb(header("hello") | {"round": True}), "malformed", ()),
        "negative-examples": (msgpack.packb(header("hello", n=-1)), "malformed", ()),
        "examples-too-large": (msgpack.packb(header("hello", n=1 << 48)), "malformed", ()),
        "mode-too-large": (msgpack.packb(header("hello", m=65)), "malformed", ()),
        "mode-not-int": (msgpack.packb(header("hello", m="2")), "malformed", ()),
        "negative-mode": (msgpack.packb(header("hello", m=-1)), "malformed", ()),
        "nan-tensor": (encode_message(nan_message), "non-finite", nan_tensors),
    }
    for name, (data, reason, layout) in invalid.items():
        (OUT / f"{name}.bin").write_bytes(data)
        entry = {"file": f"{name}.bin", "valid": False, "reason": reason}
        if layout:
            entry["layout"] = layout_entry(layout)
        manifest.append(entry)
    (OUT / "vectors.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(manifest)} vectors to {OUT}")


if __name__ == "__main__":
    main()
