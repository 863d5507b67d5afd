"""Blocks: the trainable tensors a ZO optimizer perturbs, each with its parameter group."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Block:
    """One trainable tensor (tied weights count once) with the hyperparameters of its parameter group."""

    index: int  # position in parameter-group order: part of the RNG contract (z_b is keyed by it)
    param: torch.Tensor
    group: dict
    name: str  # from named parameters when given (``param_names``), else ``param<index>``

    @property
    def numel(self) -> int:
        return self.param.numel()


def collect_blocks(param_groups: list[dict]) -> list[Block]:
    """The blocks of ``param_groups`` in order, skipping frozen tensors and repeats."""
    seen: set[int] = set()
    blocks: list[Block] = []
    for group in param_groups:
        names = group.get("param_names") or [None] * len(group["params"])
        for name, p in zip(names, group["params"]):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            index = len(blocks)
            blocks.append(Block(index, p, group, name or f"param{index}"))
    return blocks
