"""Optimizers: each a ``torch.optim.Optimizer`` whose ``step(closure)`` calls a forward-only closure."""

from curvzo.optim.base import ZerothOrderOptimizer
from curvzo.optim.directions import DirectionSampler
from curvzo.optim.mezo import MeZO
from curvzo.optim.replay import replay_trajectory

__all__ = ["DirectionSampler", "MeZO", "ZerothOrderOptimizer", "replay_trajectory"]
