"""Golden prompts (protocol.md §4) of WSC, WiC, MultiRC, COPA, ReCoRD, SQuAD and DROP, and their configs."""

from __future__ import annotations

import pytest

from curvzo.data import COPA, DROP, WSC, Example, MultiRC, ReCoRD, SQuAD, WiC
from curvzo.errors import ConfigError
from curvzo.objectives import AnswerGeneration, CandidateClassification, GoldOptionLM
from tests.helpers import load_task

NEW_TASKS = ("wsc", "wic", "multirc", "copa", "record", "squad", "drop")


def scored(example: Example, option: int) -> str:
    """The sequence the encoder scores (protocol.md §4: stripped of spaces only)."""
    return (example.prompt + example.options[option]).strip(" ")


def test_wsc_prompt_lower_cases_the_pronoun_only():
    row = {"text": "Mark told Pete many lies about himself. He should have been more skeptical.",
           "span1_text": "Mark", "span2_text": "He", "label": 1}
    example = load_task("wsc").render(row)
    assert example == Example(
        "Mark told Pete many lies about himself. He should have been more skeptical.\n"
        'In the previous sentence, does the pronoun "he" refer to Mark? Yes or No?\n',
        ("No", "Yes"), 1)
    assert scored(example, 1).endswith("Yes or No?\nYes")


def test_wic_prompt():
    row = {"word": "place", "sentence1": "Do you want to come over to my place later?",
           "sentence2": "A political system with no place for the less prominent groups.", "label": 0}
    example = load_task("wic").render(row)
    assert example == Example(
        'Does the word "place" have the same meaning in these two sentences? Yes, No?\n'
        "Do you want to come over to my place later?\n"
        "A political system with no place for the less prominent groups.\n",
        ("No", "Yes"), 0)


def test_multirc_prompt():
    row = {"paragraph": "Sent one. Sent two.", "question": "What happened?", "answer": "Nothing", "label": 1}
    example = load_task("multirc").render(row)
    assert example == Example(
        'Sent one. Sent two.\nQuestion: What happened?\nI found this answer "Nothing". Is that correct? Yes or No?\n',
        ("No", "Yes"), 1)
    assert example.options[example.label] == "Yes"


@pytest.mark.parametrize(("premise", "question", "prompt"), [
    ("My body cast a shadow over the grass.  ", "cause", "My body cast a shadow over the grass because"),
    ("The man turned on the faucet", "effect", "The man turned on the faucet so"),  # no final "." to remove
    ("He waited...", "effect", "He waited.. so"),  # exactly one "." is removed
])
def test_copa_prompt(premise, question, prompt):
    row = {"premise": premise, "choice1": "The sun was rising.", "choice2": "The grass was cut.",
           "question": question, "label": 0}
    example = load_task("copa").render(row)
    assert example == Example(prompt, (" the sun was rising.", " the grass was cut."), 0)


def test_copa_lower_cases_the_first_word_unless_it_is_i():
    row = {"premise": "I tipped the bottle.", "choice1": "I was thirsty.", "choice2": "IBM's shares fell.",
           "question": "cause", "label": 1}
    example = load_task("copa").render(row)
    # "I" stays; any other first word is lower-cased whole, acronyms included (MeZO CopaTemplate).
    assert example.options == (" I was thirsty.", " ibm's shares fell.")
    assert example.label == 1
    assert scored(example, 0) == "I tipped the bottle because I was thirsty."
    row = {**row, "choice1": "I'm late.", "choice2": "It was  cold."}
    assert load_task("copa").render(row).options == (" i'm late.", " it was  cold.")


RECORD_PASSAGE = "Obama met Merkel in Berlin.\n@highlight\nObama visits Germany\n@highlight\nMerkel hosts Obama"


