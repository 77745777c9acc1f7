"""Data loading: each format on real data where present, and malformed inputs refused with DataError."""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gossipd.data.csv_table import CsvSource, load_csv
from gossipd.data.custom import CustomSource, load_custom
from gossipd.data.errors import DataError
from gossipd.data.idx import IdxSource, load_idx, read_idx
from gossipd.data.npz import NpzSource, load_npz
from gossipd.data.registry import LoadContext, load_data, load_peer_data, peer_shard, resolve_root
from gossipd.data.spec import ArrayDataset
from gossipd.data.splits import fit_standardization, split_indices, split_validation
from gossipd.data.text import TextSource, load_text
from gossipd.task.schema import DataSection

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
EMBEDDED_MNIST = resolve_root("embedded:mnist", Path("."))
MNIST_TEST = IdxSource(train_images="t10k-images-idx3-ubyte.gz", train_labels="t10k-labels-idx1-ubyte.gz")
EMBEDDED_SOURCE = IdxSource(train_images="t10k-images-idx3-ubyte.gz", train_labels="t10k-labels-idx1-ubyte.gz")
TITANIC_NUMERIC = ("Pclass", "Age", "SibSp", "Parch", "Fare")
TITANIC_CATEGORICAL = ("Sex", "Embarked")


def context(base_dir: Path, fraction: float = 0.1, seed: int = 0) -> LoadContext:
    return LoadContext(base_dir=base_dir, validation_fraction=fraction, seed=seed)


def dataset(name: str) -> Path:
    folder = DATASETS / name
    if not folder.is_dir():
        pytest.skip(f"shared dataset {name} is not present at {folder}")
    return folder


# --- splits -----------------------------------------------------------------------------------------------


def test_split_indices_are_seeded_disjoint_and_covering() -> None:
    train, validation = split_indices(1000, 0.1, seed=3)
    assert len(validation) == 100
    assert np.array_equal(np.sort(np.concatenate([train, validation])), np.arange(1000))
    again_train, again_validation = split_indices(1000, 0.1, seed=3)
    assert np.array_equal(validation, again_validation)
    assert np.array_equal(train, again_train)
    assert not np.array_equal(validation, split_indices(1000, 0.1, seed=4)[1])


def test_split_keeps_one_of_each_and_rejects_bad_fractions() -> None:
    assert [len(p) for p in split_indices(5, 0.01, seed=0)] == [4, 1]
    assert [len(p) for p in split_indices(2, 0.9, seed=0)] == [1, 1]
    with pytest.raises(ValueError, match="outside"):
        split_indices(10, 1.0, seed=0)


def test_zero_fraction_gives_empty_validation_with_trailing_shape() -> None:
    data = ArrayDataset(torch.zeros(8, 1, 5, 5), torch.zeros(8, dtype=torch.int64))
    train, validation = split_validation(data, 0.0, seed=0)
    assert len(train) == 8
    assert tuple(validation.x.shape) == (0, 1, 5, 5)


def test_standardization_statistics() -> None:
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(5.0, 3.0, 4000), np.full(4000, 7.0)], axis=1).astype(np.float32)
    stats = fit_standardization(x, per_feature=True)
    assert stats.mean == pytest.approx([5.0, 7.0], abs=0.2)
    assert stats.std == pytest.approx([3.0, 1.0], abs=0.2)  # a constant column is centred, not scaled
    scaled = stats.apply_(x.copy())
    assert scaled.mean(axis=0) == pytest.approx([0.0, 0.0], abs=1e-4)
    assert scaled.std(axis=0)[0] == pytest.approx(1.0, abs=1e-4)
    overall = fit_standardization(x, per_feature=False)
    assert overall.mean.shape == ()
    assert float(overall.mean) == pytest.approx(float(x.astype(np.float64).mean()), rel=1e-6)


# --- idx ----------------------------------------------------------------------------------------------------


