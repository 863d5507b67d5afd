"""The hub path, offline: a local stand-in laid out like the hub's parquet repos.

Each stand-in is a folder with parquet files and a README.md whose YAML ``configs:`` header
maps config names to data files (how nyu-mll/glue, aps/super_glue and google/boolq declare
theirs); its path is passed as ``hub_id``. The same content is also written as official
local files, and both paths must give the same rows and prompts.
"""

from __future__ import annotations

import pytest

from curvzo.errors import DataError
from tests.helpers import load_task, write_hub_repo, write_jsonl

pytestmark = pytest.mark.usefixtures("hub_offline")  # no network, a throwaway datasets cache

SST2_TRAIN = [("hide new secretions from the parental units ", 0), ("a gripping , funny film ", 1),
              ('the "best" part ', 1)]
SST2_TEST = [("it 's a charming and often affecting journey . ", 1), ("unflinchingly bleak ", 0)]


def test_sst2_hub_matches_local_files(tmp_path):
    hub = write_hub_repo(tmp_path / "glue", "sst2", {
        "train": [{"sentence": s, "label": y, "idx": i} for i, (s, y) in enumerate(SST2_TRAIN)],
        "validation": [{"sentence": s, "label": y, "idx": i} for i, (s, y) in enumerate(SST2_TEST)],
    })
    local = tmp_path / "data" / "glue" / "SST-2"
    local.mkdir(parents=True)
    for file_name, rows in (("train.tsv", SST2_TRAIN), ("dev.tsv", SST2_TEST)):
        (local / file_name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))

    task = load_task("sst2", hub_id=str(hub))
    from_hub, from_files = task.load_pools(None), task.load_pools(str(tmp_path / "data"))
    assert from_hub.train == from_files.train == [{"sentence": s, "label": y} for s, y in SST2_TRAIN]
    assert from_hub.test == from_files.test
    assert [task.render(row) for row in from_hub.test] == [task.render(row) for row in from_files.test]
    assert from_hub.source.startswith(f"hub {hub}/sst2") and from_files.source.startswith("local glue/SST-2")


NLI_PAIRS = [("The cat sat.", "A cat sat."), ("It rained.", "It was dry."), ("He may come.", "He comes.")]


@pytest.mark.parametrize(("name", "names", "label_names"), [
    ("rte", ["entailment", "not_entailment"], ["entailment", "not_entailment", "not_entailment"]),
    ("cb", ["entailment", "contradiction", "neutral"], ["neutral", "contradiction", "entailment"]),
])
def test_superglue_hub_matches_local_files(tmp_path, name, names, label_names):
    # `names` is the hub's label order (its class indices); the local files carry the strings.
    records = [{"premise": p, "hypothesis": h, "label": y, "idx": i}
               for i, ((p, h), y) in enumerate(zip(NLI_PAIRS, label_names))]
    hub_rows = [{**record, "label": names.index(record["label"])} for record in records]
    hub = write_hub_repo(tmp_path / "super_glue", name, {"train": hub_rows, "validation": hub_rows[::-1]})
    subdir = tmp_path / "data" / "super_glue" / name.upper()
    write_jsonl(subdir / "train.jsonl", records)
    write_jsonl(subdir / "val.jsonl", records[::-1])

    task = load_task(name, hub_id=str(hub))
    from_hub, from_files = task.load_pools(None), task.load_pools(str(tmp_path / "data"))
    assert from_hub.train == from_files.train
    assert from_hub.test == from_files.test
    assert [row["label"] for row in from_hub.train] == [names.index(y) for y in label_names]
    assert [task.render(row) for row in from_hub.train] == [task.render(row) for row in from_files.train]


BOOLQ = [("is france in europe", "France is a country in Europe.", True),
         ("can fish fly?", "Fish swim.", False)]


def test_boolq_answer_and_label_schemas_normalise_alike(tmp_path):
    google = write_hub_repo(tmp_path / "boolq", None, {
        "train": [{"question": q, "passage": p, "answer": a} for q, p, a in BOOLQ],
        "validation": [{"question": q, "passage": p, "answer": a} for q, p, a in BOOLQ[::-1]],
    })
    superglue = write_hub_repo(tmp_path / "super_glue", "boolq", {
        "train": [{"question": q, "passage": p, "idx": i, "label": int(a)} for i, (q, p, a) in enumerate(BOOLQ)],
        "validation": [{"question": q, "passage": p, "idx": 0, "label": int(a)} for q, p, a in BOOLQ[::-1]],
    })
    from_google = load_task("boolq", hub_id=str(google)).load_pools(None)
    from_superglue = load_task("boolq", hub_id=str(superglue), hub_config="boolq").load_pools(None)
    expected = [{"question": q, "passage": p, "answer": a} for q, p, a in BOOLQ]
    assert from_google.train == from_superglue.train == expected
    assert from_google.test == from_superglue.test == expected[::-1]
    example = load_task("boolq").render(from_google.train[1])
    assert (example.prompt, example.options[example.label]) == ("Fish swim. Can fish fly?\n", "No")


def test_hidden_test_labels_are_rejected(tmp_path):
    hub = write_hub_repo(tmp_path / "glue", "sst2", {
        "train": [{"sentence": "fine", "label": 1, "idx": 0}],
        "test": [{"sentence": "unknown", "label": -1, "idx": 0}],
    })
    with pytest.raises(DataError, match=r"\[test\] row 0: label -1 is not an integer in 0..1"):
        load_task("sst2", hub_id=str(hub), hub_test_split="test").load_pools(None)


def test_unreachable_hub_dataset_is_a_data_error():
    with pytest.raises(DataError, match="cannot load hub dataset curvzo-tests/no-such-dataset") as info:
        load_task("rte", hub_id="curvzo-tests/no-such-dataset").load_pools(None)
    assert "paths.data_dir" in str(info.value) and "\n" not in str(info.value)
