"""DiZO: MeZO plus a periodic per-layer divergence projection learned with ZO probes (optimizers.md §7).

Tan et al., "Harmony in Divergence" (NeurIPS 2025); official code Skilteee/DiZO. Every κ steps
each projected tensor's displacement from the pretrained weights, θ_ℓ − A_ℓ, is rescaled by a
ratio γ_ℓ/D_ℓ ∈ [1−τ, 1+τ] (D_ℓ = ‖θ_ℓ − A_ℓ‖_F). The γ_ℓ start at D_ℓ and take J two-point ZO
steps, one scalar probe u_ℓ per tensor, each on a fresh training minibatch.

Which tensors are projected: the official code projects ``self_attn.k_proj.weight`` and
``self_attn.v_proj.weight`` in full fine-tuning and every LoRA tensor with LoRA. Our general rule
matches name components, so it carries over to other architectures (see ``projected_names``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from curvzo.errors import ConfigError
from curvzo.optim import rounding
from curvzo.optim.base import StepContext
from curvzo.optim.blocks import Block
from curvzo.optim.checks import check_bool, check_choice, check_fraction, check_int_at_least, check_positive
from curvzo.optim.mezo import MeZO
from curvzo.optim.streams import Stream, stream_seed
# key and value projections by module name: OPT/Llama/Mistral/Qwen (k_proj, v_proj), BERT/RoBERTa (key, value), T5 (k, v)
KEY_VALUE_NAMES = ("k_proj", "v_proj", "key", "value", "k", "v")
ANCHOR_DEVICES = ("param", "cpu")


def projected_names(names: Sequence[str], shapes: Sequence[torch.Size], projected: str | Sequence[str]) -> list[str]:
    """The tensor names DiZO projects: a tensor is projected when it is a matrix (≥ 2-D) and one of the
    dot-separated components of its name equals a pattern.

    ``projected="auto"``: with LoRA tensors present (a component starting ``lora_``) every LoRA matrix,
    as the official code does in LoRA mode; otherwise the key and value projections
    (``KEY_VALUE_NAMES``). Fused QKV matrices (GPT-2 ``c_attn``) need an explicit list.
    """
    if projected == "auto":
        if any(part.startswith("lora_") for name in names for part in name.split(".")):
            return [n for n, s in zip(names, shapes) if len(s) >= 2 and any(p.startswith("lora_") for p in n.split("."))]
        patterns = set(KEY_VALUE_NAMES)
    elif isinstance(projected, str):
        raise ConfigError(f"optimizer.projected must be 'auto' or a list of name components, got {projected!r}")
    else:
        patterns = {str(p) for p in projected}
    return [n for n, s in zip(names, shapes) if len(s) >= 2 and patterns & set(n.split("."))]


class DiZO(MeZO):
    """MeZO steps; every ``interval`` steps, J ZO iterations on per-tensor displacement ratios.

    Forward passes: 2 per step plus 2J at every projection (2 + 2J/κ on average). Persistent
    state: an anchor copy of the projected tensors only, in their dtype, on ``anchor_device``.
    With the exact probe the ratio probes are materialised module by module like every other probe,
    and only the final rescale writes θ (rounded as ``update_rounding`` says).

    Args:
        params: named tensors (``(name, tensor)`` pairs or groups with ``param_names``) so that
            ``projected`` can select by name; unnamed tensors are called ``param<i>``.
        lr, eps, weight_decay, seed, options: as ``MeZO``.
        interval: κ, steps between projections.
        inner_iterations: J, ZO iterations per projection.
        projection_eps: ε_p, the probe scale of the ratios.
        projection_step_size: s_p, the step size of the ratios.
        clip_range: τ, ratios stay in [1−τ, 1+τ].
        projected: ``auto`` or a list of name components (e.g. ``[q_proj, v_proj]``).
        anchor_device: ``param`` (beside the weights) or ``cpu`` (saves accelerator memory).
        freeze_embeddings: leave the first tensor (the token embedding) untouched, as the
            official code does in full fine-tuning (off: the common trainable set).
    """

    uses_extra_batches = True  # the projection's probes draw minibatches from a second data order

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, weight_decay: float = 0.0, *, seed: int = 0,
                 interval: int = 50, inner_iterations: int = 10, projection_eps: float = 0.1,
                 projection_step_size: float = 2.0, clip_range: float = 0.2, projected: str | Sequence[str] = "auto",
                 anchor_device: str = "param", freeze_embeddings: bool = False, **options: Any) -> None:
        self.interval = check_int_at_least("interval", interval, 1)
        self.inner_iterations = check_int_at_least("inner_iterations", inner_iterations, 1)
        self.projection_eps = check_positive("projection_eps", projection_eps)
        self.projection_step_size = check_positive("projection_step_size", projection_step_size)
        self.clip_range = check_fraction("clip_range", clip_range, allow_zero=True)
        self.anchor_device = check_choice("anchor_device", anchor_device, ANCHOR_DEVICES)
        check_bool("freeze_embeddings", freeze_embeddings)
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, seed=seed, **options)
        if freeze_embeddings and self.blocks:
            self.blocks = self.blocks[1:]  # block indices (hence every z) stay as they were
        chosen = set(projected_names([b.name for b in self.blocks], [b.param.shape for b in self.blocks], projected))
        named = any(g.get("param_names") for g in self.param_groups)
        if named and not chosen:
            raise ConfigError(f"optimizer.projected={_show(projected)} matches no trainable matrix; "
                              f"name components look like {self.blocks[0].name if self.blocks else '(none)'!r}")
        self.projected_blocks = [b for b in self.blocks if b.name in chosen]
        for block in self.projected_blocks:
            device = "cpu" if self.anchor_device == "cpu" else block.param.device
            self.state[block.param]["anchor"] = block.param.detach().to(device, copy=True)
        self.projections = 0
        self.skipped_projection_probes = 0
        self._current = torch.ones(len(self.projected_blocks), dtype=torch.float64)

    def forward_passes_next_step(self) -> int:
        """2, plus 2J when the next step ends with a projection."""
        return 2 + (2 * self.inner_iterations if self._projects(self.steps_taken) else 0)

    def _projects(self, step: int) -> bool:
        return bool(self.projected_blocks) and (step + 1) % self.interval == 0

    def finish(self, ctx: StepContext, losses: list[float]) -> None:
        """The divergence projection when the step count reaches a multiple of κ; its probe losses join
        the step's (in call order, for ``replay_from_losses``)."""
        if not self._projects(ctx.step):
            return
        ratios, probe_losses = self.project(ctx)
        ctx.record["projection"] = {"ratios": ratios, "losses": probe_losses}
        losses.extend(probe_losses)
        if ratios:  # empty when no projected tensor has moved yet
            ctx.stats.update({
                "dizo/ratio_mean": sum(ratios) / len(ratios),
                "dizo/ratio_min": min(ratios),
                "dizo/ratio_max": max(ratios),
                "dizo/projections": self.projections,
                "dizo/skipped_probes": self.skipped_projection_probes,
            })

    def project(self, ctx: StepContext) -> tuple[list[float], list[float]]:
        """J ZO iterations on the ratios, then apply them; returns (final ratios, probe losses)."""
        measured = [(b, self.displacement_norm(b)) for b in self.projected_blocks]
        blocks = [b for b, norm in measured if norm > 0]  # an unmoved tensor has no direction to rescale
        if not blocks:
            return [], []
        norms = torch.tensor([norm for _, norm in measured if norm > 0], dtype=torch.float64)
        gamma = norms.clone()
        generator = torch.Generator().manual_seed(stream_seed(self.seed, Stream.DIZO_PROJECTION, ctx.step))
        tau, eps_p = self.clip_range, self.projection_eps
        losses: list[float] = []
        self._current = torch.ones_like(norms)  # the ratio the stored weights hold now (in-place probes move it)
        for _ in range(self.inner_iterations):
            closure = next(self.extra_batches) if self.extra_batches is not None else ctx.closure
            u = torch.randn(len(blocks), generator=generator, dtype=torch.float64)
            u = torch.maximum(torch.minimum(u, tau * norms / eps_p), -tau * norms / eps_p)
            loss_plus = self.ratio_loss(closure, blocks, (gamma + eps_p * u) / norms)
            loss_minus = self.ratio_loss(closure, blocks, (gamma - eps_p * u) / norms)
            if self.probe_mode == "inplace":
                self.set_ratios(blocks, torch.ones_like(norms))  # SET_RATIO(1), as the official code
            losses += [loss_plus, loss_minus]
            if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
                self.skipped_projection_probes += 1
                continue
            slope = (loss_plus - loss_minus) / (2 * eps_p)
            gamma = torch.clamp(gamma - self.projection_step_size * norms * slope * u, (1 - tau) * norms,
                                (1 + tau) * norms)
        final = gamma / norms
        if self.probe_mode == "exact":  # the one write of the projection
            seed = stream_seed(ctx.seed, Stream.DIZO_PROJECTION)
            for block, now, ratio in zip(blocks, self._current.tolist(), final.tolist()):
                rounding.store(block.param.data.view(-1), self._rescaled(block, ratio / now).view(-1),
                               self.rounding_for(block), seed, block.index, 0, self.direction_workers)
        else:
            self.set_ratios(blocks, final)
        self.projections += 1
        return final.tolist(), losses

    def ratio_loss(self, closure, blocks: list[Block], ratios: torch.Tensor) -> float:
        """L with θ_ℓ replaced by A_ℓ + r_ℓ(θ_ℓ − A_ℓ): materialised module by module (exact), or
        written into θ, where the next probe or the final ratio rescales it again (inplace)."""
        if self.probe_mode == "inplace":
            self.set_ratios(blocks, ratios)
            return self.evaluate(closure)
        by_index = dict(zip((b.index for b in blocks), ratios.tolist()))

        def write(pairs: list[tuple[Block, torch.Tensor]]) -> None:
            for block, out in pairs:
                out.copy_(self._rescaled(block, by_index[block.index]).view(-1))  # float32 math, rounded once

        return self.evaluate(lambda: self.prober.loss(closure, blocks, write))

    def set_ratios(self, blocks: list[Block], target: torch.Tensor) -> None:
        """In place: θ_ℓ ← A_ℓ + (target/current)(θ_ℓ − A_ℓ), one float32 rescale per tensor written back once."""
        for block, now, new in zip(blocks, self._current.tolist(), target.tolist()):
            if new != now:
                block.param.data.copy_(self._rescaled(block, new / now))
        self._current = target.clone()

    def displacement_norm(self, block: Block) -> float:
        """D_ℓ = ‖θ_ℓ − A_ℓ‖_F, in float32."""
        anchor = self.state[block.param]["anchor"].to(block.param.device, torch.float32)
        return float(torch.linalg.vector_norm(block.param.detach().float() - anchor))

    def _rescaled(self, block: Block, ratio: float) -> torch.Tensor:
        """A + r(θ − A) in float32, θ as stored."""
        anchor = self.state[block.param]["anchor"].to(block.param.device, torch.float32)
        return anchor + ratio * (block.param.detach().float() - anchor)

    def describe(self) -> dict[str, Any]:
        total = sum(b.param.numel() for b in self.blocks)
        projected = sum(b.param.numel() for b in self.projected_blocks)
        return {
            **super().describe(),
            "projected_tensors": [b.name for b in self.projected_blocks],
            "anchor_numel": projected,
            "anchor_fraction_of_trainable": projected / max(total, 1),
            "projections": self.projections,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self.anchor_device == "cpu":
            for block in self.projected_blocks:
                self.state[block.param]["anchor"] = self.state[block.param]["anchor"].cpu()


def _show(projected: Any) -> str:
    return projected if isinstance(projected, str) else "[" + ", ".join(map(str, projected)) + "]"
