"""ZO-SGD with heavy-ball momentum (ZO-Bench family, optimizers.md §6).

MeZO's two-point probe gives the scalar g; the per-tensor pseudo-gradient ĝ_b = g·z_b feeds a
momentum buffer one span at a time, so no full-model gradient ever exists:
m ← β m + ĝ,  θ ← θ − η m  (torch SGD convention, no dampening).
"""

from __future__ import annotations

from typing import Any

import torch

from curvzo.optim.base import StepContext, ZerothOrderOptimizer
from curvzo.optim.blocks import Block
from curvzo.optim.checks import STATE_DTYPES, check_choice, check_unit_interval, state_buffer


class ZOSGDMomentum(ZerothOrderOptimizer):
    """Two forward passes per step; one momentum buffer per tensor (float32 by default).

    Args:
        params: tensors or parameter groups (groups may set their own ``momentum``).
        lr: learning rate η (no default; ZO-Bench sweeps 1e-5 … 1e-8 on OPT-13B).
        eps: perturbation scale ε.
        momentum: β; 0 reduces the method to MeZO.
        weight_decay: decoupled λ (θ ← (1 − ηλ)θ before the step), as in our MeZO.
        state_dtype: ``fp32`` (ours) or ``param`` (ZO-Bench keeps the buffer in the weight dtype).
        seed, options: as ``MeZO``.
    """

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0,
                 *, state_dtype: str = "fp32", seed: int = 0, **options: Any) -> None:
        check_unit_interval("momentum", momentum)
        self.state_dtype = check_choice("state_dtype", state_dtype, STATE_DTYPES)
        super().__init__(params, {"lr": lr, "eps": eps, "momentum": momentum, "weight_decay": weight_decay},
                         seed=seed, **options)
        for group in self.param_groups:
            check_unit_interval("momentum", group["momentum"])
        for block in self.blocks:
            self.state[block.param]["momentum_buffer"] = state_buffer(block.param, self.state_dtype)

    def update(self, ctx: StepContext, losses: list[float]) -> None:
        self.update_pass(ctx, lambda ctx, block, span, z, work: self._span(
            ctx, block, span, z, work, self.block_gradient(block, losses)))

    def _span(self, ctx: StepContext, block: Block, span: slice, z: torch.Tensor, work: torch.Tensor,
              projected_grad: float) -> None:
        """Restore and decay, then m ← β m + g z;  θ ← θ − η m on one span."""
        self.restore_span(ctx, block, z, work)
        lr, wd = block.group["lr"], block.group["weight_decay"]
        if wd:
            work.mul_(1.0 - lr * wd)  # decoupled, as in our MeZO
        m = self.state[block.param]["momentum_buffer"].view(-1)[span]
        m.mul_(block.group["momentum"]).add_(z, alpha=projected_grad)
        work.add_(m, alpha=-lr)
