"""`torch.optim.SGD` without torch._dynamo: the same update, by torch's own functional SGD.

Building or stepping any `torch.optim.Optimizer` imports torch._dynamo, and sympy with it, to mark the
optimiser's methods as not compilable: about 70 MB of a daemon's resident memory for a compiler a daemon
never runs. `Sgd` keeps the parameter group and the momentum buffers and hands each step to
`torch.optim.sgd.sgd`, the function `torch.optim.SGD.step` calls with the same arguments (so the update is
torch's, on every device, bit for bit), and reads and writes the same state dict, so a checkpoint taken
with either optimiser resumes with the other.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.sgd import sgd


class Sgd:
    """One parameter group, its hyperparameters kept under torch's names (a loaded state dict sets them)."""

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
        # Every key torch.optim.SGD writes, so its load_state_dict finds the group it expects.
        self.param_groups: list[dict[str, Any]] = [
            {
                "params": list(params),
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
        ]
        self.momentum_buffers: dict[int, torch.Tensor] = {}  # by the parameter's position, as torch numbers them

    @property
    def params(self) -> list[torch.Tensor]:
        params: list[torch.Tensor] = self.param_groups[0]["params"]
        return params

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        indices = [index for index, param in enumerate(self.params) if param.grad is not None]
        if not indices:
            return
        params = [self.params[index] for index in indices]
        grads = [param.grad for param in params if param.grad is not None]
        buffers: list[torch.Tensor | None] = [self.momentum_buffers.get(index) for index in indices]
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
                    self.momentum_buffers[index] = buffer

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.detach_()
                param.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self.params)))
        state = {index: {"momentum_buffer": buffer} for index, buffer in sorted(self.momentum_buffers.items())}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's: the saved hyperparameters replace the group's; ValueError when the groups differ."""
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(saved_groups) != 1:
            raise ValueError("loaded state dict has a different number of parameter groups")
        saved = saved_groups[0]
        if len(saved["params"]) != len(self.params):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of ours")
        position = {saved_id: index for index, saved_id in enumerate(saved["params"])}
        buffers = {}
        for saved_id, values in state_dict["state"].items():
            index = position[saved_id]
            param = self.params[index]
            buffer = values["momentum_buffer"]
            if param.is_floating_point():
                buffers[index] = buffer.to(dtype=param.dtype, device=param.device)
            else:
                buffers[index] = buffer.to(device=param.device)
        saved["params"] = self.params
        self.param_groups = [saved]
        self.momentum_buffers = buffers
