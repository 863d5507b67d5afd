"""Training objectives and evaluation per task type (protocol.md §6–§7), against direct computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from curvzo.example import Example
from curvzo.generation import greedy_decode
from curvzo.metrics import f1_score
from curvzo.objectives import AnswerGeneration, CandidateClassification, GoldOptionLM
from curvzo.scoring import gold_only
from tests.helpers import tiny_model

COPA_LIKE = [
    Example("My body cast a shadow over the grass because", (" the sun was rising.", " the grass was cut."), 0),
    Example("The women met for coffee because", (" the cafe reopened.", " they wanted to catch up with each other."), 1),
]


@pytest.fixture(scope="module", params=["tiny-opt", "tiny-llama"])
def loaded(request):
    return tiny_model(request.param)


def option_logprobs(model, tokenizer, prompt: str, option: str) -> list[float]:
    """Log-probabilities of each option token from one unpadded full-vocabulary forward pass."""
    p = tokenizer(prompt.strip(" "))["input_ids"]
    f = tokenizer((prompt + option).strip(" "))["input_ids"]
    with torch.no_grad():
        logprobs = F.log_softmax(model(input_ids=torch.tensor([f])).logits[0].float(), dim=-1)
    return [float(logprobs[i - 1, f[i]]) for i in range(len(p), len(f))]


def test_gold_lm_loss_averages_over_every_gold_token_in_the_batch(loaded):
    objective = GoldOptionLM()
    batch = objective.training_batch(COPA_LIKE, loaded.tokenizer, 512)
    with torch.inference_mode():
        loss = float(objective.loss(loaded.model, batch))
    tokens = [lp for ex in COPA_LIKE for lp in option_logprobs(loaded.model, loaded.tokenizer, ex.prompt,
                                                               ex.options[ex.label])]
    per_example = [sum(option_logprobs(loaded.model, loaded.tokenizer, ex.prompt, ex.options[ex.label])) /
                   len(option_logprobs(loaded.model, loaded.tokenizer, ex.prompt, ex.options[ex.label]))
                   for ex in COPA_LIKE]
    assert loss == pytest.approx(-sum(tokens) / len(tokens), abs=1e-5)
    # token-weighted, not example-weighted: the longer second answer weighs more
    assert loss != pytest.approx(-sum(per_example) / len(per_example), abs=1e-4)
    # only the gold option is encoded: one sequence per example
    assert batch.input_ids.shape[0] == len(COPA_LIKE)


def test_multiple_choice_accuracy_counts_any_correct_option(loaded):
    objective = GoldOptionLM()
    # three candidates; whichever the model prefers, listing all three as correct makes it a hit
    ex = Example("The capital of France is", (" Paris.", " Lyon.", " Nice."), 0, correct=(0, 1, 2))
    assert objective.evaluate(loaded.model, loaded.tokenizer, [ex], 4, 512, "cpu")["acc"] == 1.0
    scores = CandidateClassification().evaluate(loaded.model, loaded.tokenizer,
                                                [Example(ex.prompt, ex.options, i) for i in range(3)], 4, 512, "cpu")
    assert scores["acc"] == pytest.approx(1 / 3)  # exactly one of the three labels is the argmax


def test_multiple_choice_dev_loss_is_the_gold_lm_loss(loaded):
    objective = GoldOptionLM()
    result = objective.evaluate(loaded.model, loaded.tokenizer, COPA_LIKE, 1, 512, "cpu")
    batch = objective.training_batch(COPA_LIKE, loaded.tokenizer, 512)
    with torch.inference_mode():
        assert result["loss"] == pytest.approx(float(objective.loss(loaded.model, batch)), abs=1e-5)
    assert result["n"] == 2 and set(result) == {"loss", "acc", "n"}


def test_generation_trains_on_the_target_and_scores_greedy_answers(loaded):
    objective = AnswerGeneration(max_new_tokens=6)
    prompts = ["Title: t\nContext: c\nQuestion: q?\nAnswer:", "Passage: p\nQuestion: r?\nAnswer:"]
    generated = greedy_decode(loaded.model, loaded.tokenizer, prompts, 512, 6, "cpu")
    examples = [
        Example(prompts[0], (" gold one\n",), 0, answers=("gold one", generated[0])),  # second gold = the output
        Example(prompts[1], (" qqqq\n",), 0, answers=("qqqq",)),
    ]
    result = objective.evaluate(loaded.model, loaded.tokenizer, examples, 2, 512, "cpu")
    assert result["em"] == 0.5 and result["n"] == 2
    expected_f1 = (f1_score(generated[0], examples[0].answers) + f1_score(generated[1], examples[1].answers)) / 2
    assert result["f1"] == pytest.approx(expected_f1)
    assert objective.generate(loaded.model, loaded.tokenizer, examples, 1, 512, "cpu") == generated
    batch = objective.training_batch(examples, loaded.tokenizer, 512)
    with torch.inference_mode():
        expected = [lp for ex in examples for lp in option_logprobs(loaded.model, loaded.tokenizer, ex.prompt,
                                                                    ex.options[0])]
        assert float(objective.loss(loaded.model, batch)) == pytest.approx(-sum(expected) / len(expected), abs=1e-5)


def test_generation_sequences_leave_room_for_the_answer(loaded):
    objective = AnswerGeneration(max_new_tokens=50)
    long = Example("word " * 200 + "Answer:", (" yes\n",), 0, answers=("yes",))
    batch = objective.training_batch([long], loaded.tokenizer, 128)
    assert int(batch.attention_mask.sum()) == 128 - 50  # BOS + the last 77 tokens, the target included
    assert batch.token_id.tolist() == loaded.tokenizer(" yes\n", add_special_tokens=False)["input_ids"]


def test_gold_only_keeps_the_label_option():
    ex = Example("p", ("a", "b", "c"), 2, correct=(1, 2))
    assert gold_only(ex) == Example("p", ("c",), 0)


def test_example_rejects_out_of_range_indices():
    with pytest.raises(ValueError):
        Example("p", ("a",), 1)
    with pytest.raises(ValueError):
        Example("p", ("a", "b"), 0, correct=(0, 2))
    with pytest.raises(ValueError):
        AnswerGeneration(max_new_tokens=0)
