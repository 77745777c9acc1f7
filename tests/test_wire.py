"""The mix-v2 codec: golden vectors, round trips, and strict bounded rejection of everything else."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgpack
import numpy as np
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
from gossipd.wire.tensors import (
    TensorSpec,
    WireTensor,
    as_float16,
    from_wire,
    pack_tensors,
    to_wire,
    unpack_tensors,
)
from tests.conftest import REPO

VECTORS = REPO / "protocols" / "vectors"
TASK = bytes(range(16))
LIMIT = 1 << 20


def receive(data: bytes, layout: dict[str, TensorSpec] | None = None) -> tuple[Message, dict[str, WireTensor]]:
    """What a receiver does with a frame: decode it, then split its data by the layout it expects and
    materialise every tensor."""
    message = decode_message(data, max_size=LIMIT)
    records = unpack_tensors(message.data, layout) if layout is not None else {}
    for record in records.values():
        from_wire(record)
    return message, records


def layout_of(entry: dict[str, Any]) -> dict[str, TensorSpec] | None:
    if "layout" not in entry:
        return None
    return {t["name"]: TensorSpec(t["dtype"], tuple(t["shape"])) for t in entry["layout"]}


def manifest() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((VECTORS / "vectors.json").read_text())
    return entries


@pytest.mark.parametrize("entry", manifest(), ids=lambda e: e["file"])
def test_golden_vectors(entry: dict[str, Any]) -> None:
    data = (VECTORS / entry["file"]).read_bytes()
    if not entry["valid"]:
        with pytest.raises(WireError) as caught:
            receive(data, layout_of(entry))
        assert caught.value.reason == entry["reason"]
        return
    message, records = receive(data, layout_of(entry))
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
    assert message.examples == expected["examples"]
    assert message.mode == expected["mode"]
    assert message.data.hex() == expected["data"]
    assert [(t.name, t.dtype, list(t.shape), t.data.hex()) for t in records.values()] == [
        (t["name"], t["dtype"], t["shape"], t["data"]) for t in expected["tensors"]
    ]
    assert encode_message(message) == data, "encoding is canonical: it reproduces the vector byte for byte"


def test_the_vectors_cover_every_message_type() -> None:
    types = {e["message"]["type"] for e in manifest() if e["valid"]}
    assert types == {t.value for t in MessageType}


def test_full_vector_values() -> None:
    entry = next(e for e in manifest() if e["file"] == "full.bin")
    _, records = receive((VECTORS / "full.bin").read_bytes(), layout_of(entry))
    weight = from_wire(records["fc.weight"])
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
        data=to_wire("w", torch.randn(5, 2)).data,
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


def test_packed_tensors_split_by_the_receivers_layout() -> None:
    records = [to_wire("a", torch.arange(6.0).reshape(2, 3)), to_wire("b", torch.tensor([7, 8], dtype=torch.int32))]
    specs = {"a": TensorSpec("float32", (2, 3)), "b": TensorSpec("int32", (2,))}
    data = pack_tensors(records, specs)
    assert len(data) == 6 * 4 + 2 * 4  # the elements and nothing else
    back = unpack_tensors(data, specs)
    assert list(back) == ["a", "b"]
    assert from_wire(back["a"]).tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert from_wire(back["b"]).tolist() == [7, 8]
    # The receiver's own layout decides; any other total length is rejected before a tensor is allocated.
    for other in (
        {"a": TensorSpec("float32", (2, 3))},
        {**specs, "c": TensorSpec("float16", (1,))},
        {"a": TensorSpec("float64", (2, 3)), "b": specs["b"]},
    ):
        with pytest.raises(ShapeMismatch, match="bytes of tensor data"):
            unpack_tensors(data, other)


def test_packing_refuses_tensors_that_differ_from_their_layout() -> None:
    records = [to_wire("a", torch.zeros(2, 3)), to_wire("b", torch.zeros(3))]
    specs = {"a": TensorSpec("float32", (2, 3)), "b": TensorSpec("float32", (3,))}
    for bad in (records[::-1], records[:1], [records[0], to_wire("b", torch.zeros(3, dtype=torch.float16))]):
        with pytest.raises(ValueError, match="do not match their layout"):
            pack_tensors(bad, specs)


def test_a_huge_expected_layout_costs_nothing_before_the_length_check() -> None:
    data = encode_message(Message(type=MessageType.FULL, task=TASK, epoch=1, round=1, degree=1, data=b"\0" * 4))
    message = decode_message(data, max_size=LIMIT)
    with pytest.raises(ShapeMismatch):
        unpack_tensors(message.data, {"x": TensorSpec("float32", (1 << 40, 1 << 20))})


def test_non_finite_values_are_rejected() -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(NonFiniteTensor):
            from_wire(to_wire("x", torch.tensor([1.0, bad])))


def test_float16_rounding_clamps_to_the_range_as_clamping_first_would() -> None:
    limit = float(torch.finfo(torch.float16).max)
    edges = [65503.0, 65504.0, 65505.0, 65519.0, 65519.99, 65520.0, 1e30, float("inf"), float("nan"), 1e-8, -0.0]
    values = torch.cat([torch.tensor(edges), -torch.tensor(edges), torch.randn(10_000) * 3e4])
    expected = values.clamp(-limit, limit).to(torch.float16)
    assert torch.equal(as_float16(values).view(torch.int16), expected.view(torch.int16))
    half = torch.tensor([float("inf"), 1.0, float("-inf")], dtype=torch.float16)
    assert as_float16(half).tolist() == [limit, 1.0, -limit]
    assert half.tolist() == [float("inf"), 1.0, float("-inf")]  # the caller's tensor is left as it was
    assert as_float16(torch.tensor([3, 4])).dtype == torch.int64


def test_every_float16_bit_pattern_is_judged_finite_exactly_as_numpy_judges_it() -> None:
    # float16 is checked on its raw bits (fast); all 65,536 patterns must agree with isfinite.
    bits = np.arange(1 << 16, dtype=np.uint16)
    values = bits.view(np.float16)
    finite = np.isfinite(values)
    assert 0 < int(finite.sum()) < len(bits)  # both kinds are in the sweep
    for pattern in [*bits[~finite][::97].tolist(), 0x7C00, 0xFC00, 0x7E00]:  # +Inf, -Inf, a quiet NaN
        record = WireTensor("x", "float16", (2,), np.array([0, pattern], dtype="<u2").tobytes())
        with pytest.raises(NonFiniteTensor):
            from_wire(record)
    record = WireTensor("x", "float16", (int(finite.sum()),), values[finite].astype("<f2").tobytes())
    received = from_wire(record)
    assert torch.equal(received.view(torch.int16), torch.from_numpy(bits[finite].astype(np.int16)))


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
        receive(data, {"w": TensorSpec("float32", (2, 2))})


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "type", "task", "epoch", "round", "deg", "n", "m", "phase", "data", "reason", "zz"]),
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
        receive(msgpack.packb(fields), {"w": TensorSpec("float16", (2,))})


def test_spec_documents_the_protocol() -> None:
    spec = (REPO / "protocols" / "mix-v2.md").read_text()
    for word in ("hello", "full", "power", "choco", "abort", "varint", "float32", "vectors.json"):
        assert word in spec
