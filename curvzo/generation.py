"""Greedy decoding for generation tasks (protocol.md §7; MeZO run.py, `generate` with 1 beam).

Prompts are encoded as the scorer encodes them (spaces stripped, left truncation keeping BOS,
left padding) and decoded together with a KV cache and explicit positions, so a prompt's output
does not depend on what it is batched with. Each row stops at the newline token (the last id of
the tokenized ``"\\n"``) or EOS, or after ``min(max_new_tokens, max_length - prompt length)``
tokens; its text is the new tokens decoded without special tokens, stripped of whitespace.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from curvzo.peft_modes import prefix_length
from curvzo.scoring import CHARS_PER_TOKEN_BOUND, PAD_TO_MULTIPLE_OF, truncate_left


def stop_token_ids(tokenizer) -> set[int]:
    """The newline's last token id and EOS: where MeZO's generation stops."""
    ids = {tokenizer("\n", add_special_tokens=False)["input_ids"][-1]}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _left_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(s) for s in sequences)
    width = -(-longest // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        input_ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return input_ids, mask


def _next_logits(model, input_ids, mask, positions, cache):
    """One forward for the newest positions; returns (last-position logits, cache)."""
    if cache is None:
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                    use_cache=True, logits_to_keep=1)
    else:
        # A prefix-tuned peft model rebuilds its prefix cache on every call, so continuation steps
        # go to the base model with the prefix's mask and position offset added by hand.
        prefix = prefix_length(model)
        if prefix:
            ones = torch.ones(mask.shape[0], prefix, dtype=mask.dtype, device=mask.device)
            model, mask, positions = model.get_base_model(), torch.cat([ones, mask], dim=1), positions + prefix
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :], out.past_key_values


def greedy_decode(model, tokenizer, prompts: Sequence[str], max_length: int, max_new_tokens: int,
                  device) -> list[str]:
    """Greedy continuations of ``prompts`` (a batch) as text, each cut at its first stop token."""
    tokens = greedy_tokens(model, tokenizer, prompts, max_length, max_new_tokens, device)
    return [tokenizer.decode(new, skip_special_tokens=True).strip() for new in tokens]


@torch.inference_mode()
def greedy_tokens(model, tokenizer, prompts: Sequence[str], max_length: int, max_new_tokens: int,
                  device) -> list[list[int]]:
    """The new token ids of each prompt's greedy continuation, its stop token included."""
    prompt_budget = max_length - max_new_tokens
    if prompt_budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for a prompt beside {max_new_tokens} new tokens")
    bos = tokenizer.bos_token_id
    bound = prompt_budget * CHARS_PER_TOKEN_BOUND  # what the left truncation would drop anyway (scoring.py)
    sequences = [truncate_left(tokenizer(p[-bound:].strip(" "))["input_ids"], prompt_budget, bos) for p in prompts]
    limits = [min(max_new_tokens, max_length - len(s)) for s in sequences]
    stops = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, mask = _left_padded(sequences, pad_id)
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    new_tokens: list[list[int]] = [[] for _ in sequences]
    done = [limit <= 0 for limit in limits]
    logits, cache = _next_logits(model, input_ids, mask, positions, None)
    while not all(done):
        chosen = logits.argmax(dim=-1)  # greedy; the first maximum on ties, as in `generate`
        for row, token in enumerate(chosen.tolist()):
            if done[row]:
                continue
            new_tokens[row].append(token)
            done[row] = token in stops or len(new_tokens[row]) >= limits[row]
        if all(done):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        logits, cache = _next_logits(model, chosen.unsqueeze(-1), mask, positions, cache)
    return new_tokens
