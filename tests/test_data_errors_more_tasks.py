"""Malformed official files of the new tasks end with one DataError line naming file and line or JSON path."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import data_error, load_task


def write_superglue(data_dir: Path, task: str, train: list, val: list | None = None) -> Path:
    """train.jsonl / val.jsonl from records (dicts are dumped as JSON, strings written as they are)."""
    task_dir = data_dir / "super_glue" / task
    task_dir.mkdir(parents=True)
    for file_name, lines in (("train.jsonl", train), ("val.jsonl", val if val is not None else train)):
        (task_dir / file_name).write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                                                  for line in lines))
    return task_dir


WSC_OK = {"text": "Mark lied. He was caught.", "idx": 0, "label": True,
          "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 2, "span2_text": "He"}}


def test_wsc_errors(tmp_path):
    write_superglue(tmp_path / "a", "WSC", [WSC_OK, {key: v for key, v in WSC_OK.items() if key != "target"}])
    assert "WSC/train.jsonl:2: missing field 'target'" in data_error("wsc", tmp_path / "a")
    bad_index = {**WSC_OK, "target": {**WSC_OK["target"], "span1_index": "0"}}
    write_superglue(tmp_path / "b", "WSC", [WSC_OK], [WSC_OK, bad_index])
    assert "WSC/val.jsonl:2: target: field 'span1_index' must be an integer, got '0'" in data_error(
        "wsc", tmp_path / "b")
    write_superglue(tmp_path / "c", "WSC", [{**WSC_OK, "label": 1}])
    assert "WSC/train.jsonl:1: label 1 is not one of true, false" in data_error("wsc", tmp_path / "c")
    # A span that is not in the text is corrected by its word index, which must exist.
    out_of_range = {**WSC_OK, "target": {**WSC_OK["target"], "span1_text": "The liar", "span1_index": 9}}
    write_superglue(tmp_path / "d", "WSC", [out_of_range])
    assert "train.jsonl:1: target: span1_index 9 is not a word index of text (5 words)" in data_error(
        "wsc", tmp_path / "d")


def test_wic_string_label_and_malformed_json(tmp_path):
    ok = {"word": "run", "sentence1": "Run.", "sentence2": "I run.", "label": False}
    write_superglue(tmp_path / "a", "WiC", [ok, {**ok, "label": "true"}])
    assert "WiC/train.jsonl:2: label 'true' is not one of true, false" in data_error("wic", tmp_path / "a")
    write_superglue(tmp_path / "b", "WiC", [ok, ok, '{"word": "run",'])
    assert "WiC/train.jsonl:3: malformed JSON" in data_error("wic", tmp_path / "b")


def test_multirc_nested_errors_name_line_and_path(tmp_path):
    answers = [{"text": "a", "idx": 0, "label": 0}, {"text": "b", "idx": 1}]
    record = {"idx": 0, "passage": {"text": "P.", "questions": [{"question": "Q?", "idx": 0, "answers": answers}]}}
    write_superglue(tmp_path / "a", "MultiRC", [record])
    assert "MultiRC/train.jsonl:1: passage.questions[0].answers[1]: missing field 'label'" in data_error(
        "multirc", tmp_path / "a")
    answers[1]["label"] = 2
    write_superglue(tmp_path / "b", "MultiRC", [record])
    assert "train.jsonl:1: passage.questions[0].answers[1]: label 2 is not an integer in 0..1" in data_error(
        "multirc", tmp_path / "b")
    write_superglue(tmp_path / "c", "MultiRC", [{"idx": 0, "passage": {"text": "P.", "questions": {}}}])
    assert "train.jsonl:1: passage: field 'questions' must be a list, got dict" in data_error("multirc", tmp_path / "c")


def test_multirc_accepts_boolean_labels(tmp_path):
    answers = [{"text": "a", "idx": 0, "label": True}, {"text": "b", "idx": 1, "label": 0}]
    record = {"idx": 0, "passage": {"text": "P.", "questions": [{"question": "Q?", "idx": 0, "answers": answers}]}}
    write_superglue(tmp_path, "MultiRC", [record])
    assert [row["label"] for row in load_task("multirc").load_pools(str(tmp_path)).train] == [1, 0]


def test_copa_errors(tmp_path):
    ok = {"premise": "P.", "choice1": "A.", "choice2": "B.", "question": "cause", "label": 0, "idx": 0}
    write_superglue(tmp_path / "a", "COPA", [ok], [ok, {**ok, "question": "why"}])
    assert "COPA/val.jsonl:2: question 'why' is not one of cause, effect" in data_error("copa", tmp_path / "a")
    write_superglue(tmp_path / "b", "COPA", [{**ok, "label": 2}])
    assert "COPA/train.jsonl:1: label 2 is not an integer in 0..1" in data_error("copa", tmp_path / "b")


RECORD_OK = {"idx": 0, "passage": {"text": "Obama met Merkel.", "entities": [{"start": 0, "end": 4},
                                                                            {"start": 10, "end": 15}]},
             "qas": [{"idx": 0, "query": "@placeholder smiled.",
                      "answers": [{"start": 10, "end": 15, "text": "Merkel"}]}]}


def test_record_errors(tmp_path):
    outside = json.loads(json.dumps(RECORD_OK))
    outside["passage"]["entities"][1]["end"] = 17
    write_superglue(tmp_path / "a", "ReCoRD", [RECORD_OK, outside])
    assert "ReCoRD/train.jsonl:2: passage.entities[1]: span 10..17 is not inside the passage (17 chars)" in data_error(
        "record", tmp_path / "a")
    not_an_entity = json.loads(json.dumps(RECORD_OK))
    not_an_entity["qas"][0]["answers"][0]["text"] = "Angela"
    write_superglue(tmp_path / "b", "ReCoRD", [RECORD_OK], [not_an_entity])
    assert "ReCoRD/val.jsonl:1: qas[0]: answer 'Angela' is not one of the passage entities" in data_error(
        "record", tmp_path / "b")
    hidden = json.loads(json.dumps(RECORD_OK))
    hidden["qas"][0]["answers"] = []
    write_superglue(tmp_path / "c", "ReCoRD", [RECORD_OK], [hidden])
    assert "ReCoRD/val.jsonl:1: qas[0]: no gold answers" in data_error("record", tmp_path / "c")
    no_query = json.loads(json.dumps(RECORD_OK))
    del no_query["qas"][0]["query"]
    write_superglue(tmp_path / "d", "ReCoRD", [no_query])
    assert "ReCoRD/train.jsonl:1: qas[0]: missing field 'query'" in data_error("record", tmp_path / "d")


def write_squad(data_dir: Path, train: str | dict, dev: str | dict | None = None) -> None:
    task_dir = data_dir / "squad"
    task_dir.mkdir(parents=True)
    for file_name, document in (("train-v1.1.json", train), ("dev-v1.1.json", dev if dev is not None else train)):
        (task_dir / file_name).write_text(document if isinstance(document, str) else json.dumps(document, indent=1))


SQUAD_OK = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "C.", "qas": [
    {"id": "0", "question": "Q?", "answers": [{"answer_start": 0, "text": "C"}]},
    {"id": "1", "question": "R?", "answers": [{"answer_start": 0, "text": "C"}]},
]}]}]}


def test_squad_errors_name_the_json_path(tmp_path):
    missing = json.loads(json.dumps(SQUAD_OK))
    del missing["data"][0]["paragraphs"][0]["qas"][1]["question"]
    write_squad(tmp_path / "a", SQUAD_OK, missing)
    assert data_error("squad", tmp_path / "a").endswith(
        "squad/dev-v1.1.json: data[0].paragraphs[0].qas[1]: missing field 'question'")
    no_answers = json.loads(json.dumps(SQUAD_OK))
    no_answers["data"][0]["paragraphs"][0]["qas"][0]["answers"] = []
    write_squad(tmp_path / "b", no_answers)
    assert "train-v1.1.json: data[0].paragraphs[0].qas[0]: no gold answers" in data_error("squad", tmp_path / "b")
    bad_text = json.loads(json.dumps(SQUAD_OK))
    bad_text["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["text"] = 7
    write_squad(tmp_path / "c", bad_text)
    assert ("train-v1.1.json: data[0].paragraphs[0].qas[0].answers[0]: field 'text' must be a string, got int"
            in data_error("squad", tmp_path / "c"))
    write_squad(tmp_path / "d", '{"data": [\n  {"title": "T",,}\n]}')
    assert "squad/train-v1.1.json:2: malformed JSON" in data_error("squad", tmp_path / "d")
    write_squad(tmp_path / "e", "[]")
    assert "train-v1.1.json: expected a JSON object at the top level, got list" in data_error("squad", tmp_path / "e")


def write_drop(data_dir: Path, train: dict, dev: dict) -> None:
    task_dir = data_dir / "drop"
    task_dir.mkdir(parents=True)
    (task_dir / "drop_dataset_train.json").write_text(json.dumps(train))
    (task_dir / "drop_dataset_dev.json").write_text(json.dumps(dev))


def drop_qa(**answer) -> dict:
    full = {"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": [], **answer}
    return {"question": "Q?", "query_id": "q", "answer": full, "validated_answers": [full]}


def test_drop_errors_name_the_json_path(tmp_path):
    ok = {"p1": {"passage": "P.", "qa_pairs": [drop_qa(number="3")]}}
    write_drop(tmp_path / "a", {"p1": {"passage": "P.", "qa_pairs": [drop_qa(number="3"), drop_qa(number=3)]}}, ok)
    assert "drop_dataset_train.json: p1.qa_pairs[1].answer: field 'number' must be a string, got int" in data_error(
        "drop", tmp_path / "a")
    no_validated = {"p1": {"passage": "P.",
                           "qa_pairs": [{"question": "Q?", "answer": ok["p1"]["qa_pairs"][0]["answer"]}]}}
    write_drop(tmp_path / "b", ok, no_validated)
    assert "drop_dataset_dev.json: p1.qa_pairs[0]: missing field 'validated_answers'" in data_error(
        "drop", tmp_path / "b")
    bad_date = {"p1": {"passage": "P.", "qa_pairs": [drop_qa(date={"day": 9, "month": "", "year": ""})]}}
    write_drop(tmp_path / "c", bad_date, ok)
    assert "p1.qa_pairs[0].answer.date: field 'day' must be a string, got int" in data_error("drop", tmp_path / "c")
    write_drop(tmp_path / "d", {"p1": {"passage": "P.", "qa_pairs": [drop_qa()]}}, ok)
    assert "drop_dataset_train.json: file holds no examples" in data_error("drop", tmp_path / "d")


def test_missing_official_files(tmp_path):
    (tmp_path / "super_glue" / "ReCoRD").mkdir(parents=True)
    assert data_error("record", tmp_path) == f"missing data file {tmp_path / 'super_glue' / 'ReCoRD' / 'train.jsonl'}"
    assert data_error("squad", tmp_path) == f"missing data directory {tmp_path / 'squad'}"
    (tmp_path / "drop").mkdir()
    assert data_error("drop", tmp_path) == f"missing data file {tmp_path / 'drop' / 'drop_dataset_train.json'}"
