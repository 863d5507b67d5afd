"""The loss of one training minibatch as a closure: whole, in micro-batches, or sharded over ranks.

A ZO step only needs ``closure() -> loss``. How the loss is computed is this module's business:

- **whole** (one process, ``budget.micro_batch_size`` unset): the objective's loss on one encoded
  batch, as it always was.
- **micro-batches** (``budget.micro_batch_size``): the minibatch is split into chunks of that many
  examples, each encoded and run on its own (long sequences or large batches fit in memory); each chunk
  gives per-example terms (numerator, weight), concatenated in order; the loss is
  Σ numerators / Σ weights in float64. Equal to the whole-batch loss to float rounding (kernels round
  differently at another batch shape).
- **data parallel** (``distributed.mode=data``): rank r takes the r-th contiguous shard of the
  minibatch (split further into micro-batches when set), and the per-example terms of all ranks are
  gathered in rank order before the same reduction. The concatenated vectors are the ones one process
  computes on the same chunks, so the loss is bit-identical to a single process with
  ``budget.micro_batch_size`` = the shard size. No weight or gradient ever moves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from curvzo import distributed
from curvzo.example import Example

Closure = Callable[[], torch.Tensor]


def chunk_bounds(count: int, size: int | None) -> list[tuple[int, int]]:
    """[start, stop) of consecutive chunks of at most ``size`` items (one chunk when ``size`` is None)."""
    if count == 0:
        return []
    size = count if size is None else size
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def reduce_terms(numerators: Sequence[float], weights: Sequence[float]) -> torch.Tensor:
    """Σ numerators / Σ weights in float64, in a fixed order (the same on every rank)."""
    num = torch.tensor(list(numerators), dtype=torch.float64).sum()
    den = torch.tensor(list(weights), dtype=torch.float64).sum()
    return num / den


class MinibatchLoss:
    """Builds the loss closure of a minibatch under the job's micro-batch size and world."""

    def __init__(self, model, tokenizer, objective, max_length: int, device, micro_batch_size: int | None = None):
        self.model, self.tokenizer, self.objective = model, tokenizer, objective
        self.max_length, self.device, self.micro_batch_size = max_length, device, micro_batch_size

    def encode(self, examples: Sequence[Example]):
        """One encoded training batch of ``examples`` on the job's device."""
        return self.objective.training_batch(examples, self.tokenizer, self.max_length).to(self.device)

    @property
    def whole(self) -> bool:
        """Today's single-batch path: one process (or query parallelism) without micro-batches."""
        return self.micro_batch_size is None and not distributed.world().data_parallel

    def closure(self, examples: Sequence[Example]) -> Closure:
        """``closure()`` → the minibatch loss (a scalar tensor), evaluated under inference mode."""
        if self.whole:
            batch = self.encode(examples)

            def whole() -> torch.Tensor:
                with torch.inference_mode():
                    return self.objective.loss(self.model, batch)
            return whole
        world = distributed.world()
        start, stop = distributed.shard_bounds(len(examples))[world.rank] if world.data_parallel else (0, len(examples))
        mine = examples[start:stop]
        chunks = [self.encode(mine[a:b]) for a, b in chunk_bounds(len(mine), self.micro_batch_size)]

        def local_terms() -> tuple[list[float], list[float]]:
            numerators: list[float] = []
            weights: list[float] = []
            with torch.inference_mode():
                for batch in chunks:
                    num, weight = self.objective.example_losses(self.model, batch)
                    numerators += num.tolist()
                    weights += weight.tolist()
            return numerators, weights

        def sharded() -> torch.Tensor:
            if not world.data_parallel:
                return reduce_terms(*local_terms())
            parts = distributed.exchange(local_terms)
            return reduce_terms([x for num, _ in parts for x in num], [w for _, weight in parts for w in weight])
        return sharded
