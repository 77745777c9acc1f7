"""`torch.optim.SGD` without torch._dynamo (see gossipd.train.functional_optimizer): the same update, by
`torch.optim.sgd.sgd`, the function `torch.optim.SGD.step` calls with the same arguments."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.sgd import sgd

from gossipd.train.functional_optimizer import FunctionalOptimizer


class Sgd(FunctionalOptimizer):
    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"found lr {lr}, momentum {momentum}, weight decay {weight_decay}, expected >= 0")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs a momentum above 0")
        group = {
            "lr": lr,
            "momentum": momentum,
            "dampening": 0.0,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": False,
            "foreach": None,
            "differentiable": False,
            "fused": None,
        }
        super().__init__(params, group)

    @torch.no_grad()
    def step(self) -> None:
        group = self.group
        indices = self.with_grad()
        if not indices:
            return
        params = [self.params[index] for index in indices]
        grads = self.grads(indices)
        buffers: list[torch.Tensor | None] = [self.state.get(index, {}).get("momentum_buffer") for index in indices]
        sgd(
            params,
            grads,
            buffers,
            has_sparse_grad=any(grad.is_sparse for grad in grads),
            foreach=group["foreach"],
            fused=group["fused"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
        )
        if group["momentum"] != 0:
            for index, buffer in zip(indices, buffers, strict=True):
                if buffer is not None:  # created by the first step, updated in place after
                    self.state[index] = {"momentum_buffer": buffer}
