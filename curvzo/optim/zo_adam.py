"""ZO-Adam / MeZO-Adam: Adam fed with the two-point pseudo-gradient (optimizers.md §6).

MeZO paper §2.2 and App. B.2; ZO-Bench (Zhang et al., ICML 2024). The scalar g from MeZO's
probe times z_b is the per-tensor pseudo-gradient, fed to Adam one chunk at a time:
m ← β₁m + (1−β₁)ĝ, v ← β₂v + (1−β₂)ĝ², θ ← θ − η m̂/(√v̂ + eps), with bias correction.
"""

from __future__ import annotations

import math
from typing import Any

from curvzo.errors import ConfigError
from curvzo.optim.base import STATE_DTYPES, Block, PseudoGradientOptimizer, check_choice, check_positive, state_buffer


class ZOAdam(PseudoGradientOptimizer):
    """Two forward passes per step; two moment buffers per tensor (float32 by default).

    Args:
        params: tensors or parameter groups.
        lr: learning rate η (no default; its grid sits far below first-order Adam's).
        eps: perturbation scale ε of the probe.
        betas: (β₁, β₂) of Adam.
        adam_eps: Adam's denominator epsilon.
        weight_decay: decoupled λ (AdamW style), 0 in the MeZO protocol.
        state_dtype: ``fp32`` (ours) or ``param`` (ZO-Bench keeps moments in the weight dtype).
        seed: run seed for the step seeds.
    """

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 adam_eps: float = 1e-8, weight_decay: float = 0.0, *, state_dtype: str = "fp32", seed: int = 0) -> None:
        self.eps = check_positive("eps", eps)
        betas = tuple(betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {list(betas)!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.adam_eps = check_positive("adam_eps", adam_eps)
        self.state_dtype = check_choice("state_dtype", state_dtype, STATE_DTYPES)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, seed=seed)
        for block in self.blocks:
            state = self.state[block.param]
            state["step"] = 0
            state["exp_avg"] = state_buffer(block.param, self.state_dtype)
            state["exp_avg_sq"] = state_buffer(block.param, self.state_dtype)

    def update_block(self, block: Block, seed: int, projected_grad: float) -> None:
        """θ_b restored and decayed, then Adam with bias correction on the pseudo-gradient g z_b, one chunk at a time."""
        beta1, beta2 = self.betas
        state = self.state[block.param]
        state["step"] += 1
        correction1 = 1 - beta1 ** state["step"]
        root_correction2 = math.sqrt(1 - beta2 ** state["step"])
        flat = block.param.data.view(-1)
        exp_avg, exp_avg_sq = state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1)
        for span, z in self.directions.spans(block.param, seed, block.index):
            self.restore_chunk(flat[span], z, block)
            z.mul_(projected_grad)  # z now holds the pseudo-gradient chunk
            m, v = exp_avg[span], exp_avg_sq[span]
            m.mul_(beta1).add_(z, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(z, z, value=1 - beta2)
            denominator = (v.float().sqrt() / root_correction2).add_(self.adam_eps)
            flat[span].addcdiv_(m.float(), denominator, value=-block.group["lr"] / correction1)
