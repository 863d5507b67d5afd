"""Tasks, their pools and prompt templates, and MeZO's train/dev/test sampling."""

from curvzo.data.base import Pools, Task
from curvzo.data.example import Example
from curvzo.data.sampling import Splits, load_splits
from curvzo.data.tasks import CB, RTE, SST2, BoolQ, TweetSentiment

__all__ = ["BoolQ", "CB", "Example", "Pools", "RTE", "SST2", "Splits", "Task", "TweetSentiment", "load_splits"]
