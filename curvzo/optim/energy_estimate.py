"""Per-block gradient energy from the scalar feedback alone: the selection contrast (ours, optimizers.md §11.10).

Under Poisson block sampling, each step's squared projected gradient Δ² has
E[Δ² | b selected] − E[Δ² | b not selected] = G_b = ‖∇_b L‖², because every other block enters both
conditional means alike. Two exponential moving averages of Δ² per block, one over the steps that selected
it and one over those that did not, estimate the two means; their difference estimates G_b. The averages are
bias-corrected (Adam's rule: each side's EMA divided by the EMA of its own weights), so a side seen a few
times is not pulled towards its zero start. A block with a side never seen has no estimate yet: it reads 0.
State: four float32 numbers per block.
"""

from __future__ import annotations

import torch

_F32 = torch.float32


class SelectionContrast:
    """Running estimate of each block's gradient energy G_b from (selection mask, Δ²) pairs."""

    def __init__(self, num_blocks: int, beta: float) -> None:
        self.beta = beta
        self.selected_sum = torch.zeros(num_blocks, dtype=_F32)
        self.selected_weight = torch.zeros(num_blocks, dtype=_F32)
        self.unselected_sum = torch.zeros(num_blocks, dtype=_F32)
        self.unselected_weight = torch.zeros(num_blocks, dtype=_F32)

    def observe(self, selected: torch.Tensor, delta_sq: float) -> None:
        """One step's feedback: ``selected`` is the boolean mask of the blocks it perturbed."""
        x = torch.tensor(delta_sq, dtype=_F32)
        for total, weight, mask in ((self.selected_sum, self.selected_weight, selected),
                                    (self.unselected_sum, self.unselected_weight, ~selected)):
            total[mask] = total[mask] * (1 - self.beta) + self.beta * x
            weight[mask] = weight[mask] * (1 - self.beta) + self.beta

    def energy(self) -> torch.Tensor:
        """Ĝ_b ≥ 0 (float32); 0 where one side of the contrast has not been seen yet."""
        seen = (self.selected_weight > 0) & (self.unselected_weight > 0)
        selected_mean = self.selected_sum / self.selected_weight.clamp(min=1e-30)
        unselected_mean = self.unselected_sum / self.unselected_weight.clamp(min=1e-30)
        return torch.where(seen, selected_mean - unselected_mean, torch.zeros_like(selected_mean)).clamp(min=0.0)

    def num_bytes(self) -> int:
        return 4 * self.selected_sum.numel() * self.selected_sum.element_size()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"selected_sum": self.selected_sum.clone(), "selected_weight": self.selected_weight.clone(),
                "unselected_sum": self.unselected_sum.clone(), "unselected_weight": self.unselected_weight.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("selected_sum", "selected_weight", "unselected_sum", "unselected_weight"):
            setattr(self, name, state[name].to(_F32).clone())
