"""HiZOO: Hessian-informed ZO with a diagonal curvature estimate (optimizers.md §9).

Zhao et al., "Second-Order Fine-Tuning without Pain for LLMs: A Hessian Informed Zeroth-Order
Optimizer" (ICLR 2025); official code Yanjun-Zhao/HiZOO. H (one value per parameter, ones at
start) preconditions both the probe and the step:
  ℓ0 = L(θ),  ℓ± = L(θ ± ε H^{-1/2} z),
  H ← (1−α_t) H + α_t |ℓ+ + ℓ− − 2ℓ0|/(2ε²) · H ⊙ z²,
  θ ← θ − η [(ℓ+ − ℓ−)/(2ε) · H^{-1/2} z + λθ]   (the probe uses the old H, the step the new one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from curvzo.optim.base import (
    STATE_DTYPES,
    Block,
    ZerothOrderOptimizer,
    check_choice,
    check_fraction,
    check_nonnegative,
    check_positive,
    state_buffer,
)

SMOOTH_SCHEDULES = ("constant", "step")


class HiZOO(ZerothOrderOptimizer):
    """Three forward passes per step; one diagonal-Hessian buffer per tensor (float32 by default).

    Args:
        params: tensors or parameter groups.
        lr: learning rate η (no default; HiZOO README uses 1e-6 for OPT-13B full fine-tuning).
        eps: perturbation scale ε (μ in the paper).
        hessian_smooth: α, the EMA weight of each new curvature sample; 0 makes HiZOO MeZO plus
            one wasted forward pass.
        hessian_smooth_schedule: ``constant`` (α every step) or ``step`` (α until
            ``hessian_smooth_switch_step``, then ``hessian_smooth_final``; the code's
            ``constant_decay1`` is α 1e-6 switching to 1e-8 at step 9800).
        weight_decay: decoupled λ on the groups that set it.
        hessian_dtype: ``fp32`` (ours; increments survive) or ``param`` (the official code: in
            fp16, 1 − 1e-8 rounds to 1 and small increments vanish).
        seed: run seed for the step seeds.
    """

    forward_passes_per_step = 3  # ℓ0, ℓ+, ℓ− (the official code's 4th, logging-only pass is dropped)

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, hessian_smooth: float = 1e-8,
                 weight_decay: float = 0.0, *, hessian_smooth_schedule: str = "constant",
                 hessian_smooth_final: float = 1e-8, hessian_smooth_switch_step: int = 9800,
                 hessian_dtype: str = "fp32", seed: int = 0) -> None:
        self.eps = check_positive("eps", eps)
        self.hessian_smooth = check_fraction("hessian_smooth", hessian_smooth, allow_zero=True)
        self.hessian_smooth_schedule = check_choice("hessian_smooth_schedule", hessian_smooth_schedule,
                                                    SMOOTH_SCHEDULES)
        self.hessian_smooth_final = check_fraction("hessian_smooth_final", hessian_smooth_final, allow_zero=True)
        self.hessian_smooth_switch_step = int(check_nonnegative("hessian_smooth_switch_step",
                                                                hessian_smooth_switch_step))
        self.hessian_dtype = check_choice("hessian_dtype", hessian_dtype, STATE_DTYPES)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, seed=seed)
        for block in self.blocks:
            self.state[block.param]["hessian"] = state_buffer(block.param, self.hessian_dtype, fill=1.0)

    def _hessian_summary(self, summaries: list[torch.Tensor]) -> dict[str, float]:
        if not summaries:
            return {}
        table = torch.stack(summaries).double()
        count = sum(b.param.numel() for b in self.blocks)
        return {"hizoo/h_mean": float(table[:, 0].sum()) / count, "hizoo/h_min": float(table[:, 1].min()),
                "hizoo/h_max": float(table[:, 2].max())}

    def smoothing(self, step: int) -> float:
        """α_t of the configured schedule at (0-based) step ``step``."""
        if self.hessian_smooth_schedule == "step" and step >= self.hessian_smooth_switch_step:
            return self.hessian_smooth_final
        return self.hessian_smooth

    def preconditioned_shift(self, seed: int, scale: float) -> None:
        """θ_b += scale · H_b^{-1/2} ⊙ z_b for every block, in place."""
        def shift_block(block: Block) -> None:
            flat = block.param.data.view(-1)
            hessian = self.state[block.param]["hessian"].view(-1)
            for span, z in self.directions.spans(block.param, seed, block.index):
                z.div_(hessian[span].float().sqrt())
                flat[span].add_(z, alpha=scale)
        self.for_each_block(shift_block)

    def restore_chunk(self, view: torch.Tensor, z: torch.Tensor, h: torch.Tensor, block: Block) -> None:
        """θ += ε H^{-1/2} z with the old H (the probe's restore), then the decoupled decay, on one chunk."""
        scaled = h.float().sqrt()  # one temporary, reused for z / sqrt(H)
        view.add_(torch.div(z, scaled, out=scaled), alpha=self.eps)
        lr, wd = block.group["lr"], block.group["weight_decay"]
        if wd:
            view.mul_(1.0 - lr * wd)

    def update_blocks(self, seed: int, projected_grad: float, curvature: float, alpha: float) -> list[torch.Tensor]:
        """Restore each chunk, update its H, then step along H_new^{-1/2} z: one draw of z per block,
        bit-identical to restoring every block first. Returns (sum, min, max) of H per chunk."""
        def update_block(block: Block) -> list[torch.Tensor]:
            summaries = []
            flat = block.param.data.view(-1)
            hessian = self.state[block.param]["hessian"].view(-1)
            for span, z in self.directions.spans(block.param, seed, block.index):
                h = hessian[span]
                self.restore_chunk(flat[span], z, h, block)
                # (1−α)H + α·c·H·z² computed in fp32 and stored once (rounded if H is kept in fp16/bf16)
                updated = h.float() * (1 - alpha) + (alpha * curvature) * h.float() * z.square()
                h.copy_(updated)
                z.div_(h.float().sqrt())
                flat[span].add_(z, alpha=-block.group["lr"] * projected_grad)
                summaries.append(torch.stack([updated.sum(), updated.min(), updated.max()]))
            return summaries
        # one (sum, min, max) per chunk, in block order; one device-to-host transfer per step
        rows = [row for rows in self.for_each_block(update_block) for row in rows]
        return list(torch.stack(rows).cpu()) if rows else []

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> float:  # type: ignore[override]
        """One HiZOO step (three forward passes); returns ℓ0, or NaN when the step was skipped."""
        step, seed = self.begin_step(closure)
        eps = self.eps
        loss_center = self.probe(closure)
        self.preconditioned_shift(seed, +eps)
        loss_plus = self.probe(closure)
        self.preconditioned_shift(seed, -2 * eps)
        loss_minus = self.probe(closure)
        losses = (loss_center, loss_plus, loss_minus)
        if not all(math.isfinite(x) for x in losses):
            self.preconditioned_shift(seed, +eps)  # restored with the same (old) H
            self.skip(step, seed, losses)
            return float("nan")
        projected_grad = (loss_plus - loss_minus) / (2 * eps)
        curvature = abs(loss_plus + loss_minus - 2 * loss_center) / (2 * eps * eps)
        alpha = self.smoothing(step)
        summaries = self.update_blocks(seed, projected_grad, curvature, alpha)
        self.record(step=step, seed=seed, projected_grad=projected_grad, lr=self.lrs(), losses=list(losses),
                    hessian_smooth=alpha)
        self.last_stats = {
            **self.probe_stats(loss_center, loss_plus, projected_grad),
            "hizoo/curvature": curvature,
            "hizoo/smooth": alpha,
            **self._hessian_summary(summaries),
        }
        return loss_center