def test_record_prompt_replaces_highlights_and_every_entity_is_an_option():
    row = {"passage": RECORD_PASSAGE, "query": "@placeholder thanked the host.",
           "entities": ["Obama", "Merkel", "Berlin", "Germany"], "answers": ["Merkel"]}
    example = load_task("record").render(row)
    assert example.prompt == "Obama met Merkel in Berlin.\n- Obama visits Germany\n- Merkel hosts Obama\n-"
    assert example.options == (" Obama thanked the host.", " Merkel thanked the host.",
                               " Berlin thanked the host.", " Germany thanked the host.")
    assert (example.label, example.correct_options) == (1, (1,))
    # MeZO ReCoRDTemplateGPT3.verbalize: f"{passage}\n- {query}"
    assert scored(example, 1).endswith("Merkel hosts Obama\n- Merkel thanked the host.")


def test_record_label_is_the_first_occurrence_of_the_first_answer_and_every_answer_counts():
    row = {"passage": "p", "query": "In @placeholder.",
           "entities": ["Merkel", "Obama", "Berlin", "Obama"], "answers": ["Obama", "Berlin"]}
    example = load_task("record").render(row)
    assert example.options == (" In Merkel.", " In Obama.", " In Berlin.", " In Obama.")
    assert example.label == 1
    assert example.correct == example.correct_options == (1, 2, 3)


def test_squad_prompt_and_target():
    row = {"title": "Normans", "context": "The Normans gave their name to Normandy, a region in France.",
           "question": " In what country is Normandy located? ", "answers": ["France", "France", "a region in France"]}
    example = load_task("squad").render(row)
    assert example == Example(
        "Title: Normans\nContext: The Normans gave their name to Normandy, a region in France.\n"
        "Question: In what country is Normandy located?\nAnswer:",
        (" France\n",), 0, answers=("France", "France", "a region in France"))
    assert example.prompt + example.options[0] == example.prompt + " France\n"


def test_drop_prompt_and_target():
    row = {"passage": "The Bears scored 3 field goals.", "question": "How many field goals?\n",
           "answers_spans": ["3", "three"]}
    example = load_task("drop").render(row)
    assert example == Example(
        "Passage: The Bears scored 3 field goals.\nQuestion: How many field goals?\nAnswer:",
        (" 3\n",), 0, answers=("3", "three"))


def test_configs_build_the_right_classes_caps_and_objectives():
    built = {name: load_task(name) for name in NEW_TASKS}
    assert [type(task) for task in built.values()] == [WSC, WiC, MultiRC, COPA, ReCoRD, SQuAD, DROP]
    assert {name: task.name for name, task in built.items()} == {name: name for name in NEW_TASKS}
    assert {name: task.dev_cap for name, task in built.items()} == {
        "wsc": None, "wic": None, "multirc": None, "copa": 100, "record": None, "squad": None, "drop": None,
    }
    assert {name: type(task.objective) for name, task in built.items()} == {
        "wsc": CandidateClassification, "wic": CandidateClassification, "multirc": CandidateClassification,
        "copa": GoldOptionLM, "record": GoldOptionLM, "squad": AnswerGeneration, "drop": AnswerGeneration,
    }
    assert built["squad"].objective.max_new_tokens == built["drop"].objective.max_new_tokens == 50
    assert {(task.hub_id, task.hub_config) for task in built.values()} == {
        ("aps/super_glue", "wsc.fixed"), ("aps/super_glue", "wic"), ("aps/super_glue", "multirc"),
        ("aps/super_glue", "copa"), ("aps/super_glue", "record"), ("rajpurkar/squad", "plain_text"),
        ("ucinlp/drop", None),
    }


def test_existing_tasks_keep_candidate_classification():
    for name in ("sst2", "rte", "cb", "boolq", "tweets"):
        assert type(load_task(name).objective) is CandidateClassification


def test_max_new_tokens_is_configurable_and_checked():
    assert load_task("squad", max_new_tokens=8).objective.max_new_tokens == 8
    with pytest.raises(ConfigError, match="task drop: max_new_tokens must be a positive integer, got 0"):
        DROP("drop", hub_id="ucinlp/drop", hub_config=None, hub_train_split="train", hub_test_split="validation",
             local_subdir="drop", max_new_tokens=0)
