"""HiZOO: Hessian-informed ZO with a diagonal curvature estimate (optimizers.md §9).

Zhao et al., "Second-Order Fine-Tuning without Pain for LLMs: A Hessian Informed Zeroth-Order
Optimizer" (ICLR 2025); official code Yanjun-Zhao/HiZOO. H (one value per parameter, ones at
start) preconditions both the probe and the step:
  ℓ0 = L(θ),  ℓ± = L(θ ± ε H^{-1/2} z),
  H ← (1−α_t) H + α_t |ℓ+ + ℓ− − 2ℓ0|/(2ε²) · H ⊙ z²,
  θ ← θ − η [(ℓ+ − ℓ−)/(2ε) · H^{-1/2} z + λθ]   (the probe uses the old H, the step the new one).
"""

from __future__ import annotations

from typing import Any

import torch

from curvzo.optim.base import StepContext, ZerothOrderOptimizer
from curvzo.optim.blocks import Block
from curvzo.optim.checks import STATE_DTYPES, check_choice, check_fraction, check_int_at_least, state_buffer
from curvzo.optim.directions import DirectionSampler, give_buffer, take_buffer

SMOOTH_SCHEDULES = ("constant", "step")


class HiZOO(ZerothOrderOptimizer):
    """Three forward passes per step; one diagonal-Hessian buffer per tensor (float32 by default).

    Args:
        params: tensors or parameter groups.
        lr: learning rate η (no default; HiZOO README uses 1e-6 for OPT-13B full fine-tuning).
        eps: perturbation scale ε (μ in the paper); the curvature estimate uses the first group's.
        hessian_smooth: α, the EMA weight of each new curvature sample; 0 makes HiZOO MeZO plus
            one wasted forward pass.
        hessian_smooth_schedule: ``constant`` (α every step) or ``step`` (α until
            ``hessian_smooth_switch_step``, then ``hessian_smooth_final``; the code's
            ``constant_decay1`` is α 1e-6 switching to 1e-8 at step 9800).
        weight_decay: decoupled λ on the groups that set it.
        hessian_dtype: ``fp32`` (ours; increments survive) or ``param`` (the official code: in
            fp16, 1 − 1e-8 rounds to 1 and small increments vanish).
        seed, options: as ``MeZO``.
    """

    passes_per_step = 3  # ℓ0, ℓ+, ℓ− (the official code's 4th, logging-only pass is dropped)

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, hessian_smooth: float = 1e-8,
                 weight_decay: float = 0.0, *, hessian_smooth_schedule: str = "constant",
                 hessian_smooth_final: float = 1e-8, hessian_smooth_switch_step: int = 9800,
                 hessian_dtype: str = "fp32", seed: int = 0, **options: Any) -> None:
        self.hessian_smooth = check_fraction("hessian_smooth", hessian_smooth, allow_zero=True)
        self.hessian_smooth_schedule = check_choice("hessian_smooth_schedule", hessian_smooth_schedule,
                                                    SMOOTH_SCHEDULES)
        self.hessian_smooth_final = check_fraction("hessian_smooth_final", hessian_smooth_final, allow_zero=True)
        self.hessian_smooth_switch_step = check_int_at_least("hessian_smooth_switch_step",
                                                             hessian_smooth_switch_step, 0)
        self.hessian_dtype = check_choice("hessian_dtype", hessian_dtype, STATE_DTYPES)
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay}, seed=seed, **options)
        for block in self.blocks:
            self.state[block.param]["hessian"] = state_buffer(block.param, self.hessian_dtype, fill=1.0)
        self._summaries: tuple | None = None  # (key, (tables, rows)) of _summary_rows

    def smoothing(self, step: int) -> float:
        """α_t of the configured schedule at (0-based) step ``step``."""
        if self.hessian_smooth_schedule == "step" and step >= self.hessian_smooth_switch_step:
            return self.hessian_smooth_final
        return self.hessian_smooth

    # the probe: ℓ0, then ℓ± along H^{-1/2} z with the old H ------------------------------------------------
    def probe(self, ctx: StepContext) -> list[float]:
        if self.probe_mode == "exact":  # three independent passes (one per rank under query parallelism)
            return self.evaluate_queries([ctx.closure, self.exact_query(ctx, +1.0), self.exact_query(ctx, -1.0)])
        loss_center = self.evaluate(ctx.closure)
        return [loss_center, *self.two_point(ctx)]

    def transform(self, ctx: StepContext, block: Block, span: slice, z: torch.Tensor) -> torch.Tensor:
        """H_b^{-1/2} ⊙ z_b on one span (the probe's direction, with H as it is now)."""
        root = _root(self.state[block.param]["hessian"].view(-1)[span])
        z.div_(root)
        give_buffer(root)
        return z

    def reported_loss(self, losses: list[float]) -> float:
        return losses[0]  # ℓ0, the unperturbed loss

    def loss_plus(self, losses: list[float]) -> float:
        return losses[1]

    def projected_grad(self, ctx: StepContext, losses: list[float]) -> float:
        return (losses[1] - losses[2]) / (2 * self.param_groups[0]["eps"])

    # the update: restore with the old H, update H, step along the new H ------------------------------------
    def update(self, ctx: StepContext, losses: list[float]) -> None:
        loss_center, loss_plus, loss_minus = losses
        eps = self.param_groups[0]["eps"]
        curvature = abs(loss_plus + loss_minus - 2 * loss_center) / (2 * eps * eps)
        alpha = self.smoothing(ctx.step)
        tables, rows = self._summary_rows(ctx.blocks, self.directions)

        def rule(ctx: StepContext, block: Block, span: slice, z: torch.Tensor, work: torch.Tensor) -> None:
            h = self.state[block.param]["hessian"].view(-1)[span]
            if ctx.restore:  # θ += ε H_old^{-1/2} z, through a temporary: z itself is needed below
                root = _root(h)
                self.restore_span(ctx, block, torch.div(z, root, out=root), work)
                give_buffer(root)
            lr, wd = block.group["lr"], block.group["weight_decay"]
            if wd:
                work.mul_(1.0 - lr * wd)
            # (1−α)H + (α·c·H)·z² in float32, stored once (rounded if H is kept in fp16/bf16); pooled buffers,
            # not fresh temporaries: this rule did as much arithmetic as drawing z
            updated = h if h.dtype == torch.float32 else self.fp32_copy(h)
            increment = torch.mul(updated, alpha * curvature, out=take_buffer(z.device, z.numel())[: z.numel()])
            square = torch.mul(z, z, out=take_buffer(z.device, z.numel())[: z.numel()])
            increment.mul_(square)
            updated.mul_(1 - alpha).add_(increment)
            row = rows[block.index][span.start]
            torch.sum(updated, 0, out=row[0])
            torch.aminmax(updated, dim=0, out=(row[1], row[2]))
            if updated is not h:
                h.copy_(updated)
                give_buffer(updated)
            give_buffer(square)
            give_buffer(increment)
            root = _root(h)  # of H as stored
            work.add_(z.div_(root), alpha=-lr * self.block_gradient_of(block, loss_plus, loss_minus))
            give_buffer(root)

        self.update_pass(ctx, rule)
        ctx.record["hessian_smooth"] = alpha
        ctx.stats.update({"hizoo/curvature": curvature, "hizoo/smooth": alpha, **self._hessian_summary(tables)})

    def _summary_rows(self, blocks: list[Block],
                      sampler: DirectionSampler) -> tuple[list[torch.Tensor], dict[int, dict[int, torch.Tensor]]]:
        """(tables, rows): one (pieces, 3) float32 table per device for Σ, min and max of H per piece of the update
        pass, allocated before it; rows[block index][span start] is that piece's row. Small tensors returned per
        piece from the drawing threads, between their float32 buffers, kept ~70 MB of freed buffers resident.
        Built once and reused: the pieces depend only on the blocks and the sampler."""
        key = (sampler, tuple(b.index for b in blocks))  # the sampler itself: a replaced one has other pieces
        if self._summaries is None or self._summaries[0] != key:
            self._summaries = key, self._build_summary_rows(blocks, sampler)
        return self._summaries[1]

    def _build_summary_rows(self, blocks: list[Block], sampler: DirectionSampler):
        spans = {b.index: sampler.piece_spans(b.param) for b in blocks}
        sizes: dict[torch.device, int] = {}
        first: dict[int, int] = {}
        for block in blocks:
            first[block.index] = sizes.get(block.param.device, 0)
            sizes[block.param.device] = first[block.index] + len(spans[block.index])
        tables = {device: torch.empty(size, 3, dtype=torch.float32, device=device) for device, size in sizes.items()}
        rows = {b.index: {span.start: tables[b.param.device][first[b.index] + i]
                          for i, span in enumerate(spans[b.index])} for b in blocks}
        return list(tables.values()), rows

    @staticmethod
    def block_gradient_of(block: Block, loss_plus: float, loss_minus: float) -> float:
        return (loss_plus - loss_minus) / (2 * block.group["eps"])

    def _hessian_summary(self, tables: list[torch.Tensor]) -> dict[str, float]:
        """Mean, min and max of H over every element: one device-to-host transfer per device and step."""
        if not any(t.numel() for t in tables):
            return {}
        table = torch.cat([t.double().cpu() for t in tables])
        count = sum(b.param.numel() for b in self.blocks)
        return {"hizoo/h_mean": float(table[:, 0].sum()) / count, "hizoo/h_min": float(table[:, 1].min()),
                "hizoo/h_max": float(table[:, 2].max())}


def _root(h: torch.Tensor) -> torch.Tensor:
    """√H of one span, in float32, in a pooled buffer (return it with ``give_buffer``)."""
    if h.dtype == torch.float32:  # straight into the buffer: no copy pass first
        return torch.sqrt(h, out=take_buffer(h.device, h.numel())[: h.numel()])
    return ZerothOrderOptimizer.fp32_copy(h).sqrt_()
