"""ZO-SGD with heavy-ball momentum (ZO-Bench family, optimizers.md §6).

MeZO's two-point probe gives the scalar g; the per-tensor pseudo-gradient ĝ_b = g·z_b feeds a
momentum buffer one tensor (one chunk) at a time, so no full-model gradient ever exists:
m ← β m + ĝ,  θ ← θ − η m  (torch SGD convention, no dampening).
"""

from __future__ import annotations

from typing import Any

from curvzo.errors import ConfigError
from curvzo.optim.base import STATE_DTYPES, Block, PseudoGradientOptimizer, check_choice, check_positive, state_buffer


class ZOSGDMomentum(PseudoGradientOptimizer):
    """Two forward passes per step; one momentum buffer per tensor (float32 by default).

    Args:
        params: tensors or parameter groups.
        lr: learning rate η (no default; ZO-Bench sweeps 1e-5 … 1e-8 on OPT-13B).
        eps: perturbation scale ε.
        momentum: β; 0 reduces the method to MeZO up to rounding.
        weight_decay: decoupled λ (θ ← (1 − ηλ)θ before the step), as in our MeZO.
        state_dtype: ``fp32`` (ours) or ``param`` (ZO-Bench keeps the buffer in the weight dtype).
        seed: run seed for the step seeds.
    """

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0,
                 *, state_dtype: str = "fp32", seed: int = 0) -> None:
        self.eps = check_positive("eps", eps)
        if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0 <= momentum < 1:
            raise ConfigError(f"optimizer.momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.state_dtype = check_choice("state_dtype", state_dtype, STATE_DTYPES)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, seed=seed)
        for block in self.blocks:
            self.state[block.param]["momentum_buffer"] = state_buffer(block.param, self.state_dtype)

    def update_block(self, block: Block, seed: int, projected_grad: float) -> None:
        """θ_b restored and decayed, then m_b ← β m_b + g z_b;  θ_b ← θ_b − η m_b, one chunk at a time."""
        flat = block.param.data.view(-1)
        buffer = self.state[block.param]["momentum_buffer"].view(-1)
        for span, z in self.directions.spans(block.param, seed, block.index):
            self.restore_chunk(flat[span], z, block)
            m = buffer[span]
            m.mul_(self.momentum).add_(z, alpha=projected_grad)
            flat[span].add_(m, alpha=-block.group["lr"])
