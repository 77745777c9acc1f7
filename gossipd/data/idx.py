"""IDX files (the MNIST format): a strict, bounded reader and the `format = "idx"` loader.

An IDX file is two zero bytes, a dtype code, the number of dimensions, one big-endian uint32 per dimension,
then the values, big-endian and row-major. The header is checked and the declared size capped before the
body is read, and a gzip stream is never inflated past the declared size plus one byte (which is how
trailing data is noticed), so neither a lying header nor a gzip bomb makes us allocate much.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from gossipd.data.errors import DataError, checked_size, data_path
from gossipd.data.spec import ArrayDataset, DataBundle, InputSpec, Pixels
from gossipd.data.splits import Standardization, fit_standardization, split_indices

if TYPE_CHECKING:  # the registry imports this module to list it among the formats
    from gossipd.data.registry import LoadContext

GZIP_MAGIC = b"\x1f\x8b"
DTYPES: dict[int, np.dtype[np.generic]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MAX_IDX_BYTES = 1 << 31  # the decoded body; MNIST's training images are 47 MB, EMNIST's about 700 MB
MAX_NDIM = 8
MAX_CLASSES = 100_000
_READ_CHUNK = 1 << 24


class _ByteStream(Protocol):
    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True, kw_only=True)
class IdxSource:
    """`format = "idx"`: image and label IDX files, optionally gzipped; the test pair, when given, is the
    validation set, otherwise `validation_fraction` of the training files is held out."""

    train_images: str
    train_labels: str
    test_images: str | None = None
    test_labels: str | None = None
    # Standardise pixels with the training set's mean and std (after scaling bytes to [0, 1]).
    normalize: bool = True


def read_idx(path: Path, *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """The array stored in IDX file `path` (gzip recognised by its magic bytes), in native byte order."""
    checked_size(path, max_bytes)
    try:
        with path.open("rb") as raw:
            # Unambiguous: an uncompressed IDX file starts with two zero bytes.
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                    return _read_idx_stream(unzipped, path, max_bytes)
            return _read_idx_stream(raw, path, max_bytes)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:  # BadGzipFile is an OSError: it goes first
        raise DataError(path, f"corrupt gzip stream: {exc}") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from None


def _read_idx_stream(stream: _ByteStream, path: Path, max_bytes: int) -> np.ndarray:
    magic = _read_exact(stream, 4, path, "the IDX magic number")
    if magic[0] != 0 or magic[1] != 0 or magic[2] not in DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in DTYPES)
        raise DataError(path, f"found magic bytes {magic.hex()}, expected 00 00, a dtype code ({codes}), then ndim")
    dtype, ndim = DTYPES[magic[2]], magic[3]
    if not 1 <= ndim <= MAX_NDIM:
        raise DataError(path, f"found {ndim} dimensions in the IDX header, expected 1 to {MAX_NDIM}")
    shape = tuple(int(d) for d in np.frombuffer(_read_exact(stream, 4 * ndim, path, "the IDX header"), ">u4"))
    # Python integers: the product cannot overflow however large the declared dimensions are.
    declared = dtype.itemsize
    for size in shape:
        declared *= size
    if declared > max_bytes:
        raise DataError(path, f"IDX header declares shape {shape} ({declared:,} bytes), over the {max_bytes:,} cap")
    body = _read_exact(stream, declared, path, f"shape {shape}")
    if stream.read(1):
        raise DataError(path, f"trailing bytes after the {declared:,} bytes that shape {shape} declares")
    # Bytes need no swap, so MNIST's pixels stay in the buffer they were read into (no second copy).
    return np.frombuffer(body, dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def _read_exact(stream: _ByteStream, count: int, path: Path, what: str) -> bytearray:
    """Exactly `count` bytes, read in bounded chunks so a truncated file never costs its declared size."""
    buffer = bytearray()
    while len(buffer) < count:
        chunk = stream.read(min(count - len(buffer), _READ_CHUNK))
        if not chunk:
            raise DataError(path, f"truncated: {what} needs {count:,} bytes, found {len(buffer):,}")
        buffer += chunk
    return buffer


def read_images(path: Path) -> np.ndarray:
    """IDX images `(N, H, W)` as float32 `(N, 1, H, W)`: bytes scaled to [0, 1], floats taken as they are."""
    return as_pixels(read_raw_images(path))


def read_raw_images(path: Path) -> np.ndarray:
    """IDX images `(N, 1, H, W)` in their stored dtype (bytes, or checked finite floats): a peer converts only
    the rows it keeps, so MNIST's 60,000 training images never all become float32 (188 MB) at once."""
    array = read_idx(path)
    if array.ndim != 3:
        raise DataError(path, f"found {array.ndim} dimensions, expected 3 (images, rows, columns)")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise DataError(path, "found NaN or infinite pixel values")
    elif array.dtype != np.uint8:
        raise DataError(path, f"found {array.dtype} pixels, expected unsigned bytes (0x08) or floats")
    return array.reshape(len(array), 1, *array.shape[1:])


