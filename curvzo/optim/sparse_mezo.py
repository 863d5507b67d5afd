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


#: elements read at a time when thresholding and masking a tensor: the transient memory is a few copies of this
#: many floats, not of the tensor (a vocabulary embedding's copies, sort indices and masks cost 0.3x inference)
CHUNK_NUMEL = 1 << 20


def _magnitude_bits(tensor: torch.Tensor, chunk: int):
    """The float32 bit patterns of |θ|, chunk by chunk, on CPU: as integers they sort as the magnitudes do."""
    flat = tensor.detach().reshape(-1)
    for start in range(0, flat.numel(), chunk):
        yield flat[start:start + chunk].to(device="cpu", dtype=torch.float32).abs().view(torch.int32)


def magnitude_threshold(tensor: torch.Tensor, keep: float, chunk: int = CHUNK_NUMEL) -> float:
    """h with |θ| ≤ h for (at least) a ``keep`` fraction of the tensor: the exact k-th smallest |θ| in float32.

    A radix selection in two counting passes over the tensor, ``chunk`` elements at a time: the high 16 bits of
    the k-th smallest magnitude first, then its low 16 bits among the elements that share them. The value is
    the one ``kthvalue`` gives (``tests/test_sparse_mezo.py``), without a full-size copy and index tensor.
    """
    numel = tensor.numel()
    k = max(1, math.ceil(keep * numel))
    high_counts = torch.zeros(1 << 16, dtype=torch.int64)
    for bits in _magnitude_bits(tensor, chunk):
        high_counts += torch.bincount(bits >> 16, minlength=1 << 16)
    high_cumulative = high_counts.cumsum(0)
    high = int(torch.searchsorted(high_cumulative, k))  # the first bin holding the k-th smallest
    rank = k - (int(high_cumulative[high - 1]) if high else 0)  # its rank inside that bin
    low_counts = torch.zeros(1 << 16, dtype=torch.int64)
    for bits in _magnitude_bits(tensor, chunk):
        low_counts += torch.bincount(bits[(bits >> 16) == high] & 0xFFFF, minlength=1 << 16)
    low = int(torch.searchsorted(low_counts.cumsum(0), rank))
    return float(torch.tensor([(high << 16) | low], dtype=torch.int32).view(torch.float32))


def packed_mask(tensor: torch.Tensor, threshold: float, chunk: int = CHUNK_NUMEL, *,
                out: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(pack_bits(|θ| ≤ h), how many entries it keeps), built ``chunk`` elements (a multiple of 8) at a time,
    into ``out`` (uint8, one byte per 8 entries) if given."""
    if chunk % 8:
        raise ValueError(f"chunk must be a multiple of 8 (whole bytes of the packed mask), got {chunk}")
    flat = tensor.detach().reshape(-1)
    packed = torch.empty(-(-flat.numel() // 8), dtype=torch.uint8, device=flat.device) if out is None else out
    kept = 0
    for start in range(0, flat.numel(), chunk):
        mask = flat[start:start + chunk].abs().float() <= threshold  # the precision h was computed in
        kept += int(mask.sum())
        piece = pack_bits(mask)
        packed[start // 8:start // 8 + piece.numel()] = piece
    return packed, kept


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
        """m_b = (|θ_b| ≤ h_b) from the current weights, bit-packed (1 bit per parameter).

        Every mask is allocated before any is computed (and rebuilt in place after that): long-lived masks
        allocated between the computation's transients kept their freed memory resident (+0.45 GB on SmolLM2)."""
        masked = [b for b in self.blocks if "threshold" in self.state[b.param]]
        for block in masked:
            if "mask" not in self.state[block.param]:
                self.state[block.param]["mask"] = torch.empty(-(-block.param.numel() // 8), dtype=torch.uint8,
                                                              device=block.param.device)
        kept = sum(b.param.numel() for b in self.blocks if b not in masked)
        for block in masked:
            state = self.state[block.param]
            kept += packed_mask(block.param, state["threshold"], out=state["mask"])[1]
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
