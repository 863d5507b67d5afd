"""The original MeZO step, written the way princeton-nlp/MeZO's trainer writes it: the yardstick.

What the original pays on every step (MeZO ``trainer.py`` ``zo_perturb_parameters``, ``zo_step``,
``zo_update``; ``models.py`` ``forward_wrap``), each of which our step avoids:

- z is drawn again for every tensor on each of four passes (+ε, −2ε, +ε, update), each time as a
  new full-size tensor;
- updates are out of place (``param.data = param.data + scale * z``): a second copy of each
  tensor exists while it is written;
- every candidate is its own sequence, so a two-option example encodes its prompt twice;
- the whole vocabulary's log-softmax is computed at every position, of which one position per
  option token is read.

So that the two steps can be compared update for update, z comes from our generator
(:meth:`DirectionSampler.direction`: Z(s_t, b), the same numbers our step draws) instead of the
global RNG that the original reseeds with ``torch.manual_seed``. The cost is the same: one
full-size draw per tensor per pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from curvzo.example import Example
from curvzo.optim.streams import step_seed
from curvzo.optim.directions import DirectionSampler
from curvzo.scoring import (
    ScoringBatch,
    classification_loss,
    encode_examples,
    scores_from_token_logprobs,
)


def reference_batch(examples: Sequence[Example], tokenizer, max_length: int) -> ScoringBatch:
    """One sequence per candidate, as the original encodes them (no shared prompt)."""
    return encode_examples(examples, tokenizer, max_length, share_prompt=False)


def reference_loss(model, batch: ScoringBatch) -> torch.Tensor:
    """Classification loss with the whole vocabulary's log-probabilities at every position."""
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                   use_cache=False).logits
    logprobs = F.log_softmax(logits.float(), dim=-1)  # [S, T, V]: every position, every token
    window = logprobs[:, logprobs.shape[1] - batch.logits_to_keep:]
    token_logprob = window[batch.token_seq, batch.token_pos].gather(-1, batch.token_id.unsqueeze(-1)).squeeze(-1)
    return classification_loss(scores_from_token_logprobs(token_logprob, batch), batch.labels)


class ReferenceMeZO:
    """MeZO's step as the original computes it; same seeds, ε, lr and update as :class:`curvzo.optim.MeZO`.

    Only for benchmarks and exactness tests: no weight decay, no NaN guard, no trajectory.
    """

    forward_passes_per_step = 2

    def __init__(self, params: Iterable[torch.Tensor], lr: float, eps: float = 1e-3, *, seed: int = 0) -> None:
        unique: dict[int, torch.Tensor] = {}
        for p in params:
            if p.requires_grad:
                unique.setdefault(id(p), p)  # tied weights once, in order: our block indices
        self.params = list(unique.values())
        self.lr, self.eps, self.seed = lr, eps, seed
        self.sampler = DirectionSampler()
        self.steps_taken = 0
        self.forward_passes = 0

    def _z(self, index: int, seed: int) -> torch.Tensor:
        param = self.params[index]
        return self.sampler.direction(param, seed, index).to(param.dtype)  # a fresh full-size tensor

    def _perturb(self, seed: int, scale: float) -> None:
        for index, param in enumerate(self.params):
            param.data = param.data + scale * self._z(index, seed)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> float:
        """One step (two forward passes); returns the mean of the two probe losses."""
        seed = step_seed(self.seed, self.steps_taken)
        self.steps_taken += 1
        self._perturb(seed, self.eps)
        loss_plus = float(closure())
        self._perturb(seed, -2 * self.eps)
        loss_minus = float(closure())
        self._perturb(seed, self.eps)
        self.forward_passes += 2
        projected_grad = (loss_plus - loss_minus) / (2 * self.eps)
        for index, param in enumerate(self.params):
            param.data = param.data - self.lr * (projected_grad * self._z(index, seed))
        return (loss_plus + loss_minus) / 2