def pixel_scale(raw: np.ndarray) -> float:
    """What a raw value is multiplied by as a pixel: bytes map to [0, 1], floats stay as they are."""
    return 1.0 / 255.0 if raw.dtype == np.uint8 else 1.0


def as_pixels(raw: np.ndarray) -> np.ndarray:
    """Raw images as float32 pixels."""
    images = raw.astype(np.float32)
    if raw.dtype == np.uint8:
        images /= 255.0
    return images


def read_labels(path: Path) -> np.ndarray:
    """IDX labels `(N,)` as int64 class indices."""
    array = read_idx(path)
    if array.ndim != 1:
        raise DataError(path, f"found {array.ndim} dimensions, expected 1 (one label per example)")
    if array.dtype.kind not in "iu":
        raise DataError(path, f"found {array.dtype} labels, expected integers")
    labels = array.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= MAX_CLASSES):
        raise DataError(path, f"found labels {labels.min()}..{labels.max()}, expected 0..{MAX_CLASSES - 1}")
    return labels


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_raw_images(images_path), read_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(images_path, f"has {len(images):,} images but {labels_path.name} has {len(labels):,} labels")
    return images, labels


def _pixel_statistics(raw: np.ndarray) -> Standardization:
    stats = fit_standardization(raw, per_feature=False)
    scale = pixel_scale(raw)
    return Standardization(stats.mean * scale, stats.std * scale)


def load_idx(config: IdxSource, ctx: LoadContext) -> DataBundle:
    """MNIST-style image classification: x `(N, 1, H, W)`, y int64 `(N,)`; byte images stay bytes, with the
    scaling and standardisation as the datasets' `pixels`, float images are standardised in place."""
    if (config.test_images is None) != (config.test_labels is None):
        given = "test_images" if config.test_images is not None else "test_labels"
        raise DataError("[data]", f"{given} is set without its pair; give both test_images and test_labels")
    train_x, train_y = _read_pair(
        data_path(config.train_images, ctx.base_dir), data_path(config.train_labels, ctx.base_dir)
    )
    if len(train_x) == 0:
        raise DataError(data_path(config.train_images, ctx.base_dir), "holds no images")
    if config.test_images is not None and config.test_labels is not None:
        test_images = data_path(config.test_images, ctx.base_dir)
        val_x, val_y = _read_pair(test_images, data_path(config.test_labels, ctx.base_dir))
        if val_x.shape[1:] != train_x.shape[1:]:
            raise DataError(test_images, f"images are {val_x.shape[2:]}, the training images {train_x.shape[2:]}")
        if val_x.dtype != train_x.dtype:  # one scale for both: as floats
            train_x, val_x = as_pixels(train_x), as_pixels(val_x)
    else:
        train_idx, val_idx = split_indices(len(train_x), ctx.validation_fraction, ctx.seed)
        val_x, val_y = train_x[val_idx], train_y[val_idx]
        train_x, train_y = train_x[train_idx], train_y[train_idx]
    num_classes = int(max(train_y.max(), val_y.max(initial=0))) + 1
    # Statistics over every training image (the same on every peer), fitted on the raw values and scaled.
    stats = _pixel_statistics(train_x) if config.normalize else None
    if ctx.keep is not None:
        kept = ctx.keep(train_y, len(train_y))
        train_x, train_y = train_x[kept], train_y[kept]
    pixels: Pixels | None = None
    if train_x.dtype == np.uint8:  # kept as bytes, decoded a batch at a time (spec.Pixels)
        mean, std = (0.0, 1.0) if stats is None else (float(np.float32(stats.mean)), float(np.float32(stats.std)))
        pixels = Pixels(divisor=255.0, mean=mean, std=std)
    else:
        train_x, val_x = as_pixels(train_x), as_pixels(val_x)
        if stats is not None:
            stats.apply_(train_x)
            stats.apply_(val_x)
    return DataBundle(
        spec=InputSpec(kind="classification", input_shape=tuple(train_x.shape[1:]), num_classes=num_classes),
        train=ArrayDataset(torch.from_numpy(train_x), torch.from_numpy(train_y), pixels),
        validation=ArrayDataset(torch.from_numpy(val_x), torch.from_numpy(val_y), pixels),
        class_names=tuple(str(c) for c in range(num_classes)),
    )
