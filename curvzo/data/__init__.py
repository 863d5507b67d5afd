"""Tasks, their pools and prompt templates, and MeZO's train/dev/test sampling."""

from curvzo.data.base import Pools, Task
from curvzo.data.qa_tasks import DROP, SQuAD
from curvzo.data.sampling import Splits, load_splits
from curvzo.data.superglue_tasks import COPA, WSC, MultiRC, ReCoRD, WiC
from curvzo.data.tasks import CB, RTE, SST2, BoolQ, TweetSentiment
from curvzo.example import Example

__all__ = [
    "CB",
    "COPA",
    "DROP",
    "RTE",
    "SST2",
    "WSC",
    "BoolQ",
    "Example",
    "MultiRC",
    "Pools",
    "ReCoRD",
    "SQuAD",
    "Splits",
    "Task",
    "TweetSentiment",
    "WiC",
    "load_splits",
]
