"""The classification tasks and their MeZO prompt templates (protocol.md §2, §4, §11).

Each task is its own class, built by Hydra from ``conf/task/<name>.yaml``. Rows are kept in
the hub's schema whichever source they come from:

- SST-2: ``sentence`` str, ``label`` 0 negative / 1 positive;
- RTE: ``premise``, ``hypothesis``, ``label`` 0 entailment / 1 not_entailment;
- CB: ``premise``, ``hypothesis``, ``label`` 0 entailment / 1 contradiction / 2 neutral;
- BoolQ: ``question``, ``passage``, ``answer`` bool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curvzo.data.base import OfficialTask, Pools, Task
from curvzo.data.readers import (
    bool_label,
    index_label,
    name_label,
    read_jsonl,
    read_tsv,
    require_file,
    text_field,
)
from curvzo.data.tweets import TweetSentiment
from curvzo.errors import ConfigError, DataError
from curvzo.example import Example

__all__ = ["BoolQ", "CB", "OfficialTask", "Pools", "RTE", "SST2", "Task", "TweetSentiment"]


class SST2(OfficialTask):
    """GLUE SST-2; local files ``train.tsv`` (train pool) and ``dev.tsv`` (test pool)."""

    OPTIONS = (" terrible", " great")

    def load_local(self, task_dir: Path) -> Pools:
        train, test = (
            [self._normalise_local(row, where) for where, row in
             read_tsv(require_file(task_dir / file_name), ("sentence", "label"))]
            for file_name in ("train.tsv", "dev.tsv")
        )
        return Pools(train, test, f"local {self.local_subdir} (train.tsv, dev.tsv)")

    @staticmethod
    def _normalise_local(row: dict[str, str], where: str) -> dict[str, Any]:
        if row["label"] not in ("0", "1"):
            raise DataError(f"{where}: label {row['label']!r} is not one of 0, 1")
        return {"sentence": row["sentence"], "label": int(row["label"])}

    def normalise_hub(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        return {"sentence": text_field(record, "sentence", where), "label": index_label(record, 2, where)}

    def render(self, row: dict[str, Any]) -> Example:
        return Example(f"{row['sentence'].strip()} It was", self.OPTIONS, row["label"])


class _EntailmentTask(OfficialTask):
    """A SuperGLUE premise/hypothesis task shipped as ``train.jsonl`` + ``val.jsonl``."""

    # Official string labels in hub label-index order.
    LABEL_NAMES: tuple[str, ...]

    def load_local(self, task_dir: Path) -> Pools:
        train, test = (
            [self._normalise_local(record, where) for where, record in read_jsonl(require_file(task_dir / file_name))]
            for file_name in ("train.jsonl", "val.jsonl")
        )
        return Pools(train, test, f"local {self.local_subdir} (train.jsonl, val.jsonl)")

    def _normalise_local(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        return {
            "premise": text_field(record, "premise", where),
            "hypothesis": text_field(record, "hypothesis", where),
            "label": name_label(record, self.LABEL_NAMES, where),
        }

    def normalise_hub(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        return {
            "premise": text_field(record, "premise", where),
            "hypothesis": text_field(record, "hypothesis", where),
            "label": index_label(record, len(self.LABEL_NAMES), where),
        }


class RTE(_EntailmentTask):
    """SuperGLUE RTE: entailment → ``Yes``, not_entailment → ``No``."""

    LABEL_NAMES = ("entailment", "not_entailment")
    OPTIONS = ("Yes", "No")

    def render(self, row: dict[str, Any]) -> Example:
        prompt = f'{row["premise"]}\nDoes this mean that "{row["hypothesis"]}" is true? Yes or No?\n'
        return Example(prompt, self.OPTIONS, row["label"])


class CB(_EntailmentTask):
    """SuperGLUE CommitmentBank: entailment → ``Yes``, contradiction → ``No``, neutral → ``Maybe``."""

    LABEL_NAMES = ("entailment", "contradiction", "neutral")
    OPTIONS = ("Yes", "No", "Maybe")

    def render(self, row: dict[str, Any]) -> Example:
        prompt = f'Suppose {row["premise"]} Can we infer that "{row["hypothesis"]}"? Yes, No, or Maybe?\n'
        return Example(prompt, self.OPTIONS, row["label"])


class BoolQ(OfficialTask):
    """BoolQ with MeZO's default ``BoolQTemplateV3``; gold ``Yes`` iff the answer is true.

    Locally, ``train.jsonl`` + ``val.jsonl`` are the pools when both exist. The official
    distribution here has only ``val.jsonl``; then, when ``valsplit_test_size`` is set, the pools
    follow protocol.md §11 (``boolq_valsplit``): the first ``valsplit_test_size`` rows of a
    ``RandomState(valsplit_seed)`` permutation are the test pool and the remaining rows, in file
    order, the train pool. The pools' source line says which rule applied.
    """

    OPTIONS = ("Yes", "No")

    def __init__(self, name: str, *, valsplit_test_size: int | None = 1000, valsplit_seed: int = 0,
                 **official) -> None:
        super().__init__(name, **official)
        if valsplit_test_size is not None and (isinstance(valsplit_test_size, bool)
                                               or not isinstance(valsplit_test_size, int) or valsplit_test_size < 1):
            raise ConfigError(f"task {name}: valsplit_test_size must be a positive integer or null, "
                              f"got {valsplit_test_size!r}")
        if isinstance(valsplit_seed, bool) or not isinstance(valsplit_seed, int) or not 0 <= valsplit_seed < 2**32:
            raise ConfigError(f"task {name}: valsplit_seed must be an integer in [0, 2**32), got {valsplit_seed!r}")
        self.valsplit_test_size, self.valsplit_seed = valsplit_test_size, valsplit_seed

    def _read(self, path: Path) -> list[dict[str, Any]]:
        return [self._normalise_local(record, where) for where, record in read_jsonl(require_file(path))]

    def load_local(self, task_dir: Path) -> Pools:
        if (task_dir / "train.jsonl").is_file():
            return Pools(self._read(task_dir / "train.jsonl"), self._read(task_dir / "val.jsonl"),
                         f"local {self.local_subdir} (train.jsonl, val.jsonl)")
        if self.valsplit_test_size is None:
            raise DataError(f"missing data file {task_dir / 'train.jsonl'} (set task.valsplit_test_size to carve "
                            "a train pool out of val.jsonl, protocol.md §11)")
        rows = self._read(task_dir / "val.jsonl")
        size = self.valsplit_test_size
        if len(rows) <= size:
            raise DataError(f"{task_dir / 'val.jsonl'}: {len(rows)} rows cannot be split into a "
                            f"{size}-row test pool and a train pool (task.valsplit_test_size)")
        order = np.random.RandomState(self.valsplit_seed).permutation(len(rows))
        test = [rows[i] for i in order[:size]]
        train = [rows[i] for i in sorted(order[size:])]
        return Pools(
            train,
            test,
            f"boolq_valsplit: train pool carved from val.jsonl (local {self.local_subdir}/val.jsonl permuted "
            f"with RandomState({self.valsplit_seed}); first {size} = test pool, "
            f"remaining {len(train)} in file order = train pool)",
        )

    @staticmethod
    def _normalise_local(record: dict[str, Any], where: str) -> dict[str, Any]:
        return {
            "question": text_field(record, "question", where),
            "passage": text_field(record, "passage", where),
            "answer": bool_label(record, "label", where),
        }

    def normalise_hub(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        # google/boolq stores `answer` as a bool; the SuperGLUE conversion stores `label` as a
        # class index (0 False, 1 True).
        if "answer" in record:
            answer = bool_label(record, "answer", where)
        elif "label" in record:
            label = record["label"]
            answer = label if isinstance(label, bool) else bool(index_label(record, 2, where))
        else:
            raise DataError(f"{where}: missing field 'answer' (or 'label')")
        return {
            "question": text_field(record, "question", where),
            "passage": text_field(record, "passage", where),
            "answer": answer,
        }

    def render(self, row: dict[str, Any]) -> Example:
        question = row["question"]
        if not question.endswith("?"):
            question += "?"
        question = question[0].upper() + question[1:]
        return Example(f"{row['passage']} {question}\n", self.OPTIONS, 0 if row["answer"] else 1)
