"""Replay a recorded ZO trajectory onto the starting weights (pattern of lebrice/MeZO).

Both functions refuse records written under another RNG contract (``streams.check_contract``)
with a ValueError, instead of silently producing other weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from curvzo.optim.base import StepContext, ZerothOrderOptimizer
from curvzo.optim.streams import check_contract


@torch.no_grad()
def replay_trajectory(optimizer: ZerothOrderOptimizer, records: Iterable[dict]) -> int:
    """Re-apply only the recorded updates (one draw of z per step, no probe) to the optimizer's
    parameters, which must hold the start weights. For methods whose update depends only on the
    recorded losses (MeZO, Sparse-MeZO with a fixed mask, ZO-SGD-momentum, ZO-Adam, HiZOO) this is
    bit-identical to the run with ``probe=exact``; the in-place probe's restore rounding is only
    reproduced by :func:`replay_from_losses`. Returns the number of updates applied.
    """
    records = list(records)
    check_contract(records)
    applied = 0
    for record in records:
        optimizer.steps_taken = record["step"]  # records count steps from 1
        if record.get("skipped") or record.get("empty"):
            continue
        _set_lrs(optimizer, record["lr"])
        ctx = StepContext(record["step"] - 1, record["seed"], closure=None, blocks=list(optimizer.blocks))
        optimizer.update(ctx, list(record["losses"]))
        applied += 1
    return applied


@torch.no_grad()
def replay_from_losses(optimizer: ZerothOrderOptimizer, records: Iterable[dict]) -> int:
    """Re-run ``optimizer.step`` with each record's probe losses instead of forward passes.

    For every method, stateful ones included (CurvZO's scores, budget and block draws): the state is
    a function of the seeds and the probe losses, so a freshly built optimizer on the start weights
    retraces the run bit for bit without the model ever being evaluated. Returns the number of steps
    replayed.
    """
    records = list(records)
    check_contract(records)
    for record in records:
        losses = iter(record["losses"])
        _set_lrs(optimizer, record["lr"])
        optimizer.step(lambda: torch.tensor(next(losses), dtype=torch.float64))
    return len(records)


def _set_lrs(optimizer: ZerothOrderOptimizer, lrs: list[float]) -> None:
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
