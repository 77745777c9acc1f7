"""`torch.optim.Adam` and `torch.optim.AdamW` without torch._dynamo (see gossipd.train.functional_optimizer):
the same update, by `torch.optim.adam.adam`, the function both classes' `step` calls with these arguments
(AdamW is Adam with `decoupled_weight_decay`).

One addition, for a peer whose model is averaged with others' (`[train] swarm_batch`): with `swarm_peers`
k > 1, the second moment's noise part is divided by k. Each of k peers on batches of b sees the gradient
noise of a batch of b, so its Adam divides by sqrt(mu^2 + sigma^2 / b) while one model on the k peers' union
batch divides by sqrt(mu^2 + sigma^2 / (k b)): where noise dominates, every peer steps up to sqrt(k) too
short, and mixing, which averages the peers' steps, cannot make that up (SGD is linear in the gradient and
has no such gap). The estimate per coordinate: mu^2 from the bias-corrected first moment, sigma^2 from the
second moment less it, so the denominator is sqrt(m^2 + max(v - m^2, 0) / k). It equals Adam's where the
gradient is steady (v = m^2) and is at least Adam's / sqrt(k), so a step grows by at most sqrt(k).
"""

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
        # Not in the group: torch's state dict stays torch's, and a checkpoint does not carry the swarm's size.
        self.swarm_peers = 1.0

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
        if self.swarm_peers > 1.0:
            self._swarm_step(params, grads, states)
            return
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

    def _swarm_step(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict[str, torch.Tensor]]
    ) -> None:
        """Adam's update (torch's order of operations, weight decay included) with the denominator above."""
        group = self.group
        beta1, beta2 = group["betas"]
        lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
        for state in states:
            state["step"] += 1
        if weight_decay:
            if group["decoupled_weight_decay"]:
                torch._foreach_mul_(params, 1.0 - lr * weight_decay)
            else:
                grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
        first = [state["exp_avg"] for state in states]
        second = [state["exp_avg_sq"] for state in states]
        torch._foreach_lerp_(first, grads, 1.0 - beta1)
        torch._foreach_mul_(second, beta2)
        torch._foreach_addcmul_(second, grads, grads, value=1.0 - beta2)
        # A parameter that missed steps (no gradient) has its own count, so its own bias corrections.
        steps = [float(state["step"]) for state in states]
        mean = torch._foreach_div(first, [1.0 - beta1**step for step in steps])
        moment = torch._foreach_div(second, [1.0 - beta2**step for step in steps])
        # The denominator built in `moment`'s own tensors (fresh from the division): no more copies a step.
        signal = torch._foreach_mul(mean, mean)
        torch._foreach_sub_(moment, signal)
        torch._foreach_clamp_min_(moment, 0.0)
        torch._foreach_mul_(moment, 1.0 / self.swarm_peers)
        torch._foreach_add_(moment, signal)
        torch._foreach_sqrt_(moment)
        torch._foreach_add_(moment, eps)
        torch._foreach_addcdiv_(params, mean, moment, value=-lr)

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
