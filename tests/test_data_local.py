"""The official local files (protocol.md §3.2, §11): pool sizes, MeZO split sizes, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from curvzo.data import load_splits
from curvzo.data.sampling import sample_train_dev_indices
from tests.helpers import load_task

# task: (train pool, test pool, train, dev, test) under the MeZO defaults 1000/500/1000.
EXPECTED_SIZES = {
    "sst2": (67_349, 872, 1000, 500, 872),
    "rte": (2_490, 277, 1000, 500, 277),
    "cb": (250, 56, 150, 100, 56),
    "boolq": (2_270, 1_000, 1000, 500, 1000),
    "wsc": (554, 104, 54, 500, 104),  # protocol.faithful_small_pools: the pool runs out after 54 + 500
    "wic": (5_428, 638, 1000, 500, 638),
    "multirc": (27_243, 4_848, 1000, 500, 1000),  # one row per (paragraph, question, answer)
    "copa": (400, 100, 300, 100, 100),  # dev_cap 100
}


@pytest.fixture(scope="module")
def pools(shared_data_dir):
    return {name: load_task(name).load_pools(str(shared_data_dir)) for name in EXPECTED_SIZES}


@pytest.mark.parametrize("name", list(EXPECTED_SIZES))
def test_pool_sizes_and_source(pools, name):
    train_pool, test_pool, *_ = EXPECTED_SIZES[name]
    assert (len(pools[name].train), len(pools[name].test)) == (train_pool, test_pool)
    assert "\n" not in pools[name].source


@pytest.mark.parametrize("name", list(EXPECTED_SIZES))
def test_split_sizes_under_mezo_defaults(shared_data_dir, name):
    splits = load_splits(load_task(name), str(shared_data_dir), 1000, 500, 1000, data_seed=0)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == EXPECTED_SIZES[name][2:]


@pytest.mark.parametrize("name", ["rte", "cb"])
def test_sampling_is_deterministic_and_seed_dependent(shared_data_dir, name):
    task = load_task(name)
    first = load_splits(task, str(shared_data_dir), 1000, 500, 1000, data_seed=0)
    again = load_splits(task, str(shared_data_dir), 1000, 500, 1000, data_seed=0)
    other = load_splits(task, str(shared_data_dir), 1000, 500, 1000, data_seed=1)
    assert first == again
    assert first.train != other.train and first.dev != other.dev
    # The test pools here are used whole, so another seed only reorders them.
    assert first.test != other.test and sorted(map(repr, first.test)) == sorted(map(repr, other.test))


def test_sst2_sampled_examples_are_the_permuted_pool_rows(shared_data_dir, pools):
    task = load_task("sst2")
    splits = load_splits(task, str(shared_data_dir), 1000, 500, 1000, data_seed=0)
    train_idx, dev_idx = sample_train_dev_indices(67_349, 1000, 500, 0)
    assert set(train_idx).isdisjoint(dev_idx)
    perm = np.random.RandomState(0).permutation(67_349)
    assert train_idx + dev_idx == perm[:1500].tolist()
    assert splits.train == [task.render(pools["sst2"].train[i]) for i in train_idx]
    assert splits.dev == [task.render(pools["sst2"].train[i]) for i in dev_idx]
    assert splits.test == [task.render(pools["sst2"].test[i]) for i in np.random.RandomState(0).permutation(872)]


@pytest.mark.parametrize("name", ["cb", "boolq"])
def test_train_dev_test_are_disjoint(shared_data_dir, name):
    # CB and BoolQ pools hold no duplicate rows, so disjointness can be checked on the examples.
    splits = load_splits(load_task(name), str(shared_data_dir), 1000, 500, 1000, data_seed=0)
    train, dev, test = set(splits.train), set(splits.dev), set(splits.test)
    assert len(train) == len(splits.train) and len(dev) == len(splits.dev)
    assert train.isdisjoint(dev) and train.isdisjoint(test) and dev.isdisjoint(test)


def test_boolq_valsplit_follows_protocol_rule(shared_data_dir, pools):
    task = load_task("boolq")
    val_path = Path(shared_data_dir) / "super_glue" / "BoolQ" / "val.jsonl"
    records = [json.loads(line) for line in val_path.read_text().splitlines() if line.strip()]
    rows = [{"question": r["question"], "passage": r["passage"], "answer": r["label"]} for r in records]
    order = np.random.RandomState(0).permutation(len(rows))
    assert pools["boolq"].test == [rows[i] for i in order[:1000]]
    # The train pool keeps the file order of the rows not in the test pool.
    assert pools["boolq"].train == [rows[i] for i in sorted(order[1000:])]
    assert pools["boolq"].source.startswith("boolq_valsplit:")
    assert task.render(pools["boolq"].train[0]).prompt.endswith("?\n")


def test_rte_labels_follow_hub_indices(pools):
    # Official RTE train has 1249 entailment (hub 0) and 1241 not_entailment (hub 1) rows.
    labels = [row["label"] for row in pools["rte"].train]
    assert (labels.count(0), labels.count(1)) == (1249, 1241)
