"""MeZO (ZO-SGD): two-point SPSA with seeded directions (optimizers.md §5).

Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023, Alg. 1:
g_t = [L(θ + εz) − L(θ − εz)] / (2ε),  θ ← θ − η_t (g_t z + λ m_wd ⊙ θ).
"""

from __future__ import annotations

from typing import Any

from curvzo.optim.base import StepContext, ZerothOrderOptimizer


class MeZO(ZerothOrderOptimizer):
    """Memory-efficient ZO-SGD: two forward passes and three draws of z per step (two probes, one update).

    Args:
        params: tensors or parameter groups (groups may set their own ``lr``/``eps``/``weight_decay``).
        lr: learning rate η (no default: the paper grid is {1e-6, 1e-7} for full OPT fine-tuning).
        eps: perturbation scale ε (1e-3 for full fine-tuning, MeZO paper Table 16).
        weight_decay: decoupled λ, applied only to groups that set it (MeZO protocol: 0).
        seed: run seed; step t perturbs along z(s_t) with s_t = hash(seed, t).
        **options: ``probe``, ``update_rounding``, ``directions`` (:class:`ZerothOrderOptimizer`).
    """

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, weight_decay: float = 0.0, *, seed: int = 0,
                 **options: Any) -> None:
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay}, seed=seed, **options)

    def update(self, ctx: StepContext, losses: list[float]) -> None:
        """θ_b ← θ_b − η_b (g_b d_b + λ_b θ_b) on every perturbed block, g_b = (ℓ+ − ℓ−)/(2ε_b)."""
        self.update_pass(ctx, lambda ctx, block, span, z, work: self.sgd_span(
            ctx, block, span, z, work, self.block_gradient(block, losses)))
