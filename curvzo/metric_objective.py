"""Training on the task metric itself: the loss a ZO step sees is the negative minibatch metric.

A zeroth-order step needs only loss values, so it can climb a non-differentiable objective directly
(MeZO §3.3 and Table 3; its ``--non_diff`` option; protocol.md §6). ``task.train_objective`` picks it:

- ``loss`` (the default): the task's differentiable objective (protocol.md §6), as always;
- ``metric``: −accuracy of the candidate argmax (classification, multiple choice; ReCoRD counts any
  correct entity) or −mean F1 of greedy generations from the prompt alone, the gold answer removed
  from the input and at most the task's ``max_new_tokens`` (SQuAD, DROP).

Only training changes. Evaluation, the dev loss that selects checkpoints and every reported metric
stay the task's own objective's, so runs under either objective are scored the same way. First-order
optimizers cannot train on a metric (no gradient flows through an argmax); the job refuses them.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from curvzo.errors import ConfigError
from curvzo.example import Example
from curvzo.metrics import f1_score
from curvzo.minibatch import reduce_terms
from curvzo.objectives import AnswerGeneration, Objective
from curvzo.scoring import ScoringBatch, candidate_scores, encode_examples, predictions

TRAIN_OBJECTIVES = ("loss", "metric")  # the values of task.train_objective


def check_train_objective(value: object) -> str:
    """``value`` if it names a training objective, else one ConfigError line."""
    if value not in TRAIN_OBJECTIVES:
        raise ConfigError(f"task.train_objective must be one of {', '.join(TRAIN_OBJECTIVES)}, got {value!r}")
    return value


def training_objective(scored: Objective, train_objective: str) -> Objective:
    """The objective a job trains on: the task's own (``loss``) or its negative metric (``metric``)."""
    if check_train_objective(train_objective) == "loss":
        return scored
    return GenerationF1(scored) if isinstance(scored, AnswerGeneration) else CandidateAccuracy(scored)


class _NegativeMetric(abc.ABC):
    """Shared by both metric objectives: evaluation and metric names are the task objective's."""

    train_objective = "metric"

    def __init__(self, scored: Objective) -> None:
        self.scored = scored  # the task's own objective: it evaluates, and names the metrics
        self.metric, self.metrics = scored.metric, scored.metrics

    def evaluate(self, model, tokenizer, examples: Sequence[Example], batch_size: int, max_length: int,
                 device) -> dict:
        return self.scored.evaluate(model, tokenizer, examples, batch_size, max_length, device)

    def example_losses(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: minus its metric, and weight 1 (the loss is their mean)."""
        scores = self.example_metrics(model, batch)
        return -scores, torch.ones_like(scores)

    @abc.abstractmethod
    def training_batch(self, examples: Sequence[Example], tokenizer, max_length: int):
        """What ``example_metrics`` needs of ``examples``, movable with ``.to(device)``."""

    @abc.abstractmethod
    def example_metrics(self, model, batch) -> torch.Tensor:
        """The metric of each example of ``batch`` (float32, in [0, 1])."""

    def loss(self, model, batch) -> torch.Tensor:
        """Minus the minibatch's mean metric (float64, the same reduction as micro-batches and ranks use)."""
        numerators, weights = self.example_losses(model, batch)
        return reduce_terms(numerators.tolist(), weights.tolist())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.scored!r})"


@dataclass(frozen=True)
class CandidateBatch:
    """Every candidate of a minibatch, encoded, and which option indices count as correct per example."""

    encoded: ScoringBatch
    correct: tuple[tuple[int, ...], ...]

    def to(self, device) -> CandidateBatch:
        return CandidateBatch(self.encoded.to(device), self.correct)


class CandidateAccuracy(_NegativeMetric):
    """−accuracy of the argmax over candidate scores, scored exactly as evaluation scores them."""

    def training_batch(self, examples: Sequence[Example], tokenizer, max_length: int) -> CandidateBatch:
        # all candidates, also for tasks trained on the gold option alone (COPA, ReCoRD)
        return CandidateBatch(encode_examples(examples, tokenizer, max_length),
                              tuple(ex.correct_options for ex in examples))

    def example_metrics(self, model, batch: CandidateBatch) -> torch.Tensor:
        predicted = predictions(candidate_scores(model, batch.encoded)).tolist()
        return torch.tensor([float(p in correct) for p, correct in zip(predicted, batch.correct)])


@dataclass(frozen=True)
class PromptBatch:
    """The examples of a minibatch, to decode from their prompts (which never hold the gold answer)."""

    examples: tuple[Example, ...]
    tokenizer: object
    max_length: int
    device: object = None

    def to(self, device) -> PromptBatch:
        return replace(self, device=device)


class GenerationF1(_NegativeMetric):
    """−mean F1 of greedy answers: the same decoding as evaluation (``AnswerGeneration.decode``)."""

    scored: AnswerGeneration

    def training_batch(self, examples: Sequence[Example], tokenizer, max_length: int) -> PromptBatch:
        return PromptBatch(tuple(examples), tokenizer, max_length)

    def example_metrics(self, model, batch: PromptBatch) -> torch.Tensor:
        answers = self.scored.decode(model, batch.tokenizer, batch.examples, batch.max_length, batch.device)
        return torch.tensor([f1_score(text, ex.answers) for text, ex in zip(answers, batch.examples)])
