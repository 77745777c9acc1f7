"""Swarm-level measures computed from peers' models."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


def consensus_distance(models: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """sqrt(mean_i ‖x_i − x̄‖²) over the given tensors: how far peers' models are from their average."""
    if len(models) < 2:
        return 0.0
    total = 0.0
    for name in models[0]:
        stacked = torch.stack([m[name].detach().float().cpu() for m in models])  # (N, *shape)
        total += float(((stacked - stacked.mean(dim=0)) ** 2).sum())
    return math.sqrt(total / len(models))


def distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """‖a − b‖ over the tensors both name."""
    return math.sqrt(sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in a if k in b))
