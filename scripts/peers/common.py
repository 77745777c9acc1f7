"""Shared by every runner of `make bench-peers`, whatever virtualenv it runs in (gossipd's, hivemind's,
Flower's): it needs only torch, numpy and gossipd's model files (on PYTHONPATH), so every system trains the
very same model on the very same data shards.

The orchestrator (scripts/bench_peers.py) writes the shards as .npz files and the run's start time; runners
save a snapshot of their model every few steps, stamped with the time and the samples processed, and the
orchestrator evaluates every snapshot on MNIST's 10k test set afterwards, so evaluation never slows a run.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gossipd.data.spec import InputSpec
from gossipd.models.cnn import CNNConfig
from gossipd.models.cnn_pytorch_example import CNNPyTorchExampleConfig
from gossipd.models.mlp import MLPConfig
from gossipd.models.registry import build_model
from gossipd.task.schema import ModelSection

SPEC = InputSpec(kind="classification", input_shape=(1, 28, 28), num_classes=10)
MODELS = {
    "cnn": CNNConfig(),
    "mlp": MLPConfig(hidden=(200, 200)),
    "cnn-pytorch-example": CNNPyTorchExampleConfig(),  # the 1.2M-parameter CNN of pytorch/examples' MNIST
}
SEED = 1  # every system starts from the same weights
LR, MOMENTUM, BATCH = 0.05, 0.9, 32


def model(name: str) -> nn.Module:
    return build_model(ModelSection(name=name, options=MODELS[name]), SPEC, SEED)


def optimizer(params: Iterator[nn.Parameter] | list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)


def shard(workdir: Path, peer: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Peer `peer`'s training examples, or all of them (None)."""
    files = sorted((workdir / "data").glob("shard-*.npz")) if peer is None else [workdir / "data" / f"shard-{peer}.npz"]
    xs, ys = [], []
    for path in files:
        with np.load(path) as arrays:
            xs.append(torch.from_numpy(arrays["x"]))
            ys.append(torch.from_numpy(arrays["y"]))
    return torch.cat(xs), torch.cat(ys)


def batches(size: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Shuffled epochs without replacement, forever."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(size, generator=generator)
        for start in range(0, size - batch + 1, batch):
            yield order[start : start + batch]


class Snapshots:
    """Model snapshots for later evaluation: <dir>/<peer>-<samples>-<seconds>.pt."""

    def __init__(self, workdir: Path, peer: int) -> None:
        self.folder = workdir / "snapshots"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.peer = peer
        self.start = float(os.environ.get("BENCH_START", time.time()))

    def save(self, state: dict[str, torch.Tensor], samples: int) -> None:
        seconds = time.time() - self.start
        path = self.folder / f"{self.peer}-{samples:010d}-{seconds:012.3f}.pt"
        torch.save({k: v.detach().clone() for k, v in state.items()}, path)


def report_peak_rss(workdir: Path, peer: int) -> None:
    """Peak resident memory of this process, in MB, appended to <workdir>/rss.jsonl."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with (workdir / "rss.jsonl").open("a") as handle:
        handle.write(json.dumps({"peer": peer, "pid": os.getpid(), "max_rss_mb": peak}) + "\n")
