"""ZO-Adam / MeZO-Adam: Adam fed with the two-point pseudo-gradient (optimizers.md §6).

MeZO paper §2.2 and App. B.2; ZO-Bench (Zhang et al., ICML 2024). The scalar g from MeZO's
probe times z_b is the per-tensor pseudo-gradient, fed to Adam one span at a time:
m ← β₁m + (1−β₁)ĝ, v ← β₂v + (1−β₂)ĝ², θ ← θ − η m̂/(√v̂ + eps), with bias correction.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from curvzo.errors import ConfigError
from curvzo.optim.base import StepContext, ZerothOrderOptimizer
from curvzo.optim.blocks import Block
from curvzo.optim.checks import STATE_DTYPES, check_choice, check_positive, state_buffer


def _check_betas(betas: Any) -> tuple[float, float]:
    betas = tuple(betas)
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                  for b in betas):
        raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {list(betas)!r}")
    return float(betas[0]), float(betas[1])


class ZOAdam(ZerothOrderOptimizer):
    """Two forward passes per step; two moment buffers per tensor (float32 by default).

    Args:
        params: tensors or parameter groups (groups may set their own ``betas``/``adam_eps``).
        lr: learning rate η (no default; its grid sits far below first-order Adam's).
        eps: perturbation scale ε of the probe.
        betas: (β₁, β₂) of Adam.
        adam_eps: Adam's denominator epsilon.
        weight_decay: decoupled λ (AdamW style), 0 in the MeZO protocol.
        state_dtype: ``fp32`` (ours) or ``param`` (ZO-Bench keeps moments in the weight dtype).
        seed, options: as ``MeZO``.
    """

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 adam_eps: float = 1e-8, weight_decay: float = 0.0, *, state_dtype: str = "fp32", seed: int = 0,
                 **options: Any) -> None:
        betas = _check_betas(betas)
        check_positive("adam_eps", adam_eps)
        self.state_dtype = check_choice("state_dtype", state_dtype, STATE_DTYPES)
        super().__init__(params, {"lr": lr, "eps": eps, "betas": betas, "adam_eps": adam_eps,
                                  "weight_decay": weight_decay}, seed=seed, **options)
        for group in self.param_groups:
            group["betas"] = _check_betas(group["betas"])
            check_positive("adam_eps", group["adam_eps"])
        for block in self.blocks:
            state = self.state[block.param]
            state["step"] = 0
            state["exp_avg"] = state_buffer(block.param, self.state_dtype)
            state["exp_avg_sq"] = state_buffer(block.param, self.state_dtype)

    def update(self, ctx: StepContext, losses: list[float]) -> None:
        for block in ctx.blocks:
            self.state[block.param]["step"] += 1
        self.update_pass(ctx, lambda ctx, block, span, z, work: self._span(
            ctx, block, span, z, work, self.block_gradient(block, losses)))

    def _span(self, ctx: StepContext, block: Block, span: slice, z: torch.Tensor, work: torch.Tensor,
              projected_grad: float) -> None:
        """Restore and decay, then Adam with bias correction on the pseudo-gradient g z, one span."""
        self.restore_span(ctx, block, z, work)
        group, state = block.group, self.state[block.param]
        lr, wd = group["lr"], group["weight_decay"]
        if wd:
            work.mul_(1.0 - lr * wd)  # decoupled, as in our MeZO
        beta1, beta2 = group["betas"]
        correction1 = 1 - beta1 ** state["step"]
        root_correction2 = math.sqrt(1 - beta2 ** state["step"])
        z.mul_(projected_grad)  # z now holds the pseudo-gradient span
        m, v = state["exp_avg"].view(-1)[span], state["exp_avg_sq"].view(-1)[span]
        m.mul_(beta1).add_(z, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(z, z, value=1 - beta2)
        denominator = (v.float().sqrt() / root_correction2).add_(group["adam_eps"])
        work.addcdiv_(m.float(), denominator, value=-lr / correction1)
