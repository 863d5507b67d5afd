"""SQuAD-style answer metrics (protocol.md §7; MeZO large_models/metrics.py).

An answer is normalised by lower-casing, removing ``string.punctuation``, removing the whole
words a/an/the, and collapsing whitespace. F1 is the token-multiset overlap F1 against each
gold answer, maximised over the golds; EM is 1 when any normalised gold equals the normalised
prediction. A first gold of ``CANNOTANSWER`` or ``no answer`` is scored by exact match.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_UNANSWERABLE = ("CANNOTANSWER", "no answer")  # QuAC's and SQuAD v2's markers in MeZO's code


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop articles, collapse whitespace (in MeZO's order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _overlap_f1(prediction: str, gold: str) -> float:
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(wanted)).values())
    if same == 0:  # also when either side normalises to nothing
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0."""
    if not golds:
        raise ValueError("exact_match needs at least one gold answer")
    predicted = normalize_answer(prediction)
    return float(any(normalize_answer(gold) == predicted for gold in golds))


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """Best token-overlap F1 of ``prediction`` against ``golds`` (exact match for unanswerable)."""
    if not golds:
        raise ValueError("f1_score needs at least one gold answer")
    if golds[0] in _UNANSWERABLE:
        return float(normalize_answer(golds[0]) == normalize_answer(prediction))
    return max(_overlap_f1(prediction, gold) for gold in golds)
