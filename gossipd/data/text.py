"""`format = "text"`: character-level language modelling on one text file, as in nanoGPT's shakespeare_char.

The vocabulary is the sorted set of characters in the whole file. The first (1 - validation_fraction) of the
text trains and the rest validates (a contiguous tail, not a random sample, so validation windows never
overlap training ones). Each part is cut into windows of block_size + 1 characters with stride block_size;
a window's first block_size characters are the input and its last block_size the targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gossipd.data.errors import DataError, data_path, read_bounded
from gossipd.data.spec import ArrayDataset, DataBundle, InputSpec
from gossipd.task.fields import bounds

if TYPE_CHECKING:  # the registry imports this module to list it among the formats
    from gossipd.data.registry import LoadContext

# Each character becomes two int64 tokens (x and y), so 256 MiB of text is already 4 GiB of tensors.
MAX_TEXT_BYTES = 256 << 20
MIN_BLOCK_SIZE = 2
MAX_BLOCK_SIZE = 4096


@dataclass(frozen=True, kw_only=True)
class TextSource:
    """`format = "text"`: one text file, modelled character by character in windows of `block_size`."""

    path: str
    block_size: int = field(default=64, metadata=bounds(min=MIN_BLOCK_SIZE, max=MAX_BLOCK_SIZE))
    encoding: str = "utf-8"


def load_text(config: TextSource, ctx: LoadContext) -> DataBundle:
    """x and y int64 `(N, block_size)` character ids, y being x shifted one character to the left."""
    if not MIN_BLOCK_SIZE <= config.block_size <= MAX_BLOCK_SIZE:
        raise DataError("[data]", f"block_size: found {config.block_size}, expected {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}")
    path = data_path(config.path, ctx.base_dir)
    text = _decode(read_bounded(path, MAX_TEXT_BYTES), config.encoding, path)
    if not text:
        raise DataError(path, "is empty")
    # Code points, through a fixed-width encoding: turning a million characters into ids takes milliseconds.
    points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    vocabulary = np.unique(points)
    ids = np.searchsorted(vocabulary, points).astype(np.int64)
    n_train = int(len(ids) * (1.0 - ctx.validation_fraction))
    train = windows(ids[:n_train], config.block_size)
    if len(train) == 0:
        raise DataError(
            path,
            f"the training text is {n_train:,} characters, too short for one window of block_size + 1 "
            f"= {config.block_size + 1}",
        )
    validation = windows(ids[n_train:], config.block_size)
    if ctx.validation_fraction > 0 and len(validation) == 0:
        raise DataError(
            path,
            f"the validation text (the last {len(ids) - n_train:,} characters) is too short for one "
            f"window of block_size + 1 = {config.block_size + 1}; "
            "lower block_size or raise validation_fraction",
        )
    return DataBundle(
        spec=InputSpec(kind="language", input_shape=(config.block_size,), num_classes=len(vocabulary)),
        train=train,
        validation=validation,
        class_names=tuple(chr(p) for p in vocabulary),
    )


def windows(ids: np.ndarray, block_size: int) -> ArrayDataset:
    """Windows with stride B = block_size: x[i] = ids[i*B : i*B + B], y[i] = ids[i*B + 1 : i*B + B + 1]."""
    count = max(0, (len(ids) - 1) // block_size)
    span = count * block_size
    x = ids[:span].reshape(count, block_size)
    y = ids[1 : span + 1].reshape(count, block_size)
    return ArrayDataset(torch.from_numpy(x.copy()), torch.from_numpy(y.copy()))


def _decode(data: bytes, encoding: str, path: Path) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not {encoding} text: {exc.reason} at byte {exc.start:,}") from None
    except LookupError:
        raise DataError("[data]", f"encoding: found {encoding!r}, expected a Python text codec") from None
