"""The data formats a task can declare, and the entry points that load a task's data and a peer's share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
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
    # The training examples to keep, given the training labels (classification) and their count: a loader
    # whose entry says it `keeps` applies it before converting examples, so a peer holds only its share.
    keep: Callable[[np.ndarray | None, int], np.ndarray] | None = None


class FormatEntry(NamedTuple):
    config_type: type[Any]
    load: Callable[[Any, LoadContext], DataBundle]
    keeps: bool = False  # applies LoadContext.keep itself


FORMATS: Mapping[str, FormatEntry] = {
    "idx": FormatEntry(IdxSource, load_idx, keeps=True),
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
    keep = _shard_keeper(partition, peer_index, peer_count, seed)
    labels = bundle.train.y.numpy() if bundle.spec.kind == "classification" else None
    return bundle.train.subset(torch.from_numpy(keep(labels, len(bundle.train))))


def load_peer_data(section: DataSection, seed: int, partition: str, peer_index: int, peer_count: int) -> DataBundle:
    """`load_data` with only peer `peer_index`'s share of the training examples (as `peer_shard` picks it),
    picked before the examples are converted where the format allows: a daemon of a big swarm never holds
    the whole training set as tensors, even for a moment."""
    keep = _shard_keeper(partition, peer_index, peer_count, seed)
    entry = FORMATS[section.format]
    context = LoadContext(
        base_dir=section.base_dir,
        validation_fraction=section.validation_fraction,
        seed=seed,
        keep=keep if entry.keeps else None,
    )
    bundle = entry.load(section.source, context)
    if entry.keeps:
        return bundle
    return dataclasses.replace(bundle, train=peer_shard(bundle, partition, peer_index, peer_count, seed))


def _shard_keeper(
    partition: str, peer_index: int, peer_count: int, seed: int
) -> Callable[[np.ndarray | None, int], np.ndarray]:
    if not 0 <= peer_index < peer_count:
        raise ValueError(f"peer index {peer_index} is outside 0..{peer_count - 1}")
    spec = parse_partition(partition)

    def keep(labels: np.ndarray | None, count: int) -> np.ndarray:
        return partition_indices(spec, count, peer_count, seed, labels)[peer_index]

    return keep
