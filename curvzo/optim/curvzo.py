"""CurvZO: curvature-guided sparse ZO with Horvitz–Thompson correction and an adaptive budget.

Wang, Chen, Tang, "CurvZO: Adaptive Curvature-Guided Sparse Zeroth-Order Optimization for Efficient
LLM Fine-Tuning" (arXiv 2603.21725). Normative spec: optimizers.md §11. Each step samples a subset
of blocks (trainable tensors) with probabilities pi ∝ sqrt(S) water-filled to the budget, runs
MeZO's two-point probe on the sampled blocks only, updates them with the HT factor 1/pi, feeds
the scalar feedback back into the per-block curvature score S, and every T_B steps moves the
budget fraction f towards what the spread of S asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from curvzo.errors import ConfigError
from curvzo.optim.base import StepContext, ZerothOrderOptimizer
from curvzo.optim.block_sampling import (
    adaptive_budget,
    fixed_size_sample,
    inclusion_probabilities,
    poisson_sample,
    predicted_moment,
    support_and_entropy,
    variance_optimal,
)
from curvzo.optim.blocks import Block
from curvzo.optim.checks import (
    check_bool,
    check_choice,
    check_fraction,
    check_nonnegative,
    check_positive,
)
from curvzo.optim.energy_estimate import SelectionContrast
from curvzo.optim.streams import Stream, stream_seed


@dataclass(frozen=True)
class Draw:
    """One step's block draw: the inclusion probabilities, the chosen block indices, the budget used."""

    pi: torch.Tensor
    chosen: list[int]
    budget_f: float


_CHOICES = {
    "sampling": ("curvature", "uniform", "variance_optimal"),
    "design": ("poisson", "fixed_size"),
    "score": ("delta_sq", "normalized_abs", "regression"),
    "update_unselected": ("hold", "decay"),
    "budget_mode": ("adaptive", "fixed"),
    "entropy_term": ("one_minus_h", "h"),
    "budget_unit": ("tensors", "numel"),
}


