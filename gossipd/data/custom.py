"""`format = "custom"`: the task names a Python function that builds the data itself.

The function is `package.module:callable`, importable where the daemon runs, and is called as
`callable(base_dir=..., seed=..., **options)`. It returns a `DataBundle`, or for classification the four
array-likes `(x_train, y_train, x_val, y_val)`. Whatever goes wrong, in the import, the call or the result,
comes back as a `DataError` that names the function.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gossipd.data.errors import DataError
from gossipd.data.npz import classification_arrays, classification_bundle
from gossipd.data.spec import ArrayDataset, DataBundle

if TYPE_CHECKING:  # the registry imports this module to list it among the formats
    from gossipd.data.registry import LoadContext

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
FUNCTION_SPEC = re.compile(rf"^{_NAME}(\.{_NAME})*:{_NAME}(\.{_NAME})*$")
RESERVED_OPTIONS = frozenset({"base_dir", "seed"})


@dataclass(frozen=True, kw_only=True)
class CustomSource:
    """`format = "custom"`: `function = "package.module:callable"`, given `options` as keyword arguments."""

    function: str
    options: dict[str, Any] = field(default_factory=dict)


def load_custom(config: CustomSource, ctx: LoadContext) -> DataBundle:
    """Call the task's function and check what it returns."""
    source = f"custom function {config.function!r}"
    function = resolve_function(config.function)
    clashes = sorted(RESERVED_OPTIONS & set(config.options))
    if clashes:
        raise DataError(source, f"options may not set {', '.join(clashes)}: the loader passes them itself")
    try:
        result = function(base_dir=ctx.base_dir, seed=ctx.seed, **config.options)
    except Exception as exc:  # user code: any failure is reported as the task's data error, cause chained
        raise DataError(source, f"raised {type(exc).__name__}: {exc}") from exc
    if isinstance(result, DataBundle):
        check_bundle(result, source)
        return result
    if isinstance(result, tuple | list) and len(result) == 4:
        return _bundle_from_arrays(result[0], result[1], result[2], result[3], source)
    raise DataError(
        source, f"returned {type(result).__name__}, expected a DataBundle or (x_train, y_train, x_val, y_val)"
    )


def resolve_function(spec: str) -> Callable[..., object]:
    """Import `package.module:callable` (the part after the colon may be dotted, e.g. `Class.method`)."""
    source = f"custom function {spec!r}"
    if not FUNCTION_SPEC.match(spec):
        raise DataError(source, "expected 'package.module:callable'")
    module_name, attribute = spec.split(":")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # a missing module, or any error while the module runs
        raise DataError(source, f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise DataError(source, f"{module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise DataError(source, f"{attribute!r} is not callable (it is of type {type(target).__name__})")
    return target


def _bundle_from_arrays(x_train: Any, y_train: Any, x_val: Any, y_val: Any, source: str) -> DataBundle:
    x, y = classification_arrays(x_train, y_train, f"{source}: training arrays")
    if len(x) == 0:
        raise DataError(source, "returned no training examples")
    if _is_empty(x_val):
        # An empty list has no trailing shape to check; give it the training examples' shape.
        x_val = np.zeros((0, *x.shape[1:]), dtype=np.float32)
    val_x, val_y = classification_arrays(x_val, y_val, f"{source}: validation arrays")
    if val_x.shape[1:] != x.shape[1:]:
        raise DataError(source, f"validation examples are {val_x.shape[1:]}, training ones {x.shape[1:]}")
    return classification_bundle(x, y, val_x, val_y)


def _is_empty(array_like: Any) -> bool:
    try:
        return bool(np.asarray(array_like).size == 0)
    except (ValueError, TypeError, RuntimeError):
        return False  # classification_arrays reports it


def check_bundle(bundle: DataBundle, source: str) -> None:
    """A returned bundle must match its own spec, or the model would fail later with a worse message."""
    spec = bundle.spec
    if len(bundle.train) == 0:
        raise DataError(source, "returned no training examples")
    for part, data in (("train", bundle.train), ("validation", bundle.validation)):
        _check_part(spec.kind, spec.input_shape, spec.num_classes, data, f"{source}: {part}")


def _check_part(kind: str, input_shape: tuple[int, ...], num_classes: int, data: ArrayDataset, where: str) -> None:
    if tuple(data.x.shape[1:]) != input_shape:
        expected = ", ".join(["N", *(str(d) for d in input_shape)])
        raise DataError(where, f"x has shape {tuple(data.x.shape)}, expected ({expected}) as its spec says")
    if kind == "classification":
        floats = data.x.dtype.is_floating_point or data.pixels is not None  # bytes that decode to floats
        if not floats or data.y.dtype != torch.int64 or data.y.dim() != 1:
            raise DataError(
                where,
                f"found x {data.x.dtype}, y {data.y.dtype} {tuple(data.y.shape)}, "
                "expected float x (or bytes with pixels) and int64 y of shape (N,)",
            )
        tokens = data.y
    else:
        if data.x.dtype != torch.int64 or data.y.dtype != torch.int64 or data.y.shape != data.x.shape:
            raise DataError(where, "expected int64 x and y of the same shape (N, block_size)")
        tokens = torch.cat([data.x.reshape(-1), data.y.reshape(-1)])
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= num_classes):
        raise DataError(where, f"found ids {int(tokens.min())}..{int(tokens.max())}, expected 0..{num_classes - 1}")
