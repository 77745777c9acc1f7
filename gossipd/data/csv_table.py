"""`format = "csv"`: a table with a header row, one class column and chosen numeric and categorical features.

Everything learnt from the data (imputation means, standardisation statistics, the categories of each
categorical column) comes from the training rows only, and is then applied unchanged to validation rows.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gossipd.data.errors import DataError, data_path, read_bounded
from gossipd.data.spec import ArrayDataset, DataBundle, InputSpec
from gossipd.data.splits import fit_standardization, split_indices

if TYPE_CHECKING:  # the registry imports this module to list it among the formats
    from gossipd.data.registry import LoadContext

MAX_CSV_BYTES = 1 << 30
MAX_COLUMNS = 10_000
MAX_FEATURES = 100_000
MAX_CLASSES = 100_000


@dataclass(frozen=True, kw_only=True)
class CsvSource:
    """`format = "csv"`: classify `target` from the `numeric` and `categorical` columns of `path`.

    Numeric cells may be empty (imputed with the training mean, plus a 0/1 "was missing" feature);
    categorical columns are one-hot over the categories seen in training. `test_path`, a file with the same
    columns, is the validation set when given; otherwise `validation_fraction` of the rows is held out.
    """

    path: str
    target: str
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    test_path: str | None = None
    delimiter: str = ","


@dataclass(frozen=True)
class _Table:
    """The needed columns of one CSV file, parsed: numeric cells as float64 (NaN where empty)."""

    numeric: dict[str, np.ndarray]
    categorical: dict[str, list[str]]
    target: list[str]

    def __len__(self) -> int:
        return len(self.target)

    def rows(self, indices: np.ndarray) -> _Table:
        return _Table(
            {name: values[indices] for name, values in self.numeric.items()},
            {name: [cells[i] for i in indices] for name, cells in self.categorical.items()},
            [self.target[i] for i in indices],
        )


@dataclass(frozen=True)
class _NumericFeature:
    name: str
    mean: float
    std: float
    # A 0/1 "this cell was empty" feature, added when the column had empty cells in training.
    indicator: bool


@dataclass(frozen=True)
class _CategoricalFeature:
    name: str
    categories: tuple[str, ...]


def load_csv(config: CsvSource, ctx: LoadContext) -> DataBundle:
    """Tabular classification: x float32 `(N, F)` of encoded features, y int64 class indices."""
    _check_config(config)
    path = data_path(config.path, ctx.base_dir)
    table = _read_table(path, config)
    if len(table) == 0:
        raise DataError(path, "has a header but no data rows")
    if config.test_path is not None:
        train, validation = table, _read_table(data_path(config.test_path, ctx.base_dir), config)
    else:
        train_idx, val_idx = split_indices(len(table), ctx.validation_fraction, ctx.seed)
        train, validation = table.rows(train_idx), table.rows(val_idx)
    numeric = [_fit_numeric(path, name, train.numeric[name]) for name in config.numeric]
    categorical = [_CategoricalFeature(n, tuple(sorted(set(train.categorical[n])))) for n in config.categorical]
    width = _width(numeric, categorical)
    if width > MAX_FEATURES:
        raise DataError(path, f"the columns encode to {width:,} features, expected at most {MAX_FEATURES:,}")
    classes = _class_names(path, table.target + (validation.target if config.test_path else []))
    index = {name: i for i, name in enumerate(classes)}
    return DataBundle(
        spec=InputSpec(kind="classification", input_shape=(width,), num_classes=len(classes)),
        train=_encode(train, numeric, categorical, index),
        validation=_encode(validation, numeric, categorical, index),
        class_names=classes,
    )


def _check_config(config: CsvSource) -> None:
    if not config.numeric and not config.categorical:
        raise DataError("[data]", "no feature columns; list at least one in `numeric` or `categorical`")
    if len(config.delimiter) != 1:
        raise DataError("[data]", f"delimiter: found {config.delimiter!r}, expected one character")
    seen = {config.target: "target"}
    for role, names in (("numeric", config.numeric), ("categorical", config.categorical)):
        for name in names:
            if name in seen:
                raise DataError("[data]", f"column {name!r} is listed as {role} and as {seen[name]}")
            seen[name] = role


def _read_table(path: Path, config: CsvSource) -> _Table:
    try:
        text = read_bounded(path, MAX_CSV_BYTES).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=config.delimiter, strict=True)
    try:
        header = [name.strip() for name in next(reader, [])]
        if not header:
            raise DataError(path, "empty file; expected a header row naming the columns")
        if len(header) > MAX_COLUMNS:
            raise DataError(path, f"found {len(header):,} columns, expected at most {MAX_COLUMNS:,}")
        wanted = (config.target, *config.numeric, *config.categorical)
        position = _column_positions(path, header, wanted)
        cells: dict[str, list[str]] = {name: [] for name in wanted}
        lines: list[int] = []
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise DataError(
                    path,
                    f"row {len(lines) + 1} (line {reader.line_num}): found {len(row)} fields, "
                    f"expected {len(header)} as in the header",
                )
            lines.append(reader.line_num)
            for name in wanted:
                cells[name].append(row[position[name]].strip())
    except csv.Error as exc:
        raise DataError(path, f"line {reader.line_num}: malformed CSV: {exc}") from None
    for i, label in enumerate(cells[config.target]):
        if not label:
            raise DataError(path, f"row {i + 1} (line {lines[i]}): column {config.target!r} (the target) is empty")
    return _Table(
        {name: _parse_numbers(path, name, cells[name], lines) for name in config.numeric},
        {name: cells[name] for name in config.categorical},
        cells[config.target],
    )


def _column_positions(path: Path, header: list[str], wanted: tuple[str, ...]) -> dict[str, int]:
    position: dict[str, int] = {}
    for i, name in enumerate(header):
        position.setdefault(name, i)
    for name in wanted:
        if name not in position:
            available = ", ".join(repr(h) for h in header)
            raise DataError(path, f"unknown column {name!r}; the columns are: {available}")
        if header.count(name) > 1:  # only an error for a column we read; others may repeat
            raise DataError(path, f"column {name!r} appears {header.count(name)} times in the header")
    return position


def _parse_numbers(path: Path, name: str, cells: list[str], lines: list[int]) -> np.ndarray:
    values = np.full(len(cells), np.nan)
    for i, cell in enumerate(cells):
        if not cell:
            continue
        try:
            value = float(cell)
        except ValueError:
            value = np.nan
        if not np.isfinite(value):
            raise DataError(path, f"row {i + 1} (line {lines[i]}): column {name!r}: found {cell!r}, expected a number")
        values[i] = value
    return values


def _fit_numeric(path: Path, name: str, values: np.ndarray) -> _NumericFeature:
    missing = np.isnan(values)
    if missing.all():
        raise DataError(path, f"column {name!r} has no values in the training rows")
    mean = float(values[~missing].mean())
    # Statistics of the imputed column, which is what the model will see.
    stats = fit_standardization(np.where(missing, mean, values)[:, None], per_feature=True)
    return _NumericFeature(name, mean, float(stats.std[0]), indicator=bool(missing.any()))


def _class_names(path: Path, labels: list[str]) -> tuple[str, ...]:
    distinct = set(labels)
    if len(distinct) > MAX_CLASSES:
        raise DataError(path, f"the target has {len(distinct):,} distinct values, expected at most {MAX_CLASSES:,}")
    try:
        # Numeric labels sort as numbers ("2" before "10"); ties between spellings of one number by text.
        return tuple(sorted(distinct, key=lambda label: (float(label), label)))
    except ValueError:
        return tuple(sorted(distinct))


def _encode(
    table: _Table,
    numeric: list[_NumericFeature],
    categorical: list[_CategoricalFeature],
    classes: dict[str, int],
) -> ArrayDataset:
    columns: list[np.ndarray] = []
    for feature in numeric:
        values = table.numeric[feature.name]
        missing = np.isnan(values)
        columns.append((np.where(missing, feature.mean, values) - feature.mean) / feature.std)
        if feature.indicator:
            columns.append(missing.astype(np.float64))
    for kind in categorical:
        position = {category: i for i, category in enumerate(kind.categories)}
        onehot = np.zeros((len(table), len(kind.categories)))
        for row, cell in enumerate(table.categorical[kind.name]):
            j = position.get(cell)
            if j is not None:  # a category never seen in training encodes as all zeros
                onehot[row, j] = 1.0
        columns.append(onehot)
    x = np.column_stack(columns).astype(np.float32)
    y = np.array([classes[label] for label in table.target], dtype=np.int64)
    return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y))


def _width(numeric: list[_NumericFeature], categorical: list[_CategoricalFeature]) -> int:
    return sum(1 + f.indicator for f in numeric) + sum(len(f.categories) for f in categorical)
