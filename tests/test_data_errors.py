"""Bad data directories and malformed lines end with one DataError line naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from curvzo.errors import ConfigError, DataError
from curvzo.utils.instantiate import instantiate
from tests.helpers import CONF_TASK, data_error, load_task

RTE_OK = {"premise": "Cats purr.", "hypothesis": "Cats make sounds.", "label": "entailment", "idx": 0}


def write_rte(data_dir: Path, train_text: str, val_text: str | None = None) -> None:
    task_dir = data_dir / "super_glue" / "RTE"
    task_dir.mkdir(parents=True)
    (task_dir / "train.jsonl").write_text(train_text)
    (task_dir / "val.jsonl").write_text(val_text if val_text is not None else json.dumps(RTE_OK) + "\n")


def write_sst2(data_dir: Path, train_text: str) -> None:
    task_dir = data_dir / "glue" / "SST-2"
    task_dir.mkdir(parents=True)
    (task_dir / "train.tsv").write_text(train_text)
    (task_dir / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")


def test_malformed_json_names_file_and_line(tmp_path):
    write_rte(tmp_path, json.dumps(RTE_OK) + "\n" + '{"premise": "unterminated\n')
    message = data_error("rte", tmp_path)
    assert "train.jsonl:2: malformed JSON" in message


def test_unknown_label_names_file_line_and_allowed_labels(tmp_path):
    bad = {**RTE_OK, "label": "maybe"}
    write_rte(tmp_path, json.dumps(RTE_OK) + "\n", json.dumps(RTE_OK) + "\n" + json.dumps(bad) + "\n")
    message = data_error("rte", tmp_path)
    assert message.endswith("val.jsonl:2: label 'maybe' is not one of entailment, not_entailment")


def test_missing_field_is_reported(tmp_path):
    record = {key: value for key, value in RTE_OK.items() if key != "hypothesis"}
    write_rte(tmp_path, json.dumps(record) + "\n")
    assert "train.jsonl:1: missing field 'hypothesis'" in data_error("rte", tmp_path)


def test_non_object_json_line_is_rejected(tmp_path):
    write_rte(tmp_path, "[1, 2]\n")
    assert "train.jsonl:1: expected a JSON object" in data_error("rte", tmp_path)


def test_blank_trailing_lines_are_fine_but_inner_blank_lines_are_not(tmp_path):
    write_rte(tmp_path / "ok", json.dumps(RTE_OK) + "\n\n\n")
    assert len(load_task("rte").load_pools(str(tmp_path / "ok")).train) == 1
    write_rte(tmp_path / "bad", json.dumps(RTE_OK) + "\n\n" + json.dumps(RTE_OK) + "\n")
    assert "train.jsonl:2: blank line" in data_error("rte", tmp_path / "bad")


def test_wrong_tsv_field_count_names_file_and_line(tmp_path):
    write_sst2(tmp_path, "sentence\tlabel\ngood\t1\na\ttab inside\t0\n")
    assert "train.tsv:3: expected 2 tab-separated fields, got 3" in data_error("sst2", tmp_path)


def test_bad_tsv_label_and_header(tmp_path):
    write_sst2(tmp_path / "label", "sentence\tlabel\ngood\tpositive\n")
    assert "train.tsv:2: label 'positive' is not one of 0, 1" in data_error("sst2", tmp_path / "label")
    write_sst2(tmp_path / "header", "text\tlabel\ngood\t1\n")
    assert "train.tsv:1: header" in data_error("sst2", tmp_path / "header")


def test_boolq_label_must_be_a_json_boolean(tmp_path):
    task_dir = tmp_path / "super_glue" / "BoolQ"
    task_dir.mkdir(parents=True)
    (task_dir / "val.jsonl").write_text(json.dumps({"question": "q", "passage": "p", "label": "true"}) + "\n")
    assert "val.jsonl:1: label 'true' is not one of true, false" in data_error("boolq", tmp_path)


def test_missing_data_directory(tmp_path):
    message = data_error("cb", tmp_path / "nowhere")
    assert message == f"data directory {tmp_path / 'nowhere'} does not exist (set paths.data_dir)"


def test_missing_task_directory(tmp_path):
    assert data_error("cb", tmp_path) == f"missing data directory {tmp_path / 'super_glue' / 'CB'}"


def test_missing_file(tmp_path):
    task_dir = tmp_path / "super_glue" / "CB"
    task_dir.mkdir(parents=True)
    (task_dir / "train.jsonl").write_text(json.dumps({**RTE_OK, "label": "neutral"}) + "\n")
    assert data_error("cb", tmp_path) == f"missing data file {task_dir / 'val.jsonl'}"


def test_empty_file_is_rejected(tmp_path):
    write_rte(tmp_path, "\n")
    assert "train.jsonl: file holds no examples" in data_error("rte", tmp_path)


def write_boolq(data_dir: Path, files: dict[str, int]) -> Path:
    """BoolQ files in the official layout with ``n`` numbered questions each."""
    task_dir = data_dir / "super_glue" / "BoolQ"
    task_dir.mkdir(parents=True)
    for name, n in files.items():
        (task_dir / name).write_text("".join(json.dumps({"question": f"{name} {i}", "passage": "p", "label": i % 2 == 0})
                                             + "\n" for i in range(n)))
    return data_dir


def test_boolq_carves_its_train_pool_only_when_configured(tmp_path):
    carved = load_task("boolq", valsplit_test_size=3).load_pools(str(write_boolq(tmp_path / "a", {"val.jsonl": 5})))
    assert (len(carved.train), len(carved.test)) == (2, 3) and carved.source.startswith("boolq_valsplit:")
    assert "first 3 = test pool, remaining 2" in carved.source
    refused = tmp_path / "b"
    write_boolq(refused, {"val.jsonl": 5})
    with pytest.raises(DataError, match="set task.valsplit_test_size"):
        load_task("boolq", valsplit_test_size=None).load_pools(str(refused))
    with pytest.raises(DataError, match="5 rows cannot be split into a 5-row test pool"):
        load_task("boolq", valsplit_test_size=5).load_pools(str(write_boolq(tmp_path / "c", {"val.jsonl": 5})))
    bad = OmegaConf.merge(OmegaConf.load(CONF_TASK / "boolq.yaml"), {"valsplit_test_size": 0})
    with pytest.raises(ConfigError, match="task boolq: valsplit_test_size must be a positive integer or null"):
        instantiate(bad, "task")  # what curvzo-run does: the task's own one-line error
    official = load_task("boolq").load_pools(str(write_boolq(tmp_path / "d", {"train.jsonl": 4, "val.jsonl": 2})))
    assert [row["question"] for row in official.train] == [f"train.jsonl {i}" for i in range(4)]
    assert (len(official.test), official.source) == (2, "local super_glue/BoolQ (train.jsonl, val.jsonl)")
