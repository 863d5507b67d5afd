"""Candidate scoring: exact against a direct computation, padding- and sharing-invariant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from curvzo.example import Example
from curvzo.scoring import (
    candidate_scores,
    classification_loss,
    encode_examples,
    predictions,
)
from tests.helpers import tiny_model

EXAMPLES = [
    Example("The movie was wonderful. It was", (" terrible", " great"), 1),
    Example("Bad. It was", (" terrible", " great"), 0),
    Example("Suppose it rains. Can we infer that \"it is wet\"? Yes, No, or Maybe?\n", ("Yes", "No", "Maybe"), 2),
]


@pytest.fixture(scope="module", params=["tiny-opt", "tiny-llama"])
def loaded(request):
    return tiny_model(request.param)


def direct_score(model, tokenizer, prompt: str, option: str) -> float:
    """Mean log-probability of the option tokens from one unpadded full-vocabulary forward pass."""
    p = tokenizer(prompt.strip(" "))["input_ids"]
    f = tokenizer((prompt + option).strip(" "))["input_ids"]
    n = len(f) - len(p)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([f])).logits[0].float()
    logprobs = F.log_softmax(logits, dim=-1)
    return float(sum(logprobs[len(f) - n + i - 1, f[len(f) - n + i]] for i in range(n)) / n)


def test_batched_scores_equal_direct_unpadded_scores(loaded):
    batch = encode_examples(EXAMPLES, loaded.tokenizer, max_length=512)
    with torch.inference_mode():
        scores = candidate_scores(loaded.model, batch)
    assert scores.shape == (3, 3)
    for e, ex in enumerate(EXAMPLES):
        for o, opt in enumerate(ex.options):
            assert float(scores[e, o]) == pytest.approx(direct_score(loaded.model, loaded.tokenizer, ex.prompt, opt), abs=1e-5)
        assert torch.isinf(scores[e, len(ex.options):]).all()


def test_shared_prompt_path_is_exact_for_single_token_options(loaded):
    # byte tokenizer: an option without a leading space is exactly one new token
    examples = [Example("Answer:", ("A", "B", "C"), 0), Example("A longer prompt here, answer:", ("B", "C", "A"), 2)]
    shared = encode_examples(examples, loaded.tokenizer, 512, share_prompt=True)
    separate = encode_examples(examples, loaded.tokenizer, 512, share_prompt=False)
    assert shared.input_ids.shape[0] == 2 and separate.input_ids.shape[0] == 6
    assert shared.logits_to_keep == 1
    with torch.inference_mode():
        torch.testing.assert_close(candidate_scores(loaded.model, shared), candidate_scores(loaded.model, separate),
                                   rtol=0, atol=1e-5)


def test_left_truncation_keeps_bos_and_the_option(loaded):
    tok = loaded.tokenizer
    long = Example("word " * 400 + "It was", (" terrible", " great"), 1)
    batch = encode_examples([long], tok, max_length=64)
    assert batch.input_ids.shape[1] == 64
    assert int(batch.input_ids[0, 0]) == tok.bos_token_id
    assert tok.decode(batch.input_ids[1, -6:]).endswith("great")


def test_loss_and_predictions():
    scores = torch.tensor([[-1.0, -2.0], [-3.0, -3.0], [-2.0, -0.5]])
    labels = torch.tensor([0, 1, 1])
    assert predictions(scores).tolist() == [0, 0, 1]  # ties go to the first option
    expected = -(torch.log_softmax(scores, -1)[torch.arange(3), labels]).mean()
    assert float(classification_loss(scores, labels)) == pytest.approx(float(expected))
    inf_padded = torch.tensor([[-1.0, -2.0, float("-inf")]])
    assert float(classification_loss(inf_padded, torch.tensor([0]))) == pytest.approx(
        float(classification_loss(inf_padded[:, :2], torch.tensor([0]))))