class CurvZO(ZerothOrderOptimizer):
    """Sparse two-point ZO over sampled blocks; see the module docstring and optimizers.md §11.

    Every keyword mirrors ``conf/optimizer/curvzo.yaml``, where each default carries its source.
    Optimizer state (S, f, G) is float32 / Python floats whatever the model dtype. A step whose
    Poisson draw selects no block makes no forward pass and no update and is counted
    (``zo/empty_steps``): E[m_b/π_b] = 1 keeps holding, so the estimate stays unbiased (§11.3).
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        *,
        seed: int = 0,
        sampling: str = "curvature",
        sampling_power: float = 0.5,
        design: str = "poisson",
        score: str = "delta_sq",
        score_normalize_numel: bool = False,
        score_init: float = 0.01,
        score_beta: float = 0.1,
        score_floor: float = 1e-12,
        update_unselected: str = "hold",
        global_beta: float = 0.1,
        ht_correction: bool = True,
        explore: float = 0.1,
        pi_floor: float = 0.0,
        variance_optimal_floor: float = 0.05,
        variance_optimal_ceiling: float = 0.9,
        budget_mode: str = "adaptive",
        fixed_fraction: float = 0.4,
        budget_init: float = 0.4,
        budget_min: float = 0.1,
        budget_max: float = 0.8,
        budget_every: int = 20,
        budget_alpha: float = 0.7,
        budget_beta: float = 0.1,
        entropy_term: str = "one_minus_h",
        budget_unit: str = "tensors",
        fuse_restore_update: bool = False,
        **options: Any,
    ) -> None:
        for name, value in (("sampling", sampling), ("design", design), ("score", score),
                            ("update_unselected", update_unselected), ("budget_mode", budget_mode),
                            ("entropy_term", entropy_term), ("budget_unit", budget_unit)):
            check_choice(name, value, _CHOICES[name])
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay}, seed=seed, **options)
        self.sampling, self.design, self.score = sampling, design, score
        self.update_unselected, self.budget_mode = update_unselected, budget_mode
        self.entropy_term, self.budget_unit = entropy_term, budget_unit
        self.sampling_power = check_positive("sampling_power", sampling_power)
        self.score_normalize_numel = check_bool("score_normalize_numel", score_normalize_numel)
        self.score_beta = check_fraction("score_beta", score_beta)
        self.score_floor = check_positive("score_floor", score_floor)
        self.global_beta = check_fraction("global_beta", global_beta)
        self.ht_correction = check_bool("ht_correction", ht_correction)
        self.explore = check_fraction("explore", explore, allow_zero=True)
        self.pi_floor = check_fraction("pi_floor", pi_floor, allow_zero=True)
        self.variance_optimal_floor = check_fraction("variance_optimal_floor", variance_optimal_floor)
        self.variance_optimal_ceiling = check_fraction("variance_optimal_ceiling", variance_optimal_ceiling)
        if self.variance_optimal_floor > self.variance_optimal_ceiling:
            raise ConfigError(f"optimizer.variance_optimal_floor ({variance_optimal_floor}) must not exceed "
                              f"optimizer.variance_optimal_ceiling ({variance_optimal_ceiling})")
        if sampling == "variance_optimal" and score != "regression":
            raise ConfigError(f"optimizer.sampling=variance_optimal reads each block's gradient energy from "
                              f"score=regression, got score={score}")
        self.budget_min = check_fraction("budget_min", budget_min)
        self.budget_max = check_fraction("budget_max", budget_max)
        if self.budget_min > self.budget_max:
            raise ConfigError(f"optimizer.budget_min ({budget_min}) must not exceed optimizer.budget_max ({budget_max})")
        self.budget_every = int(check_positive("budget_every", budget_every))
        self.budget_alpha = check_fraction("budget_alpha", budget_alpha, allow_zero=True)
        self.budget_beta = check_fraction("budget_beta", budget_beta, allow_zero=True)
        self.fuse_restore_update = check_bool("fuse_restore_update", fuse_restore_update)
        if budget_mode == "fixed":
            self.fraction = check_fraction("fixed_fraction", fixed_fraction)
        else:
            self.fraction = check_fraction("budget_init", budget_init)
        if not self.blocks:
            raise ConfigError("CurvZO needs at least one trainable parameter")
        check_nonnegative("score_init", score_init)
        # fp32 state, O(number of blocks): S per block; numel per block for the coordinate budget
        self.scores = torch.full((len(self.blocks),), float(score_init), dtype=torch.float32)
        self.numel = torch.tensor([b.param.numel() for b in self.blocks], dtype=torch.float64)
        self.delta_ema = 1e-8  # G, only for score=normalized_abs (port's initial value)
        # ours, not the paper's: G_b = ‖∇_b L‖² from the selection contrast of Δ² (spec §11.10). It is the score
        # of score=regression and the input of sampling=variance_optimal, and every arm logs what it predicts
        self.contrast = SelectionContrast(len(self.blocks), self.score_beta)
        self._sampler = torch.Generator(device="cpu")

    # probabilities and draws ---------------------------------------------------------------------
    def inclusion_probabilities(self) -> torch.Tensor:
        """pi_b for the next step (float64), from the current scores and budget fraction.

        sampling=variance_optimal ignores the budget: every π costs two forward passes, so π minimises the
        predicted M = E[ĝᵀAĝ] of the step (block_sampling.variance_optimal) for Ĝ_b = S_b and, the curvature
        being unknown, A = I (T_b = d_b, H_b = Ĝ_b); the ceiling below 1 keeps every block's contrast observable.
        """
        if self.sampling == "variance_optimal":
            energy = self.contrast.energy().to(torch.float64)
            return variance_optimal(energy, self.numel, energy, floor=self.variance_optimal_floor,
                                    ceiling=self.variance_optimal_ceiling)
        return inclusion_probabilities(
            self.scores, self.fraction, sampling=self.sampling, power=self.sampling_power,
            score_floor=self.score_floor, explore=self.explore, pi_floor=self.pi_floor,
            numel=self.numel if self.budget_unit == "numel" else None,
        )

    def sample_blocks(self, pi: torch.Tensor, step: int) -> torch.Tensor:
        """The selection mask of step ``step``: a pure function of (seed, step, pi); may be empty."""
        self._sampler.manual_seed(stream_seed(self.seed, Stream.BLOCK_SAMPLER, step))
        draw = poisson_sample if self.design == "poisson" else fixed_size_sample
        return draw(pi, self._sampler)

    # the step: plan (draw blocks), two-point probe on them, HT-weighted update, scores and budget ----------
    def plan(self, ctx: StepContext) -> bool:
        pi = self.inclusion_probabilities()
        chosen = [int(i) for i in torch.nonzero(self.sample_blocks(pi, ctx.step)).flatten()]
        ctx.blocks = [self.blocks[i] for i in chosen]
        ctx.plan = Draw(pi, chosen, self.fraction)
        ctx.record.update(budget_f=self.fraction, num_selected=len(chosen))
        if chosen:
            return True
        self._move_budget()  # the schedule counts steps, empty ones included; S is unchanged
        ctx.stats.update(self._diagnostics(ctx.plan))
        return False

    def update(self, ctx: StepContext, losses: list[float]) -> None:
        draw: Draw = ctx.plan
        pi_chosen = draw.pi[draw.chosen]
        ht = (1.0 / pi_chosen) if self.ht_correction else torch.ones_like(pi_chosen)
        factors = dict(zip(draw.chosen, ht.tolist()))

        def rule(ctx: StepContext, block: Block, span: slice, z: torch.Tensor, work: torch.Tensor) -> float:
            energy = float(torch.dot(z, z))  # this piece's share of ‖z_b‖², from the update's own draw
            coefficient = self.block_gradient(block, losses) * factors[block.index]
            if self.fuse_restore_update and ctx.restore:  # the port's rounding: one add of (ε − ηc/π)·z
                lr, wd = block.group["lr"], block.group["weight_decay"]
                keep = 1.0 - lr * wd
                if wd:
                    work.mul_(keep)  # on θ − εz; the +ε restore below is scaled to match
                work.add_(z, alpha=block.group["eps"] * keep - lr * coefficient)
                return energy
            self.sgd_span(ctx, block, span, z, work, coefficient)
            return energy

        pieces = self.update_pass(ctx, rule)
        energy = torch.tensor([sum(pieces[i]) for i in draw.chosen], dtype=torch.float64)  # summed in piece order
        delta = self.projected_grad(ctx, losses)
        self._update_scores(draw.chosen, energy, pi_chosen, delta)
        self._move_budget()
        ctx.stats.update(self._diagnostics(draw, ht))

    def _move_budget(self) -> None:
        """Every T_B steps the adaptive budget moves towards what the spread of S asks for (Eq. 20)."""
        if self.budget_mode == "adaptive" and self.steps_taken % self.budget_every == 0:
            self.fraction = adaptive_budget(self.scores, self.fraction, budget_min=self.budget_min,
                                            budget_max=self.budget_max, alpha=self.budget_alpha,
                                            beta=self.budget_beta, entropy_term=self.entropy_term)

    def _update_scores(self, chosen: list[int], energy: torch.Tensor, pi: torch.Tensor, delta: float) -> None:
        """EMA of the per-block curvature score from this step's scalar feedback (Eq. 7 or the port's), or
        the regression estimate of each block's gradient energy."""
        selected = torch.zeros(len(self.blocks), dtype=torch.bool)
        selected[chosen] = True
        self.contrast.observe(selected, delta * delta)
        if self.score == "regression":
            self.scores = self.contrast.energy().clamp(min=self.score_floor)
            return
        if self.score == "delta_sq":
            sample = delta * delta * energy / energy.sum()
        else:
            self.delta_ema = (1 - self.global_beta) * self.delta_ema + self.global_beta * abs(delta)
            weighted = energy / pi.square()
            sample = (abs(delta) / (self.delta_ema + 1e-12)) * weighted / weighted.sum()
        if self.score_normalize_numel:
            sample = sample / self.numel[chosen]
        if self.update_unselected == "decay":
            self.scores.mul_(1 - self.score_beta)
        else:
            self.scores[chosen] *= 1 - self.score_beta
        self.scores[chosen] += (self.score_beta * sample).float()

    def _diagnostics(self, draw: Draw, factors: torch.Tensor | None = None) -> dict[str, float]:
        """What tells a researcher whether sampling helps: budget and support of S, the HT factors applied,
        how S follows block size, and M(π)/M(MeZO) predicted from the contrast estimate Ĝ (A = I)."""
        pi, chosen = draw.pi, draw.chosen
        d_eff, entropy = support_and_entropy(self.scores)
        selected_numel = float(self.numel[chosen].sum()) if chosen else 0.0
        stats = {
            "curvzo/budget_f": draw.budget_f,
            "curvzo/expected_selected": float(pi.sum()),
            "curvzo/num_selected": len(chosen),
            "curvzo/selected_numel_frac": selected_numel / float(self.numel.sum()),
            "curvzo/d_eff": d_eff,
            "curvzo/entropy": entropy,
            "curvzo/pi_min": float(pi.min()),
            "curvzo/pi_max": float(pi.max()),
            "curvzo/max_inv_pi_selected": float(1.0 / pi[chosen].min()) if chosen else 0.0,
            "zo/empty_steps": self.empty_steps,
        }
        if factors is not None and factors.numel():  # the factor each selected block's step was scaled by
            stats.update({"curvzo/ht_factor_mean": float(factors.mean()),
                          "curvzo/ht_factor_median": float(factors.median()),
                          "curvzo/ht_factor_max": float(factors.max())})
        correlation = _log_correlation(self.scores, self.numel)
        if correlation is not None:  # Eq. 7's S follows block size (spec §11.10): near 1 means S says little about G
            stats["curvzo/score_size_log_corr"] = correlation
        energy = self.contrast.energy().to(torch.float64)
        if self.ht_correction and float(energy.sum()) > 0:
            ones = torch.ones_like(pi)
            stats["curvzo/predicted_variance_ratio_vs_mezo"] = (
                predicted_moment(pi, energy, self.numel, energy) / predicted_moment(ones, energy, self.numel, energy))
        return stats

    def state_bytes(self) -> int:
        """The per-block scores S and the selection contrast's four sums (float32): O(blocks) state."""
        return super().state_bytes() + self.scores.numel() * self.scores.element_size() + self.contrast.num_bytes()

    def describe(self) -> dict[str, Any]:
        """State size and the steps whose draw selected no block (no forward pass, no update)."""
        return {**super().describe(), "empty_steps": self.empty_steps}

    # checkpointing ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["curvzo"] = {"scores": self.scores.clone(), "fraction": self.fraction, "delta_ema": self.delta_ema,
                           "contrast": self.contrast.state_dict()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("curvzo", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self.scores = extra["scores"].to(torch.float32).clone()
            self.fraction = float(extra["fraction"])
            self.delta_ema = float(extra["delta_ema"])
            if "contrast" in extra:  # checkpoints before the selection contrast lack it: it starts afresh
                self.contrast.load_state_dict(extra["contrast"])


def _log_correlation(scores: torch.Tensor, sizes: torch.Tensor) -> float | None:
    """Pearson correlation of log S_b and log d_b; None when either does not vary across blocks."""
    x = torch.log(scores.to(torch.float64).clamp(min=1e-300))
    y = torch.log(sizes.to(torch.float64))
    x, y = x - x.mean(), y - y.mean()
    norm = float(x.norm() * y.norm())
    return float((x * y).sum()) / norm if norm > 0 else None
