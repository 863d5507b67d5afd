"""The official WSC, WiC, MultiRC and COPA files (protocol.md §3.2, §11): pools, MeZO splits, candidates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curvzo.data import load_splits
from tests.helpers import load_task

NAMES = ("wsc", "wic", "multirc", "copa")  # pool and split sizes: tests/test_data_local.py


@pytest.fixture(scope="module")
def pools(shared_data_dir):
    return {name: load_task(name).load_pools(str(shared_data_dir)) for name in NAMES}


def test_sources_name_the_official_files(pools):
    for name, folder in zip(NAMES, ("WSC", "WiC", "MultiRC", "COPA")):
        assert pools[name].source == f"local super_glue/{folder} (train.jsonl, val.jsonl)"


def test_candidate_counts(shared_data_dir):
    for name, count in (("wsc", 2), ("wic", 2), ("multirc", 2), ("copa", 2)):
        splits = load_splits(load_task(name), str(shared_data_dir), 1000, 500, 1000, data_seed=0)
        assert {len(ex.options) for ex in splits.train + splits.dev + splits.test} == {count}, name


def test_copa_options_are_the_two_choices_in_order(shared_data_dir, pools):
    task = load_task("copa")
    example = task.render(pools["copa"].test[0])
    # val.jsonl line 1: "The man turned on the faucet." effect; choice2 "Water flowed from the spout." is gold
    assert example.prompt == "The man turned on the faucet so"
    assert example.options == (" the toilet filled with water.", " water flowed from the spout.")
    assert example.label == 1
    # Choices starting with the word "I" keep it capitalised.
    kept = [ex for ex in map(task.render, pools["copa"].train) for option in ex.options if option.startswith(" I ")]
    assert len(kept) >= 10


def test_label_balance_matches_the_protocol(pools):
    # protocol.md §3.4: WSC test pool 66/104 False (63.5 % "always No"); WiC 319/319.
    assert [row["label"] for row in pools["wsc"].test].count(0) == 66
    assert [row["label"] for row in pools["wic"].test].count(0) == 319
    assert [row["label"] for row in pools["copa"].test].count(0) == 55


def test_multirc_rows_are_flattened_in_file_order(shared_data_dir, pools):
    path = Path(shared_data_dir) / "super_glue" / "MultiRC" / "val.jsonl"
    expected = [
        {"paragraph": record["passage"]["text"], "question": question["question"], "answer": answer["text"],
         "label": answer["label"]}
        for record in map(json.loads, path.read_text().splitlines())
        for question in record["passage"]["questions"] for answer in question["answers"]
    ]
    assert pools["multirc"].test == expected


def test_wsc_local_spans_get_the_wsc_fixed_correction(shared_data_dir, pools):
    # 88 train spans of the official file differ in case (or a final ".") from the text; after the
    # hub's wsc.fixed correction every span occurs verbatim in its sentence.
    path = Path(shared_data_dir) / "super_glue" / "WSC" / "train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    changed = sum(row[key] != record["target"][key] for row, record in zip(pools["wsc"].train, records)
                  for key in ("span1_text", "span2_text"))
    assert changed == 88
    assert all(row["span1_text"] in row["text"] and row["span2_text"] in row["text"]
               for row in pools["wsc"].train + pools["wsc"].test)
    example = load_task("wsc").render(pools["wsc"].train[13])  # line 14: "the lawyer" → "The lawyer"
    assert 'refer to The lawyer? Yes or No?\n' in example.prompt
