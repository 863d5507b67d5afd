"""MeZO (ZO-SGD): two-point SPSA with seeded directions (optimizers.md §5).

Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023, Alg. 1:
g_t = [L(θ + εz) − L(θ − εz)] / (2ε),  θ ← θ − η_t (g_t z + λ m_wd ⊙ θ).

``directions_per_step`` = q > 1 averages q two-point estimates per step (ZO-Bench's q-query ZO-SGD,
Zhang et al., ICML 2024): θ ← θ − η (1/q) Σ_j g_j z_j, z_0 from s_t and z_j from query_seed(s_t, j), so
q = 1 is MeZO bit for bit. Its 2q passes are independent: query parallelism runs them on 2q ranks.
"""

from __future__ import annotations

from typing import Any

from curvzo.optim.base import StepContext, ZerothOrderOptimizer
from curvzo.optim.streams import query_seed


class MeZO(ZerothOrderOptimizer):
    """Memory-efficient ZO-SGD: two forward passes and three draws of z per step (two probes, one update).

    Args:
        params: tensors or parameter groups (groups may set their own ``lr``/``eps``/``weight_decay``).
        lr: learning rate η (no default: the paper grid is {1e-6, 1e-7} for full OPT fine-tuning).
        eps: perturbation scale ε (1e-3 for full fine-tuning, MeZO paper Table 16).
        weight_decay: decoupled λ, applied only to groups that set it (MeZO protocol: 0).
        seed: run seed; step t perturbs along z(s_t) with s_t = hash(seed, t).
        directions_per_step: q two-point estimates averaged per step (1: MeZO; needs ``probe=exact`` above 1).
        **options: ``probe``, ``update_rounding``, ``directions`` (:class:`ZerothOrderOptimizer`).
    """

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, weight_decay: float = 0.0, *, seed: int = 0,
                 directions_per_step: int = 1, **options: Any) -> None:
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay}, seed=seed, **options)
        if isinstance(directions_per_step, bool) or not isinstance(directions_per_step, int) or directions_per_step < 1:
            raise ValueError(f"directions_per_step must be an integer >= 1, got {directions_per_step!r}")
        if directions_per_step > 1 and self.probe_mode != "exact":
            raise ValueError("directions_per_step > 1 needs probe=exact (in-place probes of several directions "
                             "would round the weights at every restore)")
        self.directions_per_step = directions_per_step

    def forward_passes_next_step(self) -> int:
        return self.passes_per_step * self.directions_per_step

    def direction_seed(self, ctx: StepContext, j: int) -> int:
        """The seed of direction j of a step: s_t itself for j = 0 (plain MeZO), else query_seed(s_t, j)."""
        return ctx.seed if j == 0 else query_seed(ctx.seed, j)

    def probe(self, ctx: StepContext) -> list[float]:
        """[ℓ+_0, ℓ−_0, ℓ+_1, ℓ−_1, ...]: the 2q passes, independent of each other."""
        if self.directions_per_step == 1:
            return self.two_point(ctx)
        return self.evaluate_queries([self.exact_query(ctx, sign, self.direction_seed(ctx, j))
                                      for j in range(self.directions_per_step) for sign in (+1.0, -1.0)])

    def update(self, ctx: StepContext, losses: list[float]) -> None:
        """θ_b ← θ_b − η_b (g_b d_b + λ_b θ_b) on every perturbed block, g_b = (ℓ+ − ℓ−)/(2ε_b);
        with q directions, one pass per direction with g_{b,j}/q (the decay in the first)."""
        if self.directions_per_step == 1:
            self.update_pass(ctx, lambda ctx, block, span, z, work: self.sgd_span(
                ctx, block, span, z, work, self.block_gradient(block, losses)))
            return
        q = self.directions_per_step
        for j in range(q):
            pair = losses[2 * j:2 * j + 2]

            def rule(ctx, block, span, z, work, j=j, pair=pair) -> None:
                d = self.transform(ctx, block, span, z)
                lr, wd = block.group["lr"], block.group["weight_decay"]
                if j == 0 and wd:
                    work.mul_(1.0 - lr * wd)
                work.add_(d, alpha=-lr * self.block_gradient(block, pair) / q)
            self.update_pass(ctx, rule, seed=self.direction_seed(ctx, j))

    def reported_loss(self, losses: list[float]) -> float:
        if self.directions_per_step == 1:
            return super().reported_loss(losses)
        return sum(losses) / len(losses)  # the mean of every probe

    def projected_grad(self, ctx: StepContext, losses: list[float]) -> float:
        """The mean of the q projected gradients (the first group's ε)."""
        if self.directions_per_step == 1:
            return super().projected_grad(ctx, losses)
        eps = self.param_groups[0]["eps"]
        pairs = range(0, len(losses), 2)
        return sum((losses[i] - losses[i + 1]) / (2 * eps) for i in pairs) / len(pairs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "directions_per_step": self.directions_per_step}