def test_embedded_mnist_loads_split_and_normalised() -> None:
    bundle = load_idx(MNIST_TEST, context(EMBEDDED_MNIST, fraction=0.1, seed=1))
    assert bundle.spec.kind == "classification"
    assert bundle.spec.input_shape == (1, 28, 28)
    assert bundle.spec.num_classes == 10
    assert bundle.class_names == tuple("0123456789")
    assert (len(bundle.train), len(bundle.validation)) == (9000, 1000)
    assert bundle.train.x.dtype == torch.uint8  # stored as bytes: a quarter of float32's memory
    assert bundle.train.inputs().dtype == torch.float32
    assert bundle.train.y.dtype == torch.int64
    assert float(bundle.train.inputs().mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(bundle.train.inputs().std()) == pytest.approx(1.0, abs=1e-3)
    # Statistics come from the training part, so the held-out part is close but not exactly standardised.
    assert float(bundle.validation.inputs().mean()) != pytest.approx(0.0, abs=1e-6)
    counts = torch.bincount(torch.cat([bundle.train.y, bundle.validation.y]), minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_idx_without_normalisation_is_pixels_in_unit_range() -> None:
    source = IdxSource(train_images=MNIST_TEST.train_images, train_labels=MNIST_TEST.train_labels, normalize=False)
    bundle = load_idx(source, context(EMBEDDED_MNIST, fraction=0.0))
    assert (len(bundle.train), len(bundle.validation)) == (10_000, 0)
    assert tuple(bundle.validation.x.shape) == (0, 1, 28, 28)
    assert float(bundle.train.inputs().min()) == 0.0
    assert float(bundle.train.inputs().max()) == 1.0


def test_full_mnist_uses_test_files_as_validation() -> None:
    folder = dataset("mnist")
    source = IdxSource(
        train_images="train-images-idx3-ubyte.gz",
        train_labels="train-labels-idx1-ubyte.gz",
        test_images="t10k-images-idx3-ubyte.gz",
        test_labels="t10k-labels-idx1-ubyte.gz",
    )
    bundle = load_idx(source, context(folder, fraction=0.5))  # the fraction is unused with test files
    assert (len(bundle.train), len(bundle.validation)) == (60_000, 10_000)
    assert tuple(bundle.train.x.shape) == (60_000, 1, 28, 28)
    assert torch.bincount(bundle.train.y).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert float(bundle.train.inputs().mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(bundle.train.inputs().std()) == pytest.approx(1.0, abs=1e-3)


def test_byte_images_decode_a_batch_to_the_bit_as_converting_them_whole_did() -> None:
    """Kept as bytes and decoded per batch (spec.Pixels): the same float32 values as the whole-array
    conversion the loader made before, scaling then standardising, step by step in float32."""
    bundle = load_idx(MNIST_TEST, context(EMBEDDED_MNIST, fraction=0.1, seed=1))
    pixels = bundle.train.pixels
    assert pixels is not None
    raw = bundle.train.x.numpy()
    whole = raw.astype(np.float32)
    whole /= 255.0
    whole -= np.float32(pixels.mean)
    whole /= np.float32(pixels.std)
    index = torch.tensor([5, 0, 8999, 5, 1234])
    assert torch.equal(bundle.train.inputs(index), torch.from_numpy(whole[index.numpy()]))
    assert torch.equal(bundle.train.inputs(slice(100, 300)), torch.from_numpy(whole[100:300]))
    shard = bundle.train.subset(torch.tensor([3, 1]))
    assert shard.pixels == pixels and torch.equal(shard.inputs(), torch.from_numpy(whole[[3, 1]]))
    assert torch.equal(shard.decoded().x, shard.inputs()) and shard.decoded().pixels is None
    with pytest.raises(ValueError, match="bytes"):
        ArrayDataset(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), pixels)


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_pair(folder: Path, images: bytes, labels: bytes) -> IdxSource:
    (folder / "images").write_bytes(images)
    (folder / "labels").write_bytes(labels)
    return IdxSource(train_images="images", train_labels="labels")


PIXELS = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)
LABELS = np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8)


