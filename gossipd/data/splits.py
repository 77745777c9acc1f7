"""Pure helpers shared by the loaders: a seeded validation split, and standardisation fitted on training data.

Statistics are always fitted on the training part only, so nothing about the held-out examples leaks into
the features the model trains on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gossipd.data.spec import ArrayDataset

# Mixed into the seed so the validation split does not reuse the stream of the peer partition.
_SPLIT_STREAM = 0x5B17
# Features with (nearly) no spread in training are centred but not scaled, rather than blown up.
_MIN_STD = 1e-8
# Statistics are accumulated over this many values at a time, so no float64 copy of a large array is made.
_CHUNK_VALUES = 1 << 20  # values per chunk of the statistics passes: 8 MB float64 temporaries


def validation_count(n_examples: int, fraction: float) -> int:
    """How many of `n_examples` go to validation: `fraction` of them rounded, at least one when the fraction
    is positive, and always leaving at least one for training."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction {fraction} is outside [0, 1)")
    if fraction == 0.0 or n_examples < 2:
        return 0
    return min(max(round(n_examples * fraction), 1), n_examples - 1)


def split_indices(n_examples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 (train, validation) indices: a seeded random `fraction` of `0..n_examples-1` held out."""
    n_val = validation_count(n_examples, fraction)
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n_examples)
    return np.sort(order[n_val:]).astype(np.int64), np.sort(order[:n_val]).astype(np.int64)


def split_validation(data: ArrayDataset, fraction: float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, validation); a fraction of 0 gives an empty validation set with the same trailing shape."""
    train, validation = split_indices(len(data), fraction, seed)
    return data.subset(torch.from_numpy(train)), data.subset(torch.from_numpy(validation))


@dataclass(frozen=True)
class Standardization:
    """`(x - mean) / std`, with `mean` and `std` either scalars or one per feature (last axis)."""

    mean: np.ndarray
    std: np.ndarray

    def apply_(self, x: np.ndarray) -> np.ndarray:
        """Standardise float array `x` in place (no second copy of a large array) and return it."""
        x -= self.mean.astype(x.dtype)
        x /= self.std.astype(x.dtype)
        return x


def fit_standardization(train: np.ndarray, *, per_feature: bool) -> Standardization:
    """Mean and std of `train`: per column of a 2-D `(N, F)` array, or one pair over every value."""
    if train.shape[0] == 0:
        raise ValueError("cannot fit standardisation statistics on an empty training set")
    if per_feature and train.ndim != 2:
        raise ValueError(f"per-feature statistics need an (N, F) array, found shape {train.shape}")
    values = train if per_feature else train.reshape(-1, 1)
    rows = max(1, _CHUNK_VALUES // max(1, values.shape[1]))
    total = np.zeros(values.shape[1])
    for start in range(0, values.shape[0], rows):
        total += values[start : start + rows].sum(axis=0, dtype=np.float64)
    mean = total / values.shape[0]
    # Two passes rather than E[x^2] - E[x]^2, which cancels badly when the mean is large.
    squares = np.zeros(values.shape[1])
    for start in range(0, values.shape[0], rows):
        centred = values[start : start + rows].astype(np.float64) - mean
        squares += np.square(centred).sum(axis=0)
    std = np.sqrt(squares / values.shape[0])
    std = np.where(std < _MIN_STD, 1.0, std)
    if not per_feature:
        return Standardization(mean.reshape(()), std.reshape(()))
    return Standardization(mean, std)
