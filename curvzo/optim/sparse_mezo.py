"""Sparse-MeZO: MeZO restricted to the small-magnitude weights (optimizers.md §8).

Liu et al., "Sparse MeZO: Less Parameters for Better Performance in Zeroth-Order LLM Fine-Tuning"
(arXiv 2402.15751). Each tensor b gets a threshold h_b, the value of |θ_b| at quantile ``keep``
of the pretrained weights; the mask m = (|θ| ≤ h_b) replaces z by m ⊙ z in every pass of a
step, so only the kept weights are perturbed and updated. The official code is not public; each
unknown is a switch (mask source, which tensors, keep fraction) with deterministic defaults.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from curvzo.optim.base import StepContext
from curvzo.optim.blocks import Block
from curvzo.optim.checks import check_choice, check_fraction
from curvzo.optim.directions import byte_bits
from curvzo.optim.mezo import MeZO

MASK_SOURCES = ("pretrained", "step")
APPLY_TO = ("all", "matrices")


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A flat bool tensor packed 8 to a byte (element 8j+i is bit i of byte j), zero-padded."""
    flat = mask.reshape(-1).to(torch.uint8)
    padded = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8))
    shifts = torch.arange(8, dtype=torch.uint8, device=flat.device)
    return (padded.view(-1, 8) << shifts).sum(dim=1, dtype=torch.uint8)  # disjoint bits: the sum is an OR


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The first ``numel`` bits of ``packed`` as a bool tensor (inverse of ``pack_bits``)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(1) >> shifts) & 1).view(-1)[:numel].bool()


def magnitude_threshold(tensor: torch.Tensor, keep: float) -> float:
    """h with |θ| ≤ h for (at least) a ``keep`` fraction of the tensor: the exact k-th smallest |θ|.

    Computed once per tensor on CPU in float32 (``torch.quantile`` refuses very large inputs).
    """
    magnitudes = tensor.detach().reshape(-1).to(device="cpu", dtype=torch.float32).abs()
    k = max(1, math.ceil(keep * magnitudes.numel()))
    return float(magnitudes.kthvalue(k).values)


class SparseMeZO(MeZO):
    """MeZO over a fixed, bit-packed magnitude mask per tensor; two forward passes per step.

    Args:
        params, lr, eps, weight_decay, seed, options: as ``MeZO``.
        keep: fraction of each masked tensor that is perturbed (0.25, i.e. sparsity 0.75).
        mask_source: ``pretrained`` (mask fixed from the starting weights) or ``step`` (rebuilt
            from the current weights with the same thresholds at the start of every step).
        apply_to: ``all`` tensors, or ``matrices`` (1-D tensors stay dense).
    """

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, weight_decay: float = 0.0, *, seed: int = 0,
                 keep: float = 0.25, mask_source: str = "pretrained", apply_to: str = "all", **options: Any) -> None:
        self.keep = check_fraction("keep", keep)
        self.mask_source = check_choice("mask_source", mask_source, MASK_SOURCES)
        self.apply_to = check_choice("apply_to", apply_to, APPLY_TO)
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, seed=seed, **options)
        for block in self.masked_blocks():
            self.state[block.param]["threshold"] = magnitude_threshold(block.param, self.keep)
        self.build_masks()

    def masked_blocks(self) -> list[Block]:
        return [b for b in self.blocks if self.apply_to == "all" or b.param.dim() >= 2]

    def build_masks(self) -> None:
        """m_b = (|θ_b| ≤ h_b) from the current weights, bit-packed (1 bit per parameter)."""
        kept = 0
        for block in self.blocks:
            state = self.state[block.param]
            if "threshold" not in state:
                kept += block.param.numel()
                continue
            mask = block.param.detach().abs().float() <= state["threshold"]  # the precision h was computed in
            kept += int(mask.sum())
            state["mask"] = pack_bits(mask)
        self._kept_fraction = kept / max(sum(b.param.numel() for b in self.blocks), 1)

    def mask(self, block: Block) -> torch.Tensor | None:
        """The unpacked bool mask of ``block`` (None for dense tensors); for tests and analysis."""
        packed = self.state[block.param].get("mask")
        return None if packed is None else unpack_bits(packed, block.param.numel()).view_as(block.param)

    def transform(self, ctx: StepContext, block: Block, span: slice, z: torch.Tensor) -> torch.Tensor:
        """m_b ⊙ z_b on one span: the span's bytes of the packed mask become 0/1 floats through a 256-row table
        (one gather, one multiply: unpacking with shifts cost more per element than drawing z)."""
        packed = self.state[block.param].get("mask")
        if packed is None:
            return z
        first, offset = divmod(span.start, 8)
        n = span.stop - span.start
        rows = byte_bits(z.device).index_select(0, packed[first:first + -(-(offset + n) // 8)].int())
        return z.mul_(rows.view(-1)[offset:offset + n])

    def plan(self, ctx: StepContext) -> bool:
        """With ``mask_source=step`` the mask is rebuilt from the current weights, then fixed for the step."""
        if self.mask_source == "step":
            self.build_masks()
        ctx.stats["sparse/kept_fraction"] = self.kept_fraction()
        return True

    def kept_fraction(self) -> float:
        """Fraction of all trainable entries that the current masks perturb (dense tensors count fully)."""
        return self._kept_fraction

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "threshold_method": "exact kthvalue of |theta| per tensor, CPU float32",
            "thresholds": {b.name: self.state[b.param]["threshold"] for b in self.masked_blocks()},
            "kept_fraction": self.kept_fraction(),
        }
