"""`format = "npz"`: features and labels saved with `numpy.savez`, and the checks any labelled arrays pass.

Each array's `.npy` header is read and checked (no Python objects, a bounded size) before numpy allocates
anything for it; pickles are never loaded.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gossipd.data.errors import DataError, checked_size, data_path
from gossipd.data.spec import ArrayDataset, DataBundle, InputSpec
from gossipd.data.splits import split_indices

if TYPE_CHECKING:  # the registry imports this module to list it among the formats
    from gossipd.data.registry import LoadContext

MAX_NPZ_BYTES = 1 << 32
MAX_ARRAY_BYTES = 1 << 32
MAX_CLASSES = 100_000


@dataclass(frozen=True, kw_only=True)
class NpzSource:
    """`format = "npz"`: x (examples first, at least 2-D) and integer labels y from an `.npz` archive.

    The same keys of `test_path`, when given, are the validation set; otherwise `validation_fraction` of the
    examples is held out."""

    path: str
    x_key: str = "x"
    y_key: str = "y"
    test_path: str | None = None


def load_npz(config: NpzSource, ctx: LoadContext) -> DataBundle:
    """Classification: x float32 `(N, *input_shape)`, y int64 `(N,)`."""
    path = data_path(config.path, ctx.base_dir)
    x, y = classification_arrays(*read_npz(path, config.x_key, config.y_key), path)
    if len(x) == 0:
        raise DataError(path, "holds no examples")
    if config.test_path is not None:
        test_path = data_path(config.test_path, ctx.base_dir)
        val_x, val_y = classification_arrays(*read_npz(test_path, config.x_key, config.y_key), test_path)
        if val_x.shape[1:] != x.shape[1:]:
            raise DataError(test_path, f"examples are {val_x.shape[1:]}, those of {path.name} {x.shape[1:]}")
    else:
        train_idx, val_idx = split_indices(len(x), ctx.validation_fraction, ctx.seed)
        x, y, val_x, val_y = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    return classification_bundle(x, y, val_x, val_y)


def read_npz(path: Path, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Arrays `x_key` and `y_key` of archive `path`, each header checked before its body is read."""
    checked_size(path, MAX_NPZ_BYTES)
    try:
        with zipfile.ZipFile(path) as archive:
            present = [name.removesuffix(".npy") for name in archive.namelist() if name.endswith(".npy")]
            for key in (x_key, y_key):
                if key not in present:
                    raise DataError(path, f"no array {key!r}; the archive holds: {', '.join(present) or 'none'}")
                _check_header(archive, key + ".npy", path)
        with np.load(path, allow_pickle=False) as archive:
            return archive[x_key], archive[y_key]
    except DataError:
        raise
    except zipfile.BadZipFile as exc:
        raise DataError(path, f"not an .npz (zip) archive: {exc}") from None
    except (ValueError, EOFError) as exc:
        raise DataError(path, f"corrupt array: {exc}") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from None


def _check_header(archive: zipfile.ZipFile, member: str, path: Path) -> None:
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise DataError(path, f"{member}: .npy format version {version}, expected (1, 0) or (2, 0)")
    if dtype.hasobject:
        raise DataError(path, f"{member} holds Python objects (a pickle), which are never loaded")
    size = dtype.itemsize
    for extent in shape:
        size *= extent
    if size > MAX_ARRAY_BYTES:
        raise DataError(path, f"{member} declares shape {shape} ({size:,} bytes), over the {MAX_ARRAY_BYTES:,} cap")


def classification_arrays(x_raw: object, y_raw: object, source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Features as float32 `(N, ...)` (at least 2-D, finite) and labels as int64 `(N,)` (integral, ≥ 0)."""
    try:
        x, y = np.asarray(x_raw), np.asarray(y_raw)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise DataError(source, f"cannot read the examples as arrays: {exc}") from None
    if x.dtype.kind not in "biuf":
        raise DataError(source, f"found {x.dtype} features, expected numbers")
    if x.ndim < 2:
        raise DataError(source, f"found features of shape {x.shape}, expected (examples, features...)")
    features = x.astype(np.float32)
    if not np.isfinite(features).all():
        raise DataError(source, "found NaN or infinite features (or values too large for float32)")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(source, f"found labels of shape {y.shape}, expected ({len(x)},): one per example")
    if y.dtype.kind not in "iuf":
        raise DataError(source, f"found {y.dtype} labels, expected integers")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.floor(y)).all()):
        raise DataError(source, "found labels that are not whole numbers")
    if y.size and (y.min() < 0 or y.max() >= MAX_CLASSES):
        raise DataError(source, f"found labels {y.min()}..{y.max()}, expected 0..{MAX_CLASSES - 1}")
    return features, y.astype(np.int64)


def classification_bundle(x: np.ndarray, y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> DataBundle:
    """Checked arrays as a bundle; the classes are 0..max label seen in either part."""
    num_classes = int(max(y.max(initial=0), val_y.max(initial=0))) + 1
    return DataBundle(
        spec=InputSpec(kind="classification", input_shape=tuple(x.shape[1:]), num_classes=num_classes),
        train=ArrayDataset(torch.from_numpy(x), torch.from_numpy(y)),
        validation=ArrayDataset(torch.from_numpy(val_x), torch.from_numpy(val_y)),
    )
