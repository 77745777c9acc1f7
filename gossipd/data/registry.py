"""The data formats a task can declare, and the entry points that load a task's data and a peer's share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from gossipd.data.csv_table import CsvSource, load_csv
from gossipd.data.custom import CustomSource, load_custom
from gossipd.data.idx import IdxSource, load_idx
from gossipd.data.npz import NpzSource, load_npz
from gossipd.data.partition import parse_partition, partition_indices
from gossipd.data.spec import ArrayDataset, DataBundle
from gossipd.data.text import TextSource, load_text
from gossipd.task.schema import DataSection

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "embedded"
EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True, kw_only=True)
class LoadContext:
    """What every loader needs besides its own settings."""

    base_dir: Path
    validation_fraction: float
    seed: int


class FormatEntry(NamedTuple):
    config_type: type[Any]
    load: Callable[[Any, LoadContext], DataBundle]


FORMATS: Mapping[str, FormatEntry] = {
    "idx": FormatEntry(IdxSource, load_idx),
    "csv": FormatEntry(CsvSource, load_csv),
    "text": FormatEntry(TextSource, load_text),
    "npz": FormatEntry(NpzSource, load_npz),
    "custom": FormatEntry(CustomSource, load_custom),
}


def resolve_root(root: str, base_dir: Path) -> Path:
    """`embedded:NAME` is a dataset shipped inside the package; other roots are paths (`~` expanded),
    relative ones taken from the task file's folder."""
    if root.startswith(EMBEDDED_PREFIX):
        name = root.removeprefix(EMBEDDED_PREFIX)
        path = EMBEDDED_DIR / name
        if not name or "/" in name or name.startswith(".") or not path.is_dir():
            shipped = sorted(p.name for p in EMBEDDED_DIR.iterdir() if p.is_dir())
            raise ValueError(f"found {root!r}, expected one of the embedded datasets: {', '.join(shipped)}")
        return path
    path = Path(root).expanduser()
    return path if path.is_absolute() else base_dir / path


def load_data(section: DataSection, seed: int) -> DataBundle:
    """Load the task's examples and its held-out set. Raises `DataError` with the file at fault."""
    entry = FORMATS[section.format]
    context = LoadContext(base_dir=section.base_dir, validation_fraction=section.validation_fraction, seed=seed)
    return entry.load(section.source, context)


def peer_shard(bundle: DataBundle, partition: str, peer_index: int, peer_count: int, seed: int) -> ArrayDataset:
    """The training examples of peer `peer_index` out of `peer_count` under the task's partition scheme."""
    if not 0 <= peer_index < peer_count:
        raise ValueError(f"peer index {peer_index} is outside 0..{peer_count - 1}")
    spec = parse_partition(partition)
    labels = bundle.train.y.numpy() if bundle.spec.kind == "classification" else None
    parts = partition_indices(spec, len(bundle.train), peer_count, seed, labels)
    return bundle.train.subset(torch.from_numpy(parts[peer_index]))
