"""Shared fixtures: the repository's paths and the shared datasets (tests skip cleanly without them)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
DEFAULT_TASK = REPO / "gossipd" / "embedded" / "default.toml"


@pytest.fixture
def shared_mnist() -> Path:
    path = SHARED_DATASETS / "mnist"
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("full MNIST is not in ../shared/datasets/mnist")
    return path
