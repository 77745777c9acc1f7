"""`torch.optim.Adam` and `torch.optim.AdamW` without torch._dynamo (see gossipd.train.functional_optimizer):
the same update, by `torch.optim.adam.adam`, the function both classes' `step` calls with these arguments
(AdamW is Adam with `decoupled_weight_decay`)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.adam import adam

from gossipd.train.functional_optimizer import FunctionalOptimizer


class Adam(FunctionalOptimizer):
    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
    ) -> None:
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"found lr {lr}, eps {eps}, weight decay {weight_decay}, expected >= 0")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"found betas {betas}, expected each in [0, 1)")
        group = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "decoupled_weight_decay": decoupled_weight_decay,
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
        if any(grad.is_sparse for grad in grads):
            raise RuntimeError("Adam does not support sparse gradients")
        states = [self.state.get(index) or self._fresh(self.params[index]) for index in indices]
        for index, state in zip(indices, states, strict=True):
            self.state[index] = state
        beta1, beta2 = group["betas"]
        adam(
            params,
            grads,
            [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states],
            [state["max_exp_avg_sq"] for state in states if "max_exp_avg_sq" in state],
            [state["step"] for state in states],
            foreach=group["foreach"],
            capturable=group["capturable"],
            differentiable=group["differentiable"],
            fused=group["fused"],
            grad_scale=None,
            found_inf=None,
            has_complex=any(torch.is_complex(param) for param in params),
            decoupled_weight_decay=group["decoupled_weight_decay"],
            amsgrad=group["amsgrad"],
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )

    def _fresh(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        """A parameter's state before its first step, as torch's Adam makes it: the step count a CPU scalar
        (without `capturable` or `fused`), the averages zeros like the parameter."""
        scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        state = {
            "step": torch.tensor(0.0, dtype=scalar),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
        }
        if self.group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state
