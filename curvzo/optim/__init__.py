"""Optimizers: each a ``torch.optim.Optimizer`` whose ``step(closure)`` calls a forward-only closure."""

from curvzo.optim.base import ZerothOrderOptimizer
from curvzo.optim.curvzo import CurvZO
from curvzo.optim.directions import DirectionSampler
from curvzo.optim.mezo import MeZO
from curvzo.optim.replay import replay_from_losses, replay_trajectory

__all__ = ["CurvZO", "DirectionSampler", "MeZO", "ZerothOrderOptimizer", "replay_from_losses", "replay_trajectory"]
