"""Golden prompt rendering (protocol.md §4): exact prompt and option strings per task."""

from __future__ import annotations

import pytest

from curvzo.data import CB, RTE, SST2, BoolQ, Example, TweetSentiment
from tests.helpers import CONF_TASK, load_task


def scored(example: Example, option: int) -> str:
    """The sequence the encoder scores (protocol.md §4: stripped of spaces only)."""
    return (example.prompt + example.options[option]).strip(" ")


def test_sst2_strips_the_sentence_and_keeps_the_leading_space_of_options():
    example = load_task("sst2").render({"sentence": "  a gripping , funny film . ", "label": 1})
    assert example == Example("a gripping , funny film . It was", (" terrible", " great"), 1)
    assert scored(example, 1) == "a gripping , funny film . It was great"


def test_rte_prompt():
    row = {"premise": "Cats purr.", "hypothesis": "Cats make sounds.", "label": 1}
    example = load_task("rte").render(row)
    assert example.prompt == 'Cats purr.\nDoes this mean that "Cats make sounds." is true? Yes or No?\n'
    assert example.options == ("Yes", "No")
    assert example.label == 1
    # The trailing newline survives the space-only strip, so the option follows it directly.
    assert scored(example, 0).endswith("Yes or No?\nYes")


def test_cb_prompt_and_neutral_maps_to_maybe():
    row = {"premise": "A: I think so. B: Maybe.", "hypothesis": "he thinks so", "label": 2}
    example = load_task("cb").render(row)
    assert example.prompt == 'Suppose A: I think so. B: Maybe. Can we infer that "he thinks so"? Yes, No, or Maybe?\n'
    assert example.options == ("Yes", "No", "Maybe")
    assert example.options[example.label] == "Maybe"


@pytest.mark.parametrize(
    ("question", "shown"),
    [
        ("is the sky blue", "Is the sky blue?"),  # question mark added, first letter upper-cased
        ("does it rain in london?", "Does it rain in london?"),  # no second question mark
        ("iPhone sales rose", "IPhone sales rose?"),  # only the first character changes case
    ],
)
def test_boolq_v3_question_rule(question: str, shown: str):
    row = {"question": question, "passage": "Passage text.", "answer": True}
    example = load_task("boolq").render(row)
    assert example.prompt == f"Passage text. {shown}\n"
    assert example.options == ("Yes", "No")
    assert example.label == 0


def test_boolq_false_answer_is_no():
    example = load_task("boolq").render({"question": "q", "passage": "p", "answer": False})
    assert example.options[example.label] == "No"


def test_tweets_default_template_matches_sst2():
    example = load_task("tweets").render({"text": "worst flight ever", "label": 0})
    assert example == Example("worst flight ever It was", (" terrible", " great"), 0)


def test_tweets_template_is_configurable():
    task = load_task("tweets", prompt_suffix="\nSentiment:", options=[" negative", " positive"])
    example = task.render({"text": "love it", "label": 1})
    assert example == Example("love it\nSentiment:", (" negative", " positive"), 1)


def test_configs_build_the_right_classes_with_mezo_dev_caps():
    built = {name: load_task(name) for name in ("sst2", "rte", "cb", "boolq", "tweets")}
    assert [type(task) for task in built.values()] == [SST2, RTE, CB, BoolQ, TweetSentiment]
    assert {name: task.name for name, task in built.items()} == {name: name for name in built}
    assert {name: task.dev_cap for name, task in built.items()} == {
        "sst2": None, "rte": None, "cb": 100, "boolq": None, "tweets": None,
    }


def test_every_config_starts_with_a_launch_command_and_comments_every_key():
    for path in sorted(CONF_TASK.glob("*.yaml")):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("# launch: curvzo-run task="), path.name
        for line in lines:
            if line and not line.startswith("#"):
                assert "#" in line.split(":", 1)[1], f"{path.name}: uncommented key {line!r}"
