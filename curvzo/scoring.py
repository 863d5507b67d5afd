"""Candidate scoring: encode examples, score each option by its mean token log-probability.

Protocol (protocol.md §5–§7): the option's tokens are tokens(prompt + option) − tokens(prompt);
a candidate's score is the mean log-probability of its option tokens, teacher-forced; the training
loss is the cross-entropy of softmax(scores) against the gold option; the prediction is the argmax
(first maximum on ties). Sequences are left-padded (options right-aligned), long inputs are
truncated from the left keeping the BOS token, and only the logits at the positions that are read
are computed and upcast to float32.

When every option of an example is a single token that extends the prompt's tokens, all its
candidates are read from one sequence (the prompt): the next-token distribution at its last
position. This is exactly the same score with a forward pass per example instead of per option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from curvzo.example import Example

PAD_TO_MULTIPLE_OF = 8  # MeZO's collator pads to a multiple of 8 (protocol.md §5)
# Characters of a prompt kept before tokenizing: the left truncation keeps at most max_length tokens, and a
# token of natural text is far shorter than this, so only runaway lines (a 20 MB data line) lose anything
# the truncation would have kept, and they no longer cost minutes of tokenizing.
CHARS_PER_TOKEN_BOUND = 64


@dataclass
class ScoringBatch:
    """Sequences plus, for every option token, where its log-probability is read."""

    input_ids: torch.Tensor  # [S, T] left-padded
    attention_mask: torch.Tensor  # [S, T]
    logits_to_keep: int  # only the last K positions' logits are computed
    token_seq: torch.Tensor  # [N] sequence of each option token
    token_pos: torch.Tensor  # [N] position inside the kept window whose logits predict it
    token_id: torch.Tensor  # [N] the option token
    token_cand: torch.Tensor  # [N] flat candidate index (example * max_options + option)
    labels: torch.Tensor  # [E] gold option index
    num_options: torch.Tensor  # [E]
    max_options: int

    def to(self, device: torch.device) -> ScoringBatch:
        fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return ScoringBatch(**fields)


def truncate_left(ids: list[int], max_length: int, bos_id: int | None) -> list[int]:
    """The last ``max_length`` ids, keeping a leading BOS (protocol.md §5: BOS + the last max_length - 1)."""
    if len(ids) <= max_length:
        return ids
    if bos_id is not None and ids and ids[0] == bos_id:
        return [bos_id] + ids[len(ids) - (max_length - 1):]
    return ids[len(ids) - max_length:]


def encode_examples(
    examples: Sequence[Example], tokenizer, max_length: int, share_prompt: bool = True
) -> ScoringBatch:
    """Tokenize examples into one scoring batch (see the module docstring for the rules)."""
    bos_id = tokenizer.bos_token_id
    sequences: list[list[int]] = []
    reads: list[tuple[int, int, int, int]] = []  # (sequence, tokens from the end, token id, candidate)
    max_options = max(len(ex.options) for ex in examples)
    bound = max_length * CHARS_PER_TOKEN_BOUND
    for e, ex in enumerate(examples):
        prompt = ex.prompt[-bound:]  # the left truncation below drops whatever precedes the bound anyway
        prompt_ids = tokenizer(prompt.strip(" "))["input_ids"]
        full_ids = [tokenizer((prompt + opt[:bound]).strip(" "))["input_ids"] for opt in ex.options]
        option_lens = [len(f) - len(prompt_ids) for f in full_ids]
        if min(option_lens) < 1:
            raise ValueError(f"an option of example {e} adds no tokens to its prompt: {ex.options}")
        shared = share_prompt and all(
            n == 1 and f[:-1] == prompt_ids for n, f in zip(option_lens, full_ids)
        )
        if shared:
            seq = len(sequences)
            sequences.append(truncate_left(prompt_ids, max_length, bos_id))
            for o, f in enumerate(full_ids):
                reads.append((seq, 1, f[-1], e * max_options + o))
            continue
        for o, (f, n) in enumerate(zip(full_ids, option_lens)):
            seq = len(sequences)
            sequences.append(truncate_left(f, max_length, bos_id))
            # token i of the option (0-based) sits n - i positions from the end and is predicted
            # by the logits one position earlier, i.e. n - i + 1 from the end
            for i in range(n):
                reads.append((seq, n - i + 1, f[len(f) - n + i], e * max_options + o))

    longest = max(len(s) for s in sequences)
    width = -(-longest // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        input_ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, width - len(s):] = 1
    keep = max(back for _, back, _, _ in reads)
    return ScoringBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_to_keep=keep,
        token_seq=torch.tensor([r[0] for r in reads], dtype=torch.long),
        token_pos=torch.tensor([keep - r[1] for r in reads], dtype=torch.long),
        token_id=torch.tensor([r[2] for r in reads], dtype=torch.long),
        token_cand=torch.tensor([r[3] for r in reads], dtype=torch.long),
        labels=torch.tensor([ex.label for ex in examples], dtype=torch.long),
        num_options=torch.tensor([len(ex.options) for ex in examples], dtype=torch.long),
        max_options=max_options,
    )


def option_token_logprobs(model, batch: ScoringBatch) -> torch.Tensor:
    """[N] float32 log-probability of every option token in the batch, teacher-forced."""
    # explicit positions: left padding must not shift rotary/learned positions of the real tokens
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids,
        logits_to_keep=batch.logits_to_keep,
        use_cache=False,
    )
    logits = out.logits[:, -batch.logits_to_keep:, :]
    logprobs = F.log_softmax(logits[batch.token_seq, batch.token_pos].float(), dim=-1)
    return logprobs.gather(-1, batch.token_id.unsqueeze(-1)).squeeze(-1)


def candidate_scores(model, batch: ScoringBatch) -> torch.Tensor:
    """[E, max_options] mean option-token log-probabilities; missing options are -inf."""
    return scores_from_token_logprobs(option_token_logprobs(model, batch), batch)


def scores_from_token_logprobs(token_logprob: torch.Tensor, batch: ScoringBatch) -> torch.Tensor:
    """[E, max_options]: the mean of each candidate's option-token log-probabilities (-inf if absent)."""
    num_examples = batch.labels.numel()
    flat = num_examples * batch.max_options
    sums = torch.zeros(flat, dtype=torch.float32, device=token_logprob.device).index_add_(0, batch.token_cand, token_logprob)
    counts = torch.zeros(flat, dtype=torch.float32, device=token_logprob.device).index_add_(
        0, batch.token_cand, torch.ones_like(token_logprob)
    )
    scores = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("-inf")))
    return scores.view(num_examples, batch.max_options)


def gold_lm_loss(model, batch: ScoringBatch) -> torch.Tensor:
    """Token-level cross-entropy over every option token of the batch (MeZO's non-classification
    objective: averaged over all tokens, so longer answers weigh more). ``batch`` holds one
    option per example, the gold one (see :func:`gold_only`)."""
    return -option_token_logprobs(model, batch).mean()


def gold_only(example: Example) -> Example:
    """The example reduced to its gold option: what a language-model loss trains on."""
    return Example(example.prompt, (example.options[example.label],), 0)


def classification_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over candidates, averaged over examples (MeZO train_as_classification)."""
    return F.cross_entropy(scores, labels)


def predictions(scores: torch.Tensor) -> torch.Tensor:
    """Argmax over candidates; torch.argmax returns the first maximum on ties."""
    return scores.argmax(dim=-1)
