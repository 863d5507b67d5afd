"""Optimizers: each a ``torch.optim.Optimizer`` whose ``step(closure)`` calls a forward-only closure."""

from curvzo.optim.base import StepContext, ZerothOrderOptimizer
from curvzo.optim.curvzo import CurvZO
from curvzo.optim.directions import DirectionSampler
from curvzo.optim.dizo import DiZO
from curvzo.optim.hizoo import HiZOO
from curvzo.optim.loren import LOREN
from curvzo.optim.mezo import MeZO
from curvzo.optim.replay import replay_from_losses, replay_trajectory
from curvzo.optim.sparse_mezo import SparseMeZO
from curvzo.optim.zo_adam import ZOAdam
from curvzo.optim.zo_sgd_momentum import ZOSGDMomentum

__all__ = ["CurvZO", "DiZO", "DirectionSampler", "HiZOO", "LOREN", "MeZO", "SparseMeZO", "StepContext", "ZOAdam",
           "ZOSGDMomentum", "ZerothOrderOptimizer", "replay_from_losses", "replay_trajectory"]
