"""MeZO (ZO-SGD): in-place two-point SPSA with seeded directions (optimizers.md §5).

Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023, Alg. 1:
g_t = [L(θ + εz) − L(θ − εz)] / (2ε),  θ ← θ − η_t (g_t z + λ m_wd ⊙ θ).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from curvzo.optim.base import ZerothOrderOptimizer, check_positive


class MeZO(ZerothOrderOptimizer):
    """Memory-efficient ZO-SGD. ``step(closure)`` costs two forward passes and three z passes
    (+ε, −2ε, then the restore fused with the update, bit-identical to doing them apart).

    Args:
        params: tensors or parameter groups (groups may set their own ``lr``/``weight_decay``).
        lr: learning rate η (no default: the paper grid is {1e-6, 1e-7} for full OPT fine-tuning).
        eps: perturbation scale ε (1e-3 for full fine-tuning, MeZO paper Table 16).
        weight_decay: decoupled λ, applied only to groups that set it (MeZO protocol: 0).
        seed: run seed; step t perturbs along z(s_t) with s_t = hash(seed, t).
    """

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, weight_decay: float = 0.0, *, seed: int = 0) -> None:
        self.eps = check_positive("eps", eps)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, seed=seed)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> float:  # type: ignore[override]
        """One MeZO step; returns the mean of the two probe losses (NaN when the step was skipped)."""
        step, seed = self.begin_step(closure)
        eps = self.eps
        loss_plus, loss_minus = self.two_point_probe(closure, seed, eps, restore=False)
        if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
            self.shift(seed, +eps)  # restore only
            self.skip(step, seed, (loss_plus, loss_minus))
            return float("nan")
        projected_grad = (loss_plus - loss_minus) / (2 * eps)
        self.restore_and_update(seed, eps, projected_grad)
        self.record(step=step, seed=seed, projected_grad=projected_grad, lr=self.lrs(), losses=[loss_plus, loss_minus])
        loss = (loss_plus + loss_minus) / 2
        self.last_stats = self.probe_stats(loss, loss_plus, projected_grad)
        return loss
