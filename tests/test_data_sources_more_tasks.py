"""Hub rows and official-file rows of the same content normalise and render identically.

For WSC, WiC, MultiRC, COPA, ReCoRD, SQuAD and DROP each test writes one small content set both
as a local hub stand-in (parquet + README ``configs:`` header, rows as the HF conversion scripts
write them; passed as ``hub_id``, offline) and as official files, then compares the pools. The
official readers of ReCoRD, SQuAD and DROP (absent from shared/data) are checked here too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curvzo.data import Example, Pools, Task
from curvzo.data.qa_tasks import drop_gold
from tests.helpers import load_task, write_hub_repo, write_jsonl

pytestmark = pytest.mark.usefixtures("hub_offline")  # no network, a throwaway datasets cache

def write_json(path: Path, document) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))


def both_sources(tmp_path: Path, name: str, hub: Path, **overrides) -> tuple[Task, Pools, Pools]:
    task = load_task(name, hub_id=str(hub), **overrides)
    return task, task.load_pools(None), task.load_pools(str(tmp_path / "data"))


def assert_same(task: Task, from_hub: Pools, from_files: Pools) -> None:
    assert from_hub.train == from_files.train
    assert from_hub.test == from_files.test
    for pool in ("train", "test"):
        hub_examples = [task.render(row) for row in getattr(from_hub, pool)]
        assert hub_examples == [task.render(row) for row in getattr(from_files, pool)]


# ------------------------------------------------------------------------------------- WSC

WSC_LOCAL = [
    {"text": "Mark told Pete many lies about himself. He should have been more skeptical.",
     "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 8, "span2_text": "He"}, "idx": 0, "label": True},
    # The official file capitalises a mid-sentence span; wsc.fixed (and the local reader) use the text's case.
    {"text": "Sam put the table on the rug because it was flat.",
     "target": {"span1_index": 2, "span1_text": "The table", "span2_index": 8, "span2_text": "it"}, "idx": 1,
     "label": False},
]
WSC_HUB = [
    {"text": WSC_LOCAL[0]["text"], "span1_index": 0, "span2_index": 8, "span1_text": "Mark", "span2_text": "He",
     "idx": 0, "label": 1},
    {"text": WSC_LOCAL[1]["text"], "span1_index": 2, "span2_index": 8, "span1_text": "the table", "span2_text": "it",
     "idx": 1, "label": 0},
]


def test_wsc_hub_matches_local_files_including_the_wsc_fixed_span_correction(tmp_path):
    hub = write_hub_repo(tmp_path / "super_glue", "wsc.fixed", {"train": WSC_HUB, "validation": WSC_HUB[::-1]})
    write_jsonl(tmp_path / "data" / "super_glue" / "WSC" / "train.jsonl", WSC_LOCAL)
    write_jsonl(tmp_path / "data" / "super_glue" / "WSC" / "val.jsonl", WSC_LOCAL[::-1])
    task, from_hub, from_files = both_sources(tmp_path, "wsc", hub)
    assert_same(task, from_hub, from_files)
    assert from_files.train[1] == {"text": WSC_LOCAL[1]["text"], "span1_text": "the table", "span2_text": "it",
                                   "label": 0}
    assert task.render(from_files.train[1]).prompt.endswith('pronoun "it" refer to the table? Yes or No?\n')


# ------------------------------------------------------------------------------------- WiC

WIC_LOCAL = [
    {"word": "place", "sentence1": "Come to my place.", "sentence2": "No place for them.", "idx": 0, "label": False,
     "start1": 11, "start2": 3, "end1": 16, "end2": 8, "version": 1.1},
    {"word": "run", "sentence1": "Run home.", "sentence2": "I run daily.", "idx": 1, "label": True,
     "start1": 0, "start2": 2, "end1": 3, "end2": 5, "version": 1.1},
]


def test_wic_hub_matches_local_files(tmp_path):
    hub_rows = [{key: record[key] for key in ("word", "sentence1", "sentence2", "start1", "start2", "end1", "end2",
                                              "idx")} | {"label": int(record["label"])} for record in WIC_LOCAL]
    hub = write_hub_repo(tmp_path / "super_glue", "wic", {"train": hub_rows, "validation": hub_rows})
    write_jsonl(tmp_path / "data" / "super_glue" / "WiC" / "train.jsonl", WIC_LOCAL)
    write_jsonl(tmp_path / "data" / "super_glue" / "WiC" / "val.jsonl", WIC_LOCAL)
    task, from_hub, from_files = both_sources(tmp_path, "wic", hub)
    assert_same(task, from_hub, from_files)
    assert [row["label"] for row in from_files.train] == [0, 1]


# --------------------------------------------------------------------------------- MultiRC

MULTIRC_LOCAL = [
    {"idx": 0, "version": 1.1, "passage": {"text": "Para zero.", "questions": [
        {"question": "Q0?", "idx": 0,
         "answers": [{"text": "a", "idx": 0, "label": 0}, {"text": "b", "idx": 1, "label": 1}]},
        {"question": "Q1?", "idx": 1, "answers": [{"text": "c", "idx": 2, "label": 1}]},
    ]}},
    {"idx": 1, "version": 1.1, "passage": {"text": "Para one.", "questions": [
        {"question": "Q2?", "idx": 2, "answers": [{"text": "d", "idx": 3, "label": 0}]},
    ]}},
]


def multirc_hub_rows(records: list[dict]) -> list[dict]:
    """The hub rows, as the HF super_glue script flattens the official records."""
    return [
        {"paragraph": record["passage"]["text"], "question": question["question"], "answer": answer["text"],
         "idx": {"paragraph": record["idx"], "question": question["idx"], "answer": answer["idx"]},
         "label": int(answer["label"])}
        for record in records for question in record["passage"]["questions"] for answer in question["answers"]
    ]


def test_multirc_hub_matches_flattened_local_files(tmp_path):
    hub_rows = multirc_hub_rows(MULTIRC_LOCAL)
    hub = write_hub_repo(tmp_path / "super_glue", "multirc", {"train": hub_rows, "validation": hub_rows[:3]})
    write_jsonl(tmp_path / "data" / "super_glue" / "MultiRC" / "train.jsonl", MULTIRC_LOCAL)
    write_jsonl(tmp_path / "data" / "super_glue" / "MultiRC" / "val.jsonl", MULTIRC_LOCAL[:1])
    task, from_hub, from_files = both_sources(tmp_path, "multirc", hub)
    assert from_hub.train == from_files.train == [
        {"paragraph": "Para zero.", "question": "Q0?", "answer": "a", "label": 0},
        {"paragraph": "Para zero.", "question": "Q0?", "answer": "b", "label": 1},
        {"paragraph": "Para zero.", "question": "Q1?", "answer": "c", "label": 1},
        {"paragraph": "Para one.", "question": "Q2?", "answer": "d", "label": 0},
    ]
    assert len(from_files.test) == 3
    assert_same(task, from_hub, from_files)


# ------------------------------------------------------------------------------------ COPA

COPA_LOCAL = [
    {"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
     "choice2": "The grass was cut.", "question": "cause", "label": 0, "idx": 0},
    {"premise": "I poured water on my sleeping friend.", "choice1": "My friend awoke.",
     "choice2": "I was thirsty.", "question": "effect", "label": 1, "idx": 1},
]


def test_copa_hub_matches_local_files_with_two_candidates(tmp_path):
    hub = write_hub_repo(tmp_path / "super_glue", "copa", {"train": COPA_LOCAL, "validation": COPA_LOCAL})
    write_jsonl(tmp_path / "data" / "super_glue" / "COPA" / "train.jsonl", COPA_LOCAL)
    write_jsonl(tmp_path / "data" / "super_glue" / "COPA" / "val.jsonl", COPA_LOCAL)
    task, from_hub, from_files = both_sources(tmp_path, "copa", hub)
    assert_same(task, from_hub, from_files)
    example = task.render(from_files.train[1])
    assert example == Example("I poured water on my sleeping friend so",
                              (" my friend awoke.", " I was thirsty."), 1)


# ---------------------------------------------------------------------------------- ReCoRD

RECORD_TEXT = "Obama met Merkel in Berlin. Merkel said Berlin was proud.\n@highlight\nObama in Germany"


def span(text: str, needle: str, occurrence: int = 0) -> dict:
    """An official entity/answer span (``end`` inclusive) of the ``occurrence``-th ``needle``."""
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(needle, start + 1)
    return {"start": start, "end": start + len(needle) - 1}


RECORD_LOCAL = [{
    "source": "Daily mail",
    "passage": {"text": RECORD_TEXT, "entities": [
        # listed out of order and with repeats: the reader orders by start and keeps first mentions
        span(RECORD_TEXT, "Germany"), span(RECORD_TEXT, "Merkel", 1), span(RECORD_TEXT, "Obama"),
        span(RECORD_TEXT, "Berlin"), span(RECORD_TEXT, "Merkel"), span(RECORD_TEXT, "Obama", 1),
        span(RECORD_TEXT, "Berlin", 1),
    ]},
    "qas": [
        {"query": "@placeholder hosted the visit.", "idx": 0,
         "answers": [{**span(RECORD_TEXT, "Merkel", 1), "text": "Merkel"},
                     {**span(RECORD_TEXT, "Merkel"), "text": "Merkel"}]},
        {"query": "The visit to @placeholder ended.", "idx": 1,
         "answers": [{**span(RECORD_TEXT, "Germany"), "text": "Germany"},
                     {**span(RECORD_TEXT, "Berlin"), "text": "Berlin"}]},
    ],
    "idx": 0,
}]
RECORD_ENTITIES = ["Obama", "Merkel", "Berlin", "Germany"]


def test_record_local_reader_builds_one_row_per_query_with_unique_ordered_entities(tmp_path):
    write_jsonl(tmp_path / "data" / "super_glue" / "ReCoRD" / "train.jsonl", RECORD_LOCAL)
    write_jsonl(tmp_path / "data" / "super_glue" / "ReCoRD" / "val.jsonl", RECORD_LOCAL)
    task = load_task("record")
    pools = task.load_pools(str(tmp_path / "data"))
    assert pools.train == [
        {"passage": RECORD_TEXT, "query": "@placeholder hosted the visit.", "entities": RECORD_ENTITIES,
         "answers": ["Merkel"]},
        {"passage": RECORD_TEXT, "query": "The visit to @placeholder ended.", "entities": RECORD_ENTITIES,
         "answers": ["Berlin", "Germany"]},  # distinct answer texts, sorted
    ]
    examples = [task.render(row) for row in pools.train]
    assert [len(example.options) for example in examples] == [4, 4]  # one candidate per distinct entity
    assert [(example.label, example.correct_options) for example in examples] == [(1, (1,)), (2, (2, 3))]
    assert examples[1].options[3] == " The visit to Germany ended."
    assert examples[0].prompt == "Obama met Merkel in Berlin. Merkel said Berlin was proud.\n- Obama in Germany\n-"


def test_record_hub_matches_local_files(tmp_path):
    hub_rows = [
        {"passage": RECORD_TEXT, "query": qa["query"], "entities": RECORD_ENTITIES,
         "entity_spans": [{"text": RECORD_TEXT[e["start"]:e["end"] + 1], "start": e["start"], "end": e["end"] + 1}
                          for e in RECORD_LOCAL[0]["passage"]["entities"]],
         "answers": sorted({answer["text"] for answer in qa["answers"]}),
         "idx": {"passage": 0, "query": qa["idx"]}}
        for qa in RECORD_LOCAL[0]["qas"]
    ]
    hub = write_hub_repo(tmp_path / "super_glue", "record", {"train": hub_rows, "validation": hub_rows})
    write_jsonl(tmp_path / "data" / "super_glue" / "ReCoRD" / "train.jsonl", RECORD_LOCAL)
    write_jsonl(tmp_path / "data" / "super_glue" / "ReCoRD" / "val.jsonl", RECORD_LOCAL)
    task, from_hub, from_files = both_sources(tmp_path, "record", hub)
    assert_same(task, from_hub, from_files)


# ----------------------------------------------------------------------------------- SQuAD

SQUAD_QAS = [  # (title, context, question, answers)
    ("Normans", "The Normans were in France.", "In what country is Normandy located?", ["France", "France"]),
    ("Normans", "The Normans were in France.", "Who was in France? ", ["The Normans", "Normans"]),
    ("Super_Bowl_50", "Denver won Super Bowl 50.", "Who won?", ["Denver"]),
]


def squad_official(qas: list[tuple]) -> dict:
    """An official SQuAD v1.1 document: articles by title, paragraphs by context."""
    data: list[dict] = []
    for title, context, question, answers in qas:
        if not data or data[-1]["title"] != title:
            data.append({"title": title, "paragraphs": []})
        paragraphs = data[-1]["paragraphs"]
        if not paragraphs or paragraphs[-1]["context"] != context:
            paragraphs.append({"context": context, "qas": []})
        paragraphs[-1]["qas"].append({"question": question, "id": f"q{len(paragraphs[-1]['qas'])}", "answers": [
            {"answer_start": context.find(answer), "text": answer} for answer in answers]})
    return {"version": "1.1", "data": data}


def test_squad_hub_matches_official_json(tmp_path):
    hub_rows = [{"id": f"id{i}", "title": t, "context": c, "question": q,
                 "answers": {"text": a, "answer_start": [c.find(x) for x in a]}}
                for i, (t, c, q, a) in enumerate(SQUAD_QAS)]
    hub = write_hub_repo(tmp_path / "squad", "plain_text", {"train": hub_rows, "validation": hub_rows[2:]})
    write_json(tmp_path / "data" / "squad" / "train-v1.1.json", squad_official(SQUAD_QAS))
    write_json(tmp_path / "data" / "squad" / "dev-v1.1.json", squad_official(SQUAD_QAS[2:]))
    task, from_hub, from_files = both_sources(tmp_path, "squad", hub)
    assert from_files.train == [{"title": t, "context": c, "question": q, "answers": a} for t, c, q, a in SQUAD_QAS]
    assert_same(task, from_hub, from_files)
    example = task.render(from_files.train[1])
    assert example.prompt.endswith("Question: Who was in France?\nAnswer:")
    assert (example.options, example.label, example.answers) == ((" The Normans\n",), 0, ("The Normans", "Normans"))
    assert from_files.source == "local squad (train-v1.1.json, dev-v1.1.json)"


# ------------------------------------------------------------------------------------ DROP

def drop_answer(number: str = "", date: tuple[str, str, str] = ("", "", ""), spans: list[str] | None = None) -> dict:
    day, month, year = date
    return {"number": number, "date": {"day": day, "month": month, "year": year}, "spans": spans or []}


DROP_TRAIN = {
    "nfl_1": {"passage": "The Bears kicked 3 field goals in March 2021.", "qa_pairs": [
        {"question": "How many field goals?", "query_id": "a", "answer": drop_answer(number="3"),
         "validated_answers": []},
        {"question": "When?", "query_id": "b", "answer": drop_answer(date=("", "March", "2021")),
         "validated_answers": []},
        # both a number and spans: the hub conversion drops this question
        {"question": "Broken?", "query_id": "c", "answer": drop_answer(number="1", spans=["one"]),
         "validated_answers": []},
    ]},
    "history_2": {"passage": "Ann and Bob met on 9 May 1990.", "qa_pairs": [
        {"question": "Who met? ", "query_id": "d", "answer": drop_answer(spans=["Ann", "Bob"]),
         "validated_answers": []},
        # no answer at all: dropped too
        {"question": "Empty?", "query_id": "e", "answer": drop_answer(), "validated_answers": []},
    ]},
}
DROP_DEV = {
    "history_3": {"passage": "Ann and Bob met on 9 May 1990.", "qa_pairs": [
        # the hub's validation gold comes from validated_answers; `answer` is not used
        {"question": "When did they meet?", "query_id": "f", "answer": drop_answer(spans=["ignored"]),
         "validated_answers": [drop_answer(date=("9", "May", "1990")), drop_answer(spans=["9 May 1990"])]},
    ]},
}


def test_drop_gold_lists_follow_the_hub_conversion():
    def gold(*answers):
        return drop_gold([(f"a[{i}]", answer) for i, answer in enumerate(answers)])

    assert gold(drop_answer(number="12")) == ["12"]
    assert gold(drop_answer(date=("9", "March", "2021"))) == ["9 March 2021"]
    assert gold(drop_answer(date=("", "", "2021"))) == ["2021"]
    assert gold(drop_answer(date=("9", "", "2021"))) == ["9  2021"]  # " ".join(parts).strip(), as the hub
    assert gold(drop_answer(spans=["Ann", "Bob"]), drop_answer(number="2")) == ["Ann", "Bob", "2"]


def test_drop_hub_matches_official_json(tmp_path):
    hub_train = [
        {"section_id": "nfl_1", "query_id": "a", "passage": DROP_TRAIN["nfl_1"]["passage"],
         "question": "How many field goals?", "answers_spans": {"spans": ["3"], "types": ["number"]}},
        {"section_id": "nfl_1", "query_id": "b", "passage": DROP_TRAIN["nfl_1"]["passage"],
         "question": "When?", "answers_spans": {"spans": ["March 2021"], "types": ["date"]}},
        {"section_id": "history_2", "query_id": "d", "passage": DROP_TRAIN["history_2"]["passage"],
         "question": "Who met? ", "answers_spans": {"spans": ["Ann", "Bob"], "types": ["span", "span"]}},
    ]
    hub_dev = [{"section_id": "history_3", "query_id": "f", "passage": DROP_DEV["history_3"]["passage"],
                "question": "When did they meet?",
                "answers_spans": {"spans": ["9 May 1990", "9 May 1990"], "types": ["date", "span"]}}]
    hub = write_hub_repo(tmp_path / "drop", None, {"train": hub_train, "validation": hub_dev})
    write_json(tmp_path / "data" / "drop" / "drop_dataset_train.json", DROP_TRAIN)
    write_json(tmp_path / "data" / "drop" / "drop_dataset_dev.json", DROP_DEV)
    task, from_hub, from_files = both_sources(tmp_path, "drop", hub)
    assert [row["answers_spans"] for row in from_files.train] == [["3"], ["March 2021"], ["Ann", "Bob"]]
    assert_same(task, from_hub, from_files)
    assert "skipped 2 + 0 qa pairs" in from_files.source
    example = task.render(from_files.test[0])
    assert example.prompt == "Passage: Ann and Bob met on 9 May 1990.\nQuestion: When did they meet?\nAnswer:"
    assert (example.options, example.answers) == ((" 9 May 1990\n",), ("9 May 1990", "9 May 1990"))
