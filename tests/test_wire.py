"""The mix-v1 codec: golden vectors, round trips, and strict bounded rejection of everything else."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgpack
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipd.wire.errors import (
    BadDtype,
    FrameTooLarge,
    MalformedMessage,
    NonFiniteTensor,
    ShapeMismatch,
    WireError,
    WrongTask,
)
from gossipd.wire.messages import Message, MessageType, decode_message, encode_message, framed_size
from gossipd.wire.tensors import TensorSpec, WireTensor, check_tensors, from_wire, to_wire
from tests.conftest import REPO

VECTORS = REPO / "protocols" / "vectors"
TASK = bytes(range(16))
LIMIT = 1 << 20


def receive(data: bytes) -> Message:
    """What a receiver does with a frame: decode it, then materialise every tensor."""
    message = decode_message(data, max_size=LIMIT)
    for record in message.tensors:
        from_wire(record)
    return message


def manifest() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((VECTORS / "vectors.json").read_text())
    return entries


@pytest.mark.parametrize("entry", manifest(), ids=lambda e: e["file"])
def test_golden_vectors(entry: dict[str, Any]) -> None:
    data = (VECTORS / entry["file"]).read_bytes()
    if not entry["valid"]:
        with pytest.raises(WireError) as caught:
            receive(data)
        assert caught.value.reason == entry["reason"]
        return
    message = receive(data)
    expected = entry["message"]
    assert message.type.value == expected["type"]
    assert message.task.hex() == expected["task"]
    assert (message.epoch, message.round, message.degree) == (
        expected["epoch"],
        expected["round"],
        expected["degree"],
    )
    assert message.phase == expected["phase"]
    assert message.reason == expected["reason"]
    assert message.proof.hex() == expected["proof"]
    assert [(t.name, t.dtype, list(t.shape), t.data.hex()) for t in message.tensors] == [
        (t["name"], t["dtype"], t["shape"], t["data"]) for t in expected["tensors"]
    ]
    assert encode_message(message) == data, "encoding is canonical: it reproduces the vector byte for byte"


def test_the_vectors_cover_every_message_type() -> None:
    types = {e["message"]["type"] for e in manifest() if e["valid"]}
    assert types == {t.value for t in MessageType}


def test_full_vector_values() -> None:
    message = receive((VECTORS / "full.bin").read_bytes())
    weight = from_wire(message.tensors[0])
    assert weight.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.int32, torch.int64, torch.uint8])
def test_tensor_round_trip(dtype: torch.dtype) -> None:
    original = (torch.arange(24).reshape(2, 3, 4) - 7).to(dtype) if dtype != torch.uint8 else torch.arange(24)
    original = original.to(dtype)
    back = from_wire(to_wire("t", original))
    assert back.dtype == original.dtype
    assert torch.equal(back, original)


def test_message_round_trip_and_framed_size() -> None:
    message = Message(
        type=MessageType.POWER,
        task=TASK,
        epoch=(1 << 64) - 1,
        round=3,
        degree=65535,
        phase=2,
        tensors=(to_wire("w", torch.randn(5, 2)),),
    )
    data = encode_message(message)
    assert decode_message(data, max_size=LIMIT, task=TASK) == message
    assert framed_size(len(data)) == len(data) + (1 if len(data) < 128 else 2)
    assert framed_size(300) == 302
    assert framed_size(1 << 21) == (1 << 21) + 4


def test_rejections_before_allocation() -> None:
    data = encode_message(Message(type=MessageType.FULL, task=TASK, epoch=1, round=1, degree=1))
    with pytest.raises(FrameTooLarge):
        decode_message(data, max_size=len(data) - 1)
    with pytest.raises(WrongTask):
        decode_message(data, max_size=LIMIT, task=bytes(16))


def test_a_declared_huge_shape_is_rejected_by_the_length_check() -> None:
    raw = {
        "v": 1,
        "type": "full",
        "task": TASK,
        "epoch": 1,
        "round": 1,
        "deg": 1,
        "phase": 0,
        "tensors": [{"name": "x", "dtype": "float32", "shape": [1 << 40, 1 << 20], "data": b"\0" * 4}],
    }
    with pytest.raises(MalformedMessage, match="data bytes"):
        decode_message(msgpack.packb(raw), max_size=LIMIT)


def test_expected_tensors_are_checked_by_name_dtype_and_shape() -> None:
    records = [to_wire("a", torch.zeros(2, 3)), to_wire("b", torch.zeros(3))]
    specs = {"a": TensorSpec("float32", (2, 3)), "b": TensorSpec("float32", (3,))}
    assert set(check_tensors(records, specs)) == {"a", "b"}
    with pytest.raises(ShapeMismatch, match="expected"):
        check_tensors(records, {"a": TensorSpec("float32", (3, 2)), "b": specs["b"]})
    with pytest.raises(BadDtype):
        check_tensors(records, {"a": TensorSpec("float16", (2, 3)), "b": specs["b"]})
    with pytest.raises(ShapeMismatch, match="missing"):
        check_tensors(records[:1], specs)
    with pytest.raises(ShapeMismatch, match="unexpected"):
        check_tensors([*records, to_wire("c", torch.zeros(1))], specs)
    with pytest.raises(MalformedMessage, match="twice"):
        check_tensors([records[0], records[0]], specs)


def test_non_finite_values_are_rejected() -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(NonFiniteTensor):
            from_wire(to_wire("x", torch.tensor([1.0, bad])))


def test_wire_tensor_refuses_inconsistent_records() -> None:
    with pytest.raises(BadDtype):
        WireTensor("x", "complex64", (1,), b"\0" * 8)
    with pytest.raises(MalformedMessage):
        WireTensor("x", "float32", (2,), b"\0" * 4)
    with pytest.raises(MalformedMessage):
        WireTensor("x", "float32", (1,) * 9, b"\0" * 4)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_raise_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        receive(data)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "type", "task", "epoch", "round", "deg", "phase", "tensors", "reason", "zz"]),
        st.one_of(
            st.integers(-(1 << 63), (1 << 64) - 1),
            st.booleans(),
            st.text(max_size=8),
            st.binary(max_size=20),
            st.lists(st.integers(0, 3), max_size=3),
            st.none(),
        ),
    )
)
def test_arbitrary_maps_only_ever_raise_wire_errors(fields: dict[str, Any]) -> None:
    with contextlib.suppress(WireError):
        receive(msgpack.packb(fields))


def test_spec_documents_the_protocol() -> None:
    spec = (REPO / "protocols" / "mix-v1.md").read_text()
    for word in ("hello", "full", "power", "choco", "abort", "varint", "float32", "vectors.json"):
        assert word in spec
