"""Bad data directories and malformed lines end with one DataError line naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from curvzo.data import Task
from curvzo.errors import DataError

CONF_TASK = Path(__file__).resolve().parents[1] / "conf" / "task"

RTE_OK = {"premise": "Cats purr.", "hypothesis": "Cats make sounds.", "label": "entailment", "idx": 0}


def load_task(name: str) -> Task:
    return instantiate(OmegaConf.load(CONF_TASK / f"{name}.yaml"))


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


def data_error(name: str, data_dir: Path) -> str:
    with pytest.raises(DataError) as info:
        load_task(name).load_pools(str(data_dir))
    message = str(info.value)
    assert "\n" not in message
    return message


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
