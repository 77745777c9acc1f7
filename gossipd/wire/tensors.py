"""Tensors on the wire: `{name, dtype, shape, data}` records, checked before any tensor is allocated."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from gossipd.wire.errors import BadDtype, MalformedMessage, NonFiniteTensor, ShapeMismatch

# Little-endian on the wire whatever the host's byte order.
DTYPES: Mapping[str, np.dtype[np.generic]] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "uint8": np.dtype("u1"),
    "int8": np.dtype("i1"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
}
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})
_TORCH_TO_WIRE = {
    torch.float16: "float16",
    torch.float32: "float32",
    torch.float64: "float64",
    torch.uint8: "uint8",
    torch.int8: "int8",
    torch.int32: "int32",
    torch.int64: "int64",
}
MAX_NDIM = 8
MAX_NAME_LENGTH = 256


@dataclass(frozen=True, slots=True)
class WireTensor:
    """One tensor as it travels: raw little-endian bytes plus the dtype name and shape to read them."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise BadDtype(f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if len(self.shape) > MAX_NDIM or any(d < 0 for d in self.shape):
            raise MalformedMessage(f"tensor {self.name!r}: bad shape {list(self.shape)}")
        expected = self.numel * DTYPES[self.dtype].itemsize
        if len(self.data) != expected:
            raise MalformedMessage(
                f"tensor {self.name!r}: {len(self.data)} data bytes for shape {list(self.shape)} "
                f"of {self.dtype}, expected {expected}"
            )


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """What a receiver expects a named tensor to be."""

    dtype: str
    shape: tuple[int, ...]


def to_wire(name: str, tensor: torch.Tensor) -> WireTensor:
    """Serialise a tensor (any device) to a wire record of the same dtype."""
    dtype = _TORCH_TO_WIRE.get(tensor.dtype)
    if dtype is None:
        raise BadDtype(f"tensor {name!r}: dtype {tensor.dtype} cannot be sent")
    array = tensor.detach().to("cpu").contiguous().numpy()
    data = array.astype(DTYPES[dtype], copy=False).tobytes()
    return WireTensor(name, dtype, tuple(int(d) for d in tensor.shape), data)


def from_wire(record: WireTensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Allocate the tensor a (checked) record describes; floating data must be finite."""
    array = np.frombuffer(record.data, dtype=DTYPES[record.dtype]).reshape(record.shape)
    if record.dtype in FLOAT_DTYPES and not bool(np.isfinite(array).all()):
        raise NonFiniteTensor(f"tensor {record.name!r} holds NaN or Inf")
    # frombuffer views read-only bytes; torch needs its own writable copy anyway.
    native = array.astype(array.dtype.newbyteorder("="), copy=True)
    return torch.from_numpy(native).to(device)


def check_tensors(records: Iterable[WireTensor], expected: Mapping[str, TensorSpec]) -> dict[str, WireTensor]:
    """The records keyed by name, if they are exactly the expected names, dtypes and shapes."""
    found: dict[str, WireTensor] = {}
    for record in records:
        if record.name in found:
            raise MalformedMessage(f"tensor {record.name!r} appears twice")
        spec = expected.get(record.name)
        if spec is None:
            raise ShapeMismatch(f"unexpected tensor {record.name!r}")
        if record.dtype != spec.dtype:
            raise BadDtype(f"tensor {record.name!r}: dtype {record.dtype}, expected {spec.dtype}")
        if record.shape != spec.shape:
            raise ShapeMismatch(f"tensor {record.name!r}: shape {list(record.shape)}, expected {list(spec.shape)}")
        found[record.name] = record
    missing = [name for name in expected if name not in found]
    if missing:
        raise ShapeMismatch(f"missing tensor {missing[0]!r} ({len(missing)} missing)")
    return found
