"""A torch optimiser's bookkeeping without `torch.optim.Optimizer`, whose updates torch's functional API does.

Building or stepping any `torch.optim.Optimizer` imports torch._dynamo, and sympy with it, to mark the
optimiser's methods as not compilable: about 70-80 MB of a daemon's resident memory for a compiler a daemon
never runs. The functions that `torch.optim.SGD.step` and `torch.optim.Adam.step` call (`torch.optim.sgd.sgd`,
`torch.optim.adam.adam`) import none of it. A subclass gathers its per-parameter state and calls one of them
with the arguments torch's own `step` passes, so the update is torch's, on every device, bit for bit; this
base keeps the one parameter group under torch's names and reads and writes torch's state dict, so a
checkpoint taken with either optimiser resumes with the other.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch


class FunctionalOptimizer:
    """One parameter group (every key torch's optimiser writes, so its load_state_dict finds the group it
    expects) and each parameter's state, by the parameter's position as torch numbers them."""

    def __init__(self, params: Iterable[torch.Tensor], group: dict[str, Any]) -> None:
        self.param_groups: list[dict[str, Any]] = [{"params": list(params), **group}]
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def params(self) -> list[torch.Tensor]:
        params: list[torch.Tensor] = self.param_groups[0]["params"]
        return params

    @property
    def group(self) -> dict[str, Any]:
        return self.param_groups[0]

    def with_grad(self) -> list[int]:
        """The positions of the parameters this step updates."""
        return [index for index, param in enumerate(self.params) if param.grad is not None]

    def grads(self, indices: list[int]) -> list[torch.Tensor]:
        grads = [self.params[index].grad for index in indices]
        return [grad for grad in grads if grad is not None]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.detach_()
                param.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        group = {k: v for k, v in self.group.items() if k != "params"}
        group["params"] = list(range(len(self.params)))
        return {"state": {index: dict(values) for index, values in sorted(self.state.items())}, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's: the saved hyperparameters replace the group's; ValueError when the groups differ."""
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(saved_groups) != 1:
            raise ValueError("loaded state dict has a different number of parameter groups")
        saved = saved_groups[0]
        if len(saved["params"]) != len(self.params):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of ours")
        position = {saved_id: index for index, saved_id in enumerate(saved["params"])}
        state: dict[int, dict[str, torch.Tensor]] = {}
        for saved_id, values in state_dict["state"].items():
            index = position[saved_id]
            state[index] = {key: self._placed(key, value, self.params[index]) for key, value in values.items()}
        saved["params"] = self.params
        self.param_groups = [saved]
        self.state = state

    @staticmethod
    def _placed(key: str, value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """Where torch's load_state_dict puts a state tensor: a step count stays as saved (on the CPU, as
        torch keeps it without `capturable` or `fused`), the rest moves to the parameter's device, and takes
        its dtype when floating."""
        if key == "step":
            return value
        if param.is_floating_point():
            return value.to(dtype=param.dtype, device=param.device)
        return value.to(device=param.device)
