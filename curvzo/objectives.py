"""How a task trains and is scored (protocol.md §6–§7): one object per objective.

A task names its objective; the training loop only calls the three methods below, so a new
kind of task is a new class here, not a branch in the loop.

- :class:`CandidateClassification` (SST-2, RTE, CB, BoolQ, WSC, WiC, MultiRC): cross-entropy
  over the candidates' mean option log-probabilities; accuracy by argmax.
- :class:`GoldOptionLM` (COPA, ReCoRD): language-model loss on the gold option only; accuracy by
  the same candidate scoring, a hit when the argmax is any correct option.
- :class:`AnswerGeneration` (SQuAD, DROP): language-model loss on the gold answer; F1 and EM of
  greedy generations, the maximum over gold answers.

Every ``evaluate`` returns ``{"loss", <metrics>..., "n"}`` where ``loss`` is the training
objective on the examples (MeZO selects checkpoints on it) and ``metric`` names the primary one.
Evaluation chunks are dealt over the ranks of a distributed job and their partial sums combined
in chunk order, so every metric is the one a single process computes, bit for bit.

``curvzo.metric_objective`` wraps any of them to train on the negative metric instead
(``task.train_objective=metric``); :class:`Objective` is the contract all of them keep.

``example_losses`` splits the training loss into per-example terms (numerator, weight) whose
ratio of sums is the loss: what micro-batches and data-parallel ranks compute and gather.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from curvzo import distributed
from curvzo.example import Example
from curvzo.generation import greedy_decode
from curvzo.metrics import exact_match, f1_score
from curvzo.scoring import (
    ScoringBatch,
    candidate_scores,
    classification_loss,
    encode_examples,
    gold_lm_loss,
    gold_only,
    option_token_logprobs,
    predictions,
)


class Objective(Protocol):
    """What the training loop asks of an objective (the three below, and curvzo.metric_objective's)."""

    metric: str  # the primary metric: what select_by=dev_metric and the tables read
    metrics: tuple[str, ...]  # every metric evaluate reports beside the loss
    train_objective: str  # what training minimises: "loss" (the objective's own) or "metric" (its negative)

    def training_batch(self, examples: Sequence[Example], tokenizer, max_length: int):
        """The encoded minibatch the loss reads; it has ``.to(device)``."""

    def loss(self, model, batch) -> torch.Tensor:
        """The scalar a step minimises on ``batch``."""

    def example_losses(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (numerator, weight) whose ratio of sums is ``loss``."""

    def evaluate(self, model, tokenizer, examples: Sequence[Example], batch_size: int, max_length: int,
                 device) -> dict:
        """``{"loss", <metrics>..., "n"}`` on ``examples``."""


def _length_sorted(examples: Sequence[Example]) -> list[Example]:
    # similar lengths share a batch, so little compute goes to padding; every metric is per example
    return sorted(examples, key=lambda ex: len(ex.prompt) + max(len(o) for o in ex.options))


def _chunks(examples: Sequence[Example], batch_size: int):
    ordered = _length_sorted(examples)
    for start in range(0, len(ordered), batch_size):
        yield ordered[start:start + batch_size]


def _encode_gold(examples: Sequence[Example], tokenizer, max_length: int) -> ScoringBatch:
    return encode_examples([gold_only(ex) for ex in examples], tokenizer, max_length)


_ENCODED: OrderedDict[tuple, tuple[Sequence[Example], list]] = OrderedDict()
_ENCODED_KEPT = 8  # dev and test of a job, in each encoding, with room to spare


def encoded_chunks(examples: Sequence[Example], tokenizer, batch_size: int, max_length: int,
                   encode: Callable | None = None) -> list[tuple[list[Example], ScoringBatch]]:
    """Length-sorted evaluation chunks with their encoded batches (``encode``, default ``encode_examples``),
    encoded once per example list: dev and test are scored at every evaluation point, and tokenizing
    them again each time cost minutes."""
    encode = encode or encode_examples
    key = (id(examples), len(examples), id(tokenizer), batch_size, max_length, encode)
    hit = _ENCODED.get(key)
    if hit is None or hit[0] is not examples:  # the list itself is kept, so its id cannot be reused meanwhile
        hit = (examples, [(chunk, encode(chunk, tokenizer, max_length)) for chunk in _chunks(examples, batch_size)])
        _ENCODED[key] = hit
        while len(_ENCODED) > _ENCODED_KEPT:
            _ENCODED.popitem(last=False)
    _ENCODED.move_to_end(key)
    return hit[1]


def _progress(items, what: str):
    """A transient progress bar over evaluation batches: dev and test of a real model take minutes."""
    return tqdm(items, desc=what, unit="batch", leave=False, dynamic_ncols=True, mininterval=1.0)


def _gold_token_nll(model, tokenizer, examples, batch_size, max_length, device) -> float:
    """Mean negative log-likelihood over every gold-option token of ``examples``."""
    def part(item) -> tuple[float, int]:
        logprobs = option_token_logprobs(model, item[1].to(device))
        return float(logprobs.sum()), logprobs.numel()

    total, tokens = 0.0, 0
    for logprob_sum, count in _dealt(part, encoded_chunks(examples, tokenizer, batch_size, max_length, _encode_gold),
                                     "eval loss"):
        total -= logprob_sum
        tokens += count
    return total / max(tokens, 1)


def _dealt(fn, chunks, what: str) -> list:
    """``fn`` on each evaluation chunk (dealt over the ranks of a distributed job), results in chunk order."""
    return distributed.map_dealt(fn, _progress(chunks, what) if not distributed.world().active else chunks)


def token_nll_per_example(model, batch: ScoringBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example of a gold-only batch: the summed negative log-likelihood of its option tokens and their count."""
    logprobs = option_token_logprobs(model, batch)
    examples = batch.token_cand // batch.max_options
    num = batch.labels.numel()
    sums = torch.zeros(num, dtype=torch.float32, device=logprobs.device).index_add_(0, examples, -logprobs)
    counts = torch.zeros(num, dtype=torch.float32, device=logprobs.device).index_add_(
        0, examples, torch.ones_like(logprobs))
    return sums, counts


class CandidateClassification:
    """Cross-entropy over candidate scores (MeZO ``train_as_classification``); accuracy."""

    metric = "acc"
    metrics = ("acc",)  # what evaluate reports beside the loss; ``metric`` is the primary one
    train_objective = "loss"

    def training_batch(self, examples: Sequence[Example], tokenizer, max_length: int) -> ScoringBatch:
        return encode_examples(examples, tokenizer, max_length)

    def loss(self, model, batch: ScoringBatch) -> torch.Tensor:
        return classification_loss(candidate_scores(model, batch), batch.labels)

    def example_losses(self, model, batch: ScoringBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: its cross-entropy and weight 1 (the loss is their mean)."""
        losses = F.cross_entropy(candidate_scores(model, batch), batch.labels, reduction="none")
        return losses, torch.ones_like(losses)

    @torch.inference_mode()
    def evaluate(self, model, tokenizer, examples: Sequence[Example], batch_size: int, max_length: int,
                 device) -> dict:
        def part(item) -> tuple[float, int]:
            chunk, encoded = item
            batch = encoded.to(device)
            scores = candidate_scores(model, batch)
            return float(classification_loss(scores, batch.labels)) * len(chunk), _hits(predictions(scores).tolist(), chunk)

        total_loss, correct = 0.0, 0
        for chunk_loss, hits in _dealt(part, encoded_chunks(examples, tokenizer, batch_size, max_length), "eval"):
            total_loss += chunk_loss
            correct += hits
        n = max(len(examples), 1)
        return {"loss": total_loss / n, "acc": correct / n, "n": len(examples)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _hits(predicted: list[int], examples: Sequence[Example]) -> int:
    return sum(p in ex.correct_options for p, ex in zip(predicted, examples))


class GoldOptionLM(CandidateClassification):
    """Language-model loss on the gold option (MeZO ``--train_as_classification False``);
    accuracy by candidate scoring. Dev loss is the same token-level loss."""

    def training_batch(self, examples: Sequence[Example], tokenizer, max_length: int) -> ScoringBatch:
        return encode_examples([gold_only(ex) for ex in examples], tokenizer, max_length)

    def loss(self, model, batch: ScoringBatch) -> torch.Tensor:
        return gold_lm_loss(model, batch)

    def example_losses(self, model, batch: ScoringBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: the summed token NLL of its gold option and its token count (the loss is a token mean)."""
        return token_nll_per_example(model, batch)

    @torch.inference_mode()
    def evaluate(self, model, tokenizer, examples: Sequence[Example], batch_size: int, max_length: int,
                 device) -> dict:
        def part(item) -> int:
            chunk, encoded = item
            return _hits(predictions(candidate_scores(model, encoded.to(device))).tolist(), chunk)

        correct = sum(_dealt(part, encoded_chunks(examples, tokenizer, batch_size, max_length), "eval"))
        n = max(len(examples), 1)
        loss = _gold_token_nll(model, tokenizer, examples, batch_size, max_length, device) if examples else float("nan")
        return {"loss": loss, "acc": correct / n, "n": len(examples)}


class AnswerGeneration:
    """Language-model loss on the gold answer; F1/EM of greedy generations (SQuAD, DROP).

    Training and evaluation sequences get ``max_length - max_new_tokens`` tokens, so the answer
    always fits (MeZO run.py).
    """

    metric = "f1"
    metrics = ("f1", "em")
    train_objective = "loss"

    def __init__(self, max_new_tokens: int = 50) -> None:  # MeZO --max_new_tokens 50
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        self.max_new_tokens = max_new_tokens

    def training_batch(self, examples: Sequence[Example], tokenizer, max_length: int) -> ScoringBatch:
        return encode_examples([gold_only(ex) for ex in examples], tokenizer, max_length - self.max_new_tokens)

    def loss(self, model, batch: ScoringBatch) -> torch.Tensor:
        return gold_lm_loss(model, batch)

    def example_losses(self, model, batch: ScoringBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: the summed token NLL of its gold answer and its token count (the loss is a token mean)."""
        return token_nll_per_example(model, batch)

    def decode(self, model, tokenizer, examples: Sequence[Example], max_length: int, device) -> list[str]:
        """Greedy answers to one batch of ``examples``, from their prompts alone (the gold answer is never in them)."""
        return greedy_decode(model, tokenizer, [ex.prompt for ex in examples], max_length, self.max_new_tokens, device)

    def generate(self, model, tokenizer, examples: Sequence[Example], batch_size: int, max_length: int,
                 device) -> list[str]:
        """Greedy answers, in the order of ``examples``."""
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

        def part(rows: list[int]) -> list[str]:
            return self.decode(model, tokenizer, [examples[i] for i in rows], max_length, device)

        answers: list[str] = [""] * len(examples)
        for rows, texts in zip(batches, _dealt(part, batches, "generate")):
            for i, text in zip(rows, texts):
                answers[i] = text
        return answers

    @torch.inference_mode()
    def evaluate(self, model, tokenizer, examples: Sequence[Example], batch_size: int, max_length: int,
                 device) -> dict:
        loss = _gold_token_nll(model, tokenizer, examples, batch_size, max_length - self.max_new_tokens, device)
        generated = self.generate(model, tokenizer, examples, batch_size, max_length, device)
        f1 = sum(f1_score(text, ex.answers) for text, ex in zip(generated, examples)) / len(examples)
        em = sum(exact_match(text, ex.answers) for text, ex in zip(generated, examples)) / len(examples)
        return {"loss": loss, "f1": f1, "em": em, "n": len(examples)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_new_tokens={self.max_new_tokens})"