def test_idx_recognises_gzip_by_magic_and_reads_wider_dtypes(tmp_path: Path) -> None:
    # Compressed content under a plain name, plain content under a .gz name, int32 labels (code 0x0C).
    (tmp_path / "images.idx").write_bytes(gzip.compress(idx_bytes(PIXELS, 0x08)))
    (tmp_path / "labels.gz").write_bytes(idx_bytes(LABELS.astype(np.int32), 0x0C))
    source = IdxSource(train_images="images.idx", train_labels="labels.gz", normalize=False)
    bundle = load_idx(source, context(tmp_path, fraction=0.0))
    assert torch.equal(bundle.train.y, torch.from_numpy(LABELS.astype(np.int64)))
    assert torch.allclose(bundle.train.inputs()[:, 0], torch.from_numpy(PIXELS / np.float32(255.0)))
    assert bundle.spec.num_classes == 3
    assert read_idx(tmp_path / "images.idx").dtype == np.uint8


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (b"\x12\x34\x08\x03" + idx_bytes(PIXELS, 0x08)[4:], "magic bytes 12340803"),
        (idx_bytes(PIXELS, 0x08)[:-10], "truncated"),
        (idx_bytes(PIXELS, 0x08)[:10], "truncated"),
        (idx_bytes(PIXELS, 0x08) + b"garbage", "trailing bytes"),
        (gzip.compress(idx_bytes(PIXELS, 0x08))[:-20], "corrupt gzip|truncated"),
        (gzip.compress(idx_bytes(PIXELS, 0x08)) + b"garbage", "corrupt gzip"),
        (idx_bytes(PIXELS.reshape(6, 16), 0x08), "found 2 dimensions, expected 3"),
        (idx_bytes(PIXELS.astype(np.int16), 0x0B), "expected unsigned bytes"),
    ],
)
def test_malformed_idx_images(tmp_path: Path, images: bytes, match: str) -> None:
    source = write_pair(tmp_path, images, idx_bytes(LABELS, 0x08))
    with pytest.raises(DataError, match=match) as caught:
        load_idx(source, context(tmp_path))
    assert caught.value.source == str(tmp_path / "images")


def test_idx_image_and_label_counts_must_match(tmp_path: Path) -> None:
    source = write_pair(tmp_path, idx_bytes(PIXELS, 0x08), idx_bytes(LABELS[:5], 0x08))
    with pytest.raises(DataError, match="has 6 images but labels has 5 labels"):
        load_idx(source, context(tmp_path))


def test_idx_test_files_come_in_pairs(tmp_path: Path) -> None:
    source = IdxSource(train_images="a", train_labels="b", test_images="c")
    with pytest.raises(DataError, match="test_images is set without its pair"):
        load_idx(source, context(tmp_path))


