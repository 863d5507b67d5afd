"""Replay a recorded ZO trajectory onto the starting weights (pattern of lebrice/MeZO)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from curvzo.optim.base import ZerothOrderOptimizer


@torch.no_grad()
def replay_trajectory(optimizer: ZerothOrderOptimizer, records: Iterable[dict], *, eps: float | None = None) -> int:
    """Re-apply recorded MeZO steps to the optimizer's parameters (which must hold the start weights).

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
        _set_lrs(optimizer, record["lr"])
        optimizer.apply_update(record["seed"], record["projected_grad"])
        applied += 1
    return applied


@torch.no_grad()
def replay_from_losses(optimizer: ZerothOrderOptimizer, records: Iterable[dict]) -> int:
    """Re-run ``optimizer.step`` with each record's probe losses instead of forward passes.

    For stateful methods (CurvZO's scores, budget and block draws): the state is a function of the
    seeds and the probe losses, so a freshly built optimizer on the start weights retraces the
    run bit for bit without the model ever being evaluated. Returns the number of steps replayed.
    """
    replayed = 0
    for record in records:
        losses = iter(record["losses"])
        _set_lrs(optimizer, record["lr"])
        optimizer.step(lambda: torch.tensor(next(losses), dtype=torch.float64))
        replayed += 1
    return replayed


def _set_lrs(optimizer: ZerothOrderOptimizer, lrs: list[float]) -> None:
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
