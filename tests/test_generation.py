"""Greedy decoding (protocol.md §7): the library's greedy `generate`, batch-invariant, stops right."""

from __future__ import annotations

import pytest
import torch

from curvzo.generation import greedy_decode, greedy_tokens, stop_token_ids
from tests.helpers import tiny_model

PROMPTS = [
    "Title: Denver\nContext: The Broncos won.\nQuestion: Who won?\nAnswer:",
    "Passage: x\nQuestion: y\nAnswer:",
    "Q: a much longer prompt about nothing in particular, padded out with words\nAnswer:",
]


@pytest.fixture(scope="module", params=["tiny-opt", "tiny-llama"])
def loaded(request):
    return tiny_model(request.param)


def hf_greedy(loaded, prompt: str, max_new_tokens: int) -> list[int]:
    """transformers' own greedy search, one unpadded prompt (MeZO's evaluation call)."""
    tok = loaded.tokenizer
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                                max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_token_ids(tok)),
                                pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_matches_transformers_generate_one_prompt_at_a_time(loaded):
    for prompt in PROMPTS:
        ours = greedy_tokens(loaded.model, loaded.tokenizer, [prompt], 512, 12, "cpu")[0]
        assert ours == hf_greedy(loaded, prompt, 12)
        assert len(ours) == 12  # a random tiny model never says a newline in 12 tokens here


def test_a_batch_decodes_as_its_prompts_alone(loaded):
    together = greedy_tokens(loaded.model, loaded.tokenizer, PROMPTS, 512, 10, "cpu")
    alone = [greedy_tokens(loaded.model, loaded.tokenizer, [p], 512, 10, "cpu")[0] for p in PROMPTS]
    assert together == alone


class NewlineAfter(torch.nn.Module):
    """Wraps a model so that the ``after``-th generated token is forced to be a newline."""

    def __init__(self, inner, newline: int, after: int) -> None:
        super().__init__()
        self.inner, self.newline, self.after, self.calls = inner, newline, after, 0

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        self.calls += 1
        if self.calls == self.after:
            out.logits[..., self.newline] += 1e4
        return out


def test_stops_at_the_newline_and_strips_it(loaded):
    tok = loaded.tokenizer
    newline = tok("\n", add_special_tokens=False)["input_ids"][-1]
    free = greedy_tokens(loaded.model, tok, PROMPTS[:1], 512, 8, "cpu")[0]
    forced = NewlineAfter(loaded.model, newline, after=3)
    tokens = greedy_tokens(forced, tok, PROMPTS[:1], 512, 8, "cpu")[0]
    assert tokens == free[:2] + [newline]
    forced.calls = 0
    text = greedy_decode(forced, tok, PROMPTS[:1], 512, 8, "cpu")[0]
    assert text == tok.decode(free[:2], skip_special_tokens=True).strip()


def test_long_prompts_are_cut_on_the_left_so_the_answer_still_fits(loaded):
    tok = loaded.tokenizer
    long = "word " * 300 + "Answer:"  # 1,500+ byte tokens, far over the 128-token context
    tokens = greedy_tokens(loaded.model, tok, [long], 128, 50, "cpu")[0]
    assert len(tokens) == 50  # the prompt kept 128 - 50 tokens (BOS + the last 77), all 50 new tokens fit
    kept = [tok.bos_token_id] + tok(long)["input_ids"][-77:]
    ids = torch.tensor([kept])
    out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=50, eos_token_id=sorted(stop_token_ids(tok)),
                                pad_token_id=tok.pad_token_id)
    assert tokens == out[0, ids.shape[1]:].tolist()


def test_no_room_for_a_prompt_is_an_error(loaded):
    with pytest.raises(ValueError, match="no room"):
        greedy_tokens(loaded.model, loaded.tokenizer, PROMPTS[:1], 50, 50, "cpu")