def test_idx_header_declaring_a_terabyte_fails_fast_without_allocating(tmp_path: Path) -> None:
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 10_000, 10_000, 10_000)  # 10^12 bytes
    source = write_pair(tmp_path, gzip.compress(header + bytes(1000)), idx_bytes(LABELS, 0x08))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DataError, match="declares shape"):
            load_idx(source, context(tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 4 << 20


def test_idx_gzip_bomb_is_not_inflated_past_its_declared_size(tmp_path: Path) -> None:
    # The header declares 100 bytes; 64 MiB of zeros follow, squeezed into about 64 KiB of gzip.
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 1, 10, 10)
    with gzip.open(tmp_path / "images", "wb") as out:
        out.write(header)
        for _ in range(64):
            out.write(bytes(1 << 20))
    (tmp_path / "labels").write_bytes(idx_bytes(LABELS[:1], 0x08))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="trailing bytes"):
            load_idx(IdxSource(train_images="images", train_labels="labels"), context(tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_idx_labels_must_be_one_dimensional_integers(tmp_path: Path) -> None:
    source = write_pair(tmp_path, idx_bytes(PIXELS, 0x08), idx_bytes(LABELS.astype(np.float32), 0x0D))
    with pytest.raises(DataError, match="float32 labels, expected integers"):
        load_idx(source, context(tmp_path))


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read") as caught:
        load_idx(IdxSource(train_images="nope.gz", train_labels="nope"), context(tmp_path))
    assert "nope.gz" in str(caught.value)


def test_data_error_pickles_with_its_message() -> None:
    error = pickle.loads(pickle.dumps(DataError("train.csv", "row 1: bad")))
    assert isinstance(error, DataError)
    assert str(error) == "train.csv: row 1: bad"
    assert isinstance(error, ValueError)


# --- csv ----------------------------------------------------------------------------------------------------


def test_titanic_loads_whole_with_missing_indicators() -> None:
    folder = dataset("titanic")
    source = CsvSource(path="train.csv", target="Survived", numeric=TITANIC_NUMERIC, categorical=TITANIC_CATEGORICAL)
    bundle = load_csv(source, context(folder, fraction=0.0))
    # 5 numeric + Age's missing indicator + Sex {female, male} + Embarked {"", C, Q, S}.
    assert bundle.spec.input_shape == (12,)
    assert (len(bundle.train), len(bundle.validation)) == (891, 0)
    assert bundle.class_names == ("0", "1")
    assert int(bundle.train.y.sum()) == 342
    x = bundle.train.x
    assert not torch.isnan(x).any()
    age_missing = x[:, 2]
    assert int(age_missing.sum()) == 177
    numeric = x[:, [0, 1, 3, 4, 5]]
    assert torch.allclose(numeric.mean(dim=0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(numeric.std(dim=0, unbiased=False), torch.ones(5), atol=1e-4)
    embarked = x[:, 8:12]
    assert embarked.sum(dim=1).tolist() == [1.0] * 891
    assert int(embarked[:, 0].sum()) == 2  # the empty category, sorted first


def test_titanic_splits_by_fraction_through_the_registry() -> None:
    folder = dataset("titanic")
    source = CsvSource(path="train.csv", target="Survived", numeric=TITANIC_NUMERIC, categorical=TITANIC_CATEGORICAL)
    section = DataSection(format="csv", validation_fraction=0.2, source=source, base_dir=folder)
    bundle = load_data(section, seed=5)
    assert (len(bundle.train), len(bundle.validation)) == (713, 178)
    assert bundle.spec.input_shape[0] in (11, 12)  # Embarked's two empty cells may both be held out
    assert not torch.isnan(bundle.validation.x).any()


def write_csv(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(textwrap.dedent(text).lstrip())
    return name


def test_csv_encoding_uses_training_statistics_only(tmp_path: Path) -> None:
    train = write_csv(
        tmp_path,
        "train.csv",
        """\
        size,colour,label
        1,red,10
        ,blue,2
        3,"red",2
        """,
    )
    test = write_csv(tmp_path, "test.csv", "label,colour,size\n10,green,\n2,blue,100\n")
    source = CsvSource(path=train, target="label", numeric=("size",), categorical=("colour",), test_path=test)
    bundle = load_csv(source, context(tmp_path))
    assert bundle.class_names == ("2", "10")  # numeric labels sort as numbers
    assert bundle.train.y.tolist() == [1, 0, 0]
    # size: imputed with the training mean 2, std sqrt(2/3); indicator; colour one-hot over {blue, red}.
    std = (2 / 3) ** 0.5
    expected_train = [[-1 / std, 0, 0, 1], [0, 1, 1, 0], [1 / std, 0, 0, 1]]
    assert torch.allclose(bundle.train.x, torch.tensor(expected_train), atol=1e-5)
    expected_test = [[0, 1, 0, 0], [98 / std, 0, 1, 0]]  # 'green' was never seen: all zeros
    assert torch.allclose(bundle.validation.x, torch.tensor(expected_test), atol=1e-4)


def test_csv_text_labels_and_other_delimiters(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "t.tsv", "a\tb\nx\t1\ny\t2\nx\t3\n")
    source = CsvSource(path=path, target="a", numeric=("b",), delimiter="\t")
    bundle = load_csv(source, context(tmp_path, fraction=0.0))
    assert bundle.class_names == ("x", "y")
    assert bundle.spec.input_shape == (1,)  # no empty cell, so no indicator


def test_csv_ignores_unused_repeated_columns_and_allows_an_empty_test_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "t.csv", "x,,,y\n1,,,a\n2,,,b\n")
    test = write_csv(tmp_path, "test.csv", "y,x\n")
    bundle = load_csv(CsvSource(path=path, target="y", numeric=("x",), test_path=test), context(tmp_path))
    assert (len(bundle.train), tuple(bundle.validation.x.shape)) == (2, (0, 1))


@pytest.mark.parametrize(
    ("text", "source", "match"),
    [
        (
            "a,b\n1,2\nabc,3\n",
            {"numeric": ("a",)},
            r"t\.csv: row 2 \(line 3\): column 'a': found 'abc', expected a",
        ),
        ("a,b\n1,2\ninf,3\n", {"numeric": ("a",)}, "found 'inf', expected a number"),
        ("a,b\n1,2\n", {"numeric": ("c",)}, "unknown column 'c'; the columns are: 'a', 'b'"),
        ("a,b\n1,2\n3,\n", {"numeric": ("a",)}, r"row 2 \(line 3\): column 'b' \(the target\) is empty"),
        ("a,b\n1,2\n3\n", {"numeric": ("a",)}, "found 1 fields, expected 2"),
        ("a,a,b\n1,2,3\n", {"numeric": ("a",)}, "column 'a' appears 2 times"),
        ("", {"numeric": ("a",)}, "empty file"),
        ("a,b\n", {"numeric": ("a",)}, "no data rows"),
        ("a,b\n,1\n,2\n", {"numeric": ("a",)}, "column 'a' has no values in the training rows"),
        ('a,b\n"1,2\n', {"numeric": ("a",)}, "malformed CSV"),
        ("a,b\n1,2\n", {}, "no feature columns"),
        ("a,b\n1,2\n", {"numeric": ("a",), "categorical": ("a",)}, "listed as categorical and as numeric"),
        ("a,b\n1,2\n", {"numeric": ("b",)}, "listed as numeric and as target"),
    ],
)
def test_malformed_csv(tmp_path: Path, text: str, source: dict[str, Any], match: str) -> None:
    path = write_csv(tmp_path, "t.csv", text)
    with pytest.raises(DataError, match=match):
        load_csv(CsvSource(path=path, target="b", **source), context(tmp_path, fraction=0.0))


def test_csv_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_bytes(b"a,b\n1,\xff\n")
    with pytest.raises(DataError, match=r"not UTF-8 text .* at byte 6"):
        load_csv(CsvSource(path="t.csv", target="b", numeric=("a",)), context(tmp_path))


# --- text ---------------------------------------------------------------------------------------------------


def test_shakespeare_characters_and_shifted_targets() -> None:
    folder = dataset("tinyshakespeare")
    section = DataSection(
        format="text",
        validation_fraction=0.1,
        source=TextSource(path="input.txt", block_size=64),
        base_dir=folder,
    )
    bundle = load_data(section, seed=0)
    assert bundle.spec.kind == "language"
    assert bundle.spec.input_shape == (64,)
    assert bundle.spec.num_classes == 65
    assert bundle.class_names == tuple(sorted(bundle.class_names))
    assert bundle.class_names[:2] == ("\n", " ")
    # nanoGPT's split: the first int(0.9 n) characters train, windows of 65 with stride 64.
    n_train = int(1_115_394 * 0.9)
    assert len(bundle.train) == (n_train - 1) // 64
    assert len(bundle.validation) == (1_115_394 - n_train - 1) // 64
    x, y = bundle.train.x, bundle.train.y
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y[:-1, -1], x[1:, 0])
    first = "".join(bundle.class_names[i] for i in x[0].tolist())
    assert first.startswith("First Citizen:\nBefore we proceed any further")


def test_text_windows_and_zero_fraction(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("abcabcabcab", encoding="utf-8")
    bundle = load_text(TextSource(path="t.txt", block_size=3), context(tmp_path, fraction=0.0))
    assert bundle.class_names == ("a", "b", "c")
    assert bundle.train.x.tolist() == [[0, 1, 2], [0, 1, 2], [0, 1, 2]]
    assert bundle.train.y.tolist() == [[1, 2, 0], [1, 2, 0], [1, 2, 0]]
    assert tuple(bundle.validation.x.shape) == (0, 3)


def test_text_split_is_the_contiguous_tail(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("a" * 80 + "b" * 20, encoding="utf-8")
    bundle = load_text(TextSource(path="t.txt", block_size=4), context(tmp_path, fraction=0.2))
    assert set(bundle.train.x.flatten().tolist()) == {0}
    assert set(bundle.validation.x.flatten().tolist()) == {1}


@pytest.mark.parametrize(
    ("content", "source", "fraction", "match"),
    [
        (b"hello\xff world", {}, 0.0, "not utf-8 text: invalid start byte at byte 5"),
        (b"", {}, 0.0, "is empty"),
        (b"abc", {"block_size": 3}, 0.0, "too short for one window"),
        (b"abcdefghij", {"block_size": 2}, 0.1, "the validation text .* is too short"),
        (b"abc", {"block_size": 1}, 0.0, "block_size: found 1"),
        (b"abc", {"encoding": "no-such-codec"}, 0.0, "encoding: found 'no-such-codec'"),
    ],
)
def test_malformed_text(tmp_path: Path, content: bytes, source: dict[str, Any], fraction: float, match: str) -> None:
    (tmp_path / "t.txt").write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_text(TextSource(path="t.txt", **source), context(tmp_path, fraction=fraction))


# --- npz ----------------------------------------------------------------------------------------------------


def test_npz_round_trip_with_test_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 3, 4)), rng.integers(0, 4, 50)
    np.savez(tmp_path / "train.npz", features=x, labels=y)
    np.savez_compressed(tmp_path / "test.npz", features=x[:7], labels=y[:7].astype(np.float64))
    source = NpzSource(path="train.npz", x_key="features", y_key="labels", test_path="test.npz")
    section = DataSection(format="npz", source=source, base_dir=tmp_path)
    bundle = load_data(section, seed=0)
    assert bundle.spec.input_shape == (3, 4)
    assert bundle.spec.num_classes == int(y.max()) + 1
    assert bundle.train.x.dtype == torch.float32
    assert torch.equal(bundle.train.x, torch.from_numpy(x.astype(np.float32)))
    assert torch.equal(bundle.train.y, torch.from_numpy(y))
    assert torch.equal(bundle.validation.y, torch.from_numpy(y[:7]))


def test_npz_split_without_test_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.arange(40.0).reshape(20, 2), y=np.arange(20) % 2)
    bundle = load_npz(NpzSource(path="d.npz"), context(tmp_path, fraction=0.25, seed=1))
    assert (len(bundle.train), len(bundle.validation)) == (15, 5)
    rows = torch.cat([bundle.train.x, bundle.validation.x])[:, 0].sort().values
    assert rows.tolist() == list(np.arange(0.0, 40.0, 2.0))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.array([{"a": 1}] * 4, dtype=object), "y": np.zeros(4)}, "Python objects"),
        ({"features": np.zeros((4, 2)), "y": np.zeros(4)}, "no array 'x'; the archive holds: features, y"),
        ({"x": np.zeros(4), "y": np.zeros(4)}, "expected \\(examples, features...\\)"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1.5, 0, 1])}, "not whole numbers"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, -1, 0, 1])}, "labels -1..1"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3)}, "expected \\(4,\\)"),
        ({"x": np.full((4, 2), np.nan), "y": np.zeros(4)}, "NaN"),
        ({"x": np.array([["a", "b"]] * 4), "y": np.zeros(4)}, "features, expected numbers"),
    ],
)
def test_malformed_npz(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    np.savez(tmp_path / "d.npz", allow_pickle=True, **arrays)
    with pytest.raises(DataError, match=match):
        load_npz(NpzSource(path="d.npz"), context(tmp_path))


def test_npz_that_is_not_an_archive(tmp_path: Path) -> None:
    with (tmp_path / "d.npz").open("wb") as out:
        np.save(out, np.zeros((3, 2)))  # a bare .npy under an .npz name
    with pytest.raises(DataError, match=r"not an \.npz"):
        load_npz(NpzSource(path="d.npz"), context(tmp_path))


# --- custom -------------------------------------------------------------------------------------------------

LOADERS = """
from gossipd.data.idx import IdxSource, load_idx
from gossipd.data.registry import LoadContext

def arrays(*, base_dir, seed, n=10):
    x = [[float(i + seed), 0.0] for i in range(n)]
    return x, [i % 3 for i in range(n)], [], []

def bundle(*, base_dir, seed):
    source = IdxSource(train_images="t10k-images-idx3-ubyte.gz", train_labels="t10k-labels-idx1-ubyte.gz")
    return load_idx(source, LoadContext(base_dir=base_dir, validation_fraction=0.5, seed=seed))

def bad_labels(*, base_dir, seed):
    from dataclasses import replace
    result = bundle(base_dir=base_dir, seed=seed)
    return replace(result, spec=replace(result.spec, num_classes=5))

def boom(*, base_dir, seed):
    raise RuntimeError("boom")

def nothing(*, base_dir, seed):
    return None

def ragged(*, base_dir, seed):
    return [[1.0], [2.0]], [0], [], []

not_callable = 3
"""


@pytest.fixture
def loaders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "gossipd_test_custom_loaders"
    (tmp_path / f"{name}.py").write_text(LOADERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield name
    finally:
        sys.modules.pop(name, None)


def test_custom_function_returning_arrays(loaders: str) -> None:
    source = CustomSource(function=f"{loaders}:arrays", options={"n": 12})
    section = DataSection(format="custom", source=source, base_dir=Path("."))
    bundle = load_data(section, seed=7)
    assert bundle.spec.input_shape == (2,)
    assert bundle.spec.num_classes == 3
    assert len(bundle.train) == 12
    assert tuple(bundle.validation.x.shape) == (0, 2)
    assert bundle.train.x[0, 0].item() == 7.0  # the seed reached the function


def test_custom_function_returning_a_bundle(loaders: str) -> None:
    bundle = load_custom(CustomSource(function=f"{loaders}:bundle"), context(EMBEDDED_MNIST, seed=2))
    assert (len(bundle.train), len(bundle.validation)) == (5000, 5000)


@pytest.mark.parametrize(
    ("function", "options", "match"),
    [
        ("{m}:boom", {}, "custom function '{m}:boom': raised RuntimeError: boom"),
        ("{m}:nothing", {}, "returned NoneType, expected a DataBundle"),
        ("{m}:ragged", {}, "training arrays: found labels of shape \\(1,\\), expected \\(2,\\)"),
        ("{m}:bad_labels", {}, "train: found ids 0..9, expected 0..4"),
        ("{m}:not_callable", {}, "'not_callable' is not callable \\(it is of type int\\)"),
        ("{m}:missing", {}, "has no attribute 'missing'"),
        ("{m}:arrays", {"seed": 1}, "options may not set seed"),
        ("{m}:arrays", {"colour": 1}, "raised TypeError: .*unexpected keyword argument 'colour'"),
        ("{m}", {}, "expected 'package.module:callable'"),
        ("no_such_module_xyz:f", {}, "cannot import 'no_such_module_xyz': ModuleNotFoundError"),
    ],
)
def test_custom_function_failures(loaders: str, function: str, options: dict[str, Any], match: str) -> None:
    spec = function.format(m=loaders)
    with pytest.raises(DataError, match=match.format(m=loaders)) as caught:
        load_custom(CustomSource(function=spec, options=options), context(EMBEDDED_MNIST))
    assert caught.value.source.startswith(f"custom function {spec!r}")


def test_custom_failure_keeps_its_cause(loaders: str) -> None:
    with pytest.raises(DataError) as caught:
        load_custom(CustomSource(function=f"{loaders}:boom"), context(Path(".")))
    assert isinstance(caught.value.__cause__, RuntimeError)


# --- registry -----------------------------------------------------------------------------------------------


def test_registry_loads_embedded_idx() -> None:
    section = DataSection(format="idx", root="embedded:mnist", source=MNIST_TEST, base_dir=EMBEDDED_MNIST)
    bundle = load_data(section, seed=0)
    assert (len(bundle.train), len(bundle.validation)) == (9000, 1000)
    again = load_data(section, seed=0)
    assert torch.equal(bundle.validation.y, again.validation.y)


def small_sources(folder: Path, loaders: str) -> dict[str, Any]:
    """One small source per format, written to `folder`, so the registry is covered without shared data."""
    (folder / "images").write_bytes(idx_bytes(PIXELS, 0x08))
    (folder / "labels").write_bytes(idx_bytes(LABELS, 0x08))
    write_csv(folder, "t.csv", "f,c\n1,a\n2,b\n3,a\n4,b\n")
    (folder / "t.txt").write_text("hello world, " * 10, encoding="utf-8")
    np.savez(folder / "d.npz", x=np.zeros((6, 2)), y=LABELS)
    return {
        "idx": IdxSource(train_images="images", train_labels="labels"),
        "csv": CsvSource(path="t.csv", target="c", numeric=("f",)),
        "text": TextSource(path="t.txt", block_size=8),
        "npz": NpzSource(path="d.npz"),
        "custom": CustomSource(function=f"{loaders}:arrays"),
    }


@pytest.mark.parametrize("data_format", ["idx", "csv", "text", "npz", "custom"])
def test_registry_dispatches_every_format(tmp_path: Path, loaders: str, data_format: str) -> None:
    source = small_sources(tmp_path, loaders)[data_format]
    section = DataSection(format=data_format, validation_fraction=0.25, source=source, base_dir=tmp_path)
    bundle = load_data(section, seed=0)
    assert len(bundle.train) > 0
    assert tuple(bundle.train.inputs().shape[1:]) == bundle.spec.input_shape
    expected_kind = "language" if data_format == "text" else "classification"
    assert bundle.spec.kind == expected_kind


def _peak_bytes(load: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = load()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.5", "shards:2"])
def test_a_peers_share_loaded_early_is_the_share_taken_from_the_whole(partition: str) -> None:
    """`load_peer_data` picks the share from the raw bytes (IDX): the same examples and statistics, no higher
    a peak, and only the share held."""
    section = DataSection(format="idx", source=EMBEDDED_SOURCE, base_dir=EMBEDDED_MNIST, validation_fraction=0.15)
    whole, whole_peak = _peak_bytes(lambda: load_data(section, 3))
    for index in (0, 3):
        share = peer_shard(whole, partition, index, 5, 3)
        early, early_peak = _peak_bytes(lambda index=index: load_peer_data(section, 3, partition, index, 5))
        assert torch.equal(early.train.y, share.y)
        assert torch.allclose(early.train.inputs(), share.inputs(), atol=1e-5)
        assert torch.allclose(early.validation.inputs(), whole.validation.inputs(), atol=1e-5)
        assert early.spec == whole.spec
        # Images stay bytes, so neither path converts the whole set: both peak while reading the file, and
        # the early one then holds only its share.
        assert early_peak <= 1.01 * whole_peak, (early_peak, whole_peak)
        assert early.train.x.nbytes < whole.train.x.nbytes
    with pytest.raises(ValueError, match="outside"):
        load_peer_data(section, 3, "iid", 5, 5)


def test_a_peer_of_a_big_swarm_never_holds_all_of_mnist_as_floats(shared_mnist: Path) -> None:
    """Full MNIST: 60,000 training images are 188 MB as float32 and 47 MB as bytes. One peer of 16 peaks far
    below the float32 set (measured: about 100 MB against 290 MB for loading everything then sharing)."""
    source = IdxSource(
        train_images="train-images-idx3-ubyte.gz",
        train_labels="train-labels-idx1-ubyte.gz",
        test_images="t10k-images-idx3-ubyte.gz",
        test_labels="t10k-labels-idx1-ubyte.gz",
    )
    section = DataSection(format="idx", source=source, base_dir=shared_mnist)
    early, peak = _peak_bytes(lambda: load_peer_data(section, 1, "iid", 0, 16))
    assert len(early.train) == 60_000 // 16 and len(early.validation) == 10_000
    assert peak < 60_000 * 784 * 4 * 0.75, peak
