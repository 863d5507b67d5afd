"""Replay a recorded ZO trajectory onto the starting weights (pattern of lebrice/MeZO)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from curvzo.optim.base import ZerothOrderOptimizer


@torch.no_grad()
def replay_trajectory(optimizer: ZerothOrderOptimizer, records: Iterable[dict], *, eps: float | None = None) -> int:
    """Re-apply recorded steps to the optimizer's parameters (which must hold the start weights).

    With ``eps`` given, each step also replays the probe shifts (+ε, −2ε, +ε) before the update, so
    the float rounding of the run is reproduced and the weights come out bit-identical. Without it
    only the updates are applied (one z pass per step), which matches up to rounding.
    Returns the number of updates applied.
    """
    applied = 0
    for record in records:
        if eps is not None:
            optimizer.shift(record["seed"], +eps)
            optimizer.shift(record["seed"], -2 * eps)
            optimizer.shift(record["seed"], +eps)
        if record.get("skipped"):
            continue
        for group, lr in zip(optimizer.param_groups, record["lr"]):
            group["lr"] = lr
        optimizer.apply_update(record["seed"], record["projected_grad"])
        applied += 1
    return applied
