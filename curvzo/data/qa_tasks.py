"""The generation tasks SQuAD (v1.1) and DROP with MeZO's prompt templates (protocol.md §2, §4, §7).

Each task is its own class, built by Hydra from ``conf/task/<name>.yaml``. Rows are kept in the
schema of the hub's parquet conversions, with the gold list flattened to a list of strings:

- SQuAD (``rajpurkar/squad``): ``title``, ``context``, ``question``, ``answers`` = the hub's
  ``answers.text`` (every annotator's answer, duplicates kept);
- DROP (``ucinlp/drop``): ``passage``, ``question``, ``answers_spans`` = the hub's
  ``answers_spans.spans``.

An example's single option is the training target `` {gold[0]}\\n`` (label 0) and ``answers``
holds the whole gold list, scored by F1/EM as the maximum over it (``AnswerGeneration``).

Offline the official JSON files are read (not present in ``shared/data``; tests build small
ones). Problems are one-line :class:`DataError`s naming the file and the JSON path of the bad
value, e.g. ``.../dev-v1.1.json: data[3].paragraphs[0].qas[2]: missing field 'question'``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curvzo.data.base import OfficialTask, Pools
from curvzo.data.readers import (
    list_field,
    object_field,
    require_file,
    text_field,
    text_list_field,
)
from curvzo.errors import ConfigError, DataError
from curvzo.example import Example
from curvzo.objectives import AnswerGeneration

__all__ = ["DROP", "SQuAD"]


def read_json(path: Path, kind: type) -> Any:
    """The JSON document in ``path``, whose top level must be a ``kind`` (dict or list)."""
    data = require_file(path).read_bytes()
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(document, kind):
        raise DataError(f"{path}: expected a JSON {'object' if kind is dict else 'array'} at the top level, "
                        f"got {type(document).__name__}")
    return document


def _child(where: str, key: str) -> str:
    """The location of ``key`` inside ``where``: ``"file: a.b"``, where ``"file:"`` is the document root."""
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def _items(parent: dict[str, Any], key: str, where: str) -> list[tuple[str, dict[str, Any]]]:
    """The objects in the list ``parent[key]``, each with its location (``where`` + JSON path)."""
    items = []
    for i, item in enumerate(list_field(parent, key, where)):
        item_where = _child(where, f"{key}[{i}]")
        if not isinstance(item, dict):
            raise DataError(f"{item_where}: expected an object, got {type(item).__name__}")
        items.append((item_where, item))
    return items


class _GenerationTask(OfficialTask):
    """An official task scored by greedy generation; ``max_new_tokens`` bounds each answer."""

    def __init__(self, name: str, *, max_new_tokens: int = 50, **official) -> None:
        super().__init__(name, **official)  # hub and local sources as every OfficialTask
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"task {name}: max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        self.objective = AnswerGeneration(max_new_tokens)

    @staticmethod
    def example(prompt: str, gold: list[str]) -> Example:
        return Example(prompt, (f" {gold[0]}\n",), 0, answers=tuple(gold))


class SQuAD(_GenerationTask):
    """SQuAD v1.1: prompt ``Title: {title}\\nContext: {context}\\nQuestion: {question.strip()}\\nAnswer:``.

    The official files ``train-v1.1.json`` (train pool) and ``dev-v1.1.json`` (test pool) are
    ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"question", "answers": [{"text"}]}]}]}]}``;
    each qa is one row, in file order, with ``answers`` = its answers' texts in order, as the HF
    ``squad`` script builds the hub rows. A qa without answers is an error (MeZO asserts one).
    """

    FILES = ("train-v1.1.json", "dev-v1.1.json")

    def load_local(self, task_dir: Path) -> Pools:
        train, test = (self._read(task_dir / file_name) for file_name in self.FILES)
        return Pools(train, test, f"local {self.local_subdir} ({', '.join(self.FILES)})")

    def _read(self, path: Path) -> list[dict[str, Any]]:
        rows = []
        for a_where, article in _items(read_json(path, dict), "data", f"{path}:"):
            title = text_field(article, "title", a_where)
            for p_where, paragraph in _items(article, "paragraphs", a_where):
                context = text_field(paragraph, "context", p_where)
                for q_where, qa in _items(paragraph, "qas", p_where):
                    answers = [text_field(answer, "text", where) for where, answer in _items(qa, "answers", q_where)]
                    rows.append(self._check({"title": title, "context": context,
                                             "question": text_field(qa, "question", q_where), "answers": answers},
                                            q_where))
        return rows

    @staticmethod
    def _check(row: dict[str, Any], where: str) -> dict[str, Any]:
        if not row["answers"]:
            raise DataError(f"{where}: no gold answers")
        return row

    def normalise_hub(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        return self._check({
            "title": text_field(record, "title", where),
            "context": text_field(record, "context", where),
            "question": text_field(record, "question", where),
            "answers": text_list_field(object_field(record, "answers", where), "text", f"{where}: answers"),
        }, where)

    def render(self, row: dict[str, Any]) -> Example:
        prompt = (f"Title: {row['title']}\nContext: {row['context']}\n"
                  f"Question: {row['question'].strip()}\nAnswer:")
        return self.example(prompt, row["answers"])


class _MalformedAnswer(Exception):
    """A DROP answer the hub conversion drops (both a number and a date, say)."""


def drop_gold(answers: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The gold strings of a DROP question from its answer objects, as the HF ``drop`` script
    builds ``answers_spans.spans`` (the hub's rows).

    Each answer ``{"number": str, "date": {"day", "month", "year"}, "spans": [str]}`` gives its
    ``number`` if non-empty, else its date if any date part is non-empty, written
    ``" ".join([day, month, year]).strip()`` (so "9 March 2021", "March 2021"; a missing part
    between two present ones leaves two spaces, as on the hub), else its spans in order; the
    lists of all answers are concatenated. An answer with more than one kind set, or a question
    with no gold string at all, raises :class:`_MalformedAnswer` (the hub skips those questions).
    A missing ``number``, ``date`` or ``spans``, or a value of the wrong type, is a :class:`DataError`
    (absent date parts read as ``""``, as in the HF script).

    This matches the simpler rule "spans if any, else the number, else the date" for every
    well-formed answer (exactly one kind set); building it the hub's way keeps local and hub rows
    identical, including the validation split's several validated answers.
    """
    gold = []
    for where, answer in answers:
        number = text_field(answer, "number", where)
        date = object_field(answer, "date", where)
        parts = []
        for key in ("day", "month", "year"):
            part = date.get(key, "")  # the HF script reads absent parts as ""
            if not isinstance(part, str):
                raise DataError(f"{where}.date: field {key!r} must be a string, got {type(part).__name__}")
            parts.append(part)
        spans = text_list_field(answer, "spans", where)
        if sum((number != "", any(parts), bool(spans))) > 1:
            raise _MalformedAnswer
        if number != "":
            gold.append(number)
        elif any(parts):
            gold.append(" ".join(parts).strip())
        gold.extend(spans)
    if not gold:
        raise _MalformedAnswer
    return gold


class DROP(_GenerationTask):
    """DROP: prompt ``Passage: {passage}\\nQuestion: {question.strip()}\\nAnswer:``.

    The official files ``drop_dataset_train.json`` (train pool) and ``drop_dataset_dev.json``
    (test pool) map a passage id to ``{"passage", "qa_pairs": [{"question", "answer",
    "validated_answers"}]}``. Each qa pair is one row, in file order, and its gold list is built
    exactly as the hub's ``answers_spans.spans`` (HF ``drop`` script, see :func:`drop_gold`):
    from ``[answer]`` in the train file and from ``validated_answers`` in the dev file (the hub's
    validation split ignores ``answer``). Qa pairs whose answers the hub conversion rejects
    (9 train, 1 dev in the official files) are skipped the same way, so the pools have the hub's
    rows (77,400 / 9,535); the source line reports how many were skipped.
    """

    FILES = ("drop_dataset_train.json", "drop_dataset_dev.json")

    def load_local(self, task_dir: Path) -> Pools:
        (train, train_skipped), (test, test_skipped) = (
            self._read(task_dir / file_name, answer_key)
            for file_name, answer_key in zip(self.FILES, ("answer", "validated_answers"))
        )
        return Pools(train, test, (
            f"local {self.local_subdir} ({self.FILES[0]} gold from answer, {self.FILES[1]} gold from "
            f"validated_answers; skipped {train_skipped} + {test_skipped} qa pairs with malformed answers, "
            "as the hub conversion does)"
        ))

    @staticmethod
    def _read(path: Path, answer_key: str) -> tuple[list[dict[str, Any]], int]:
        rows, skipped = [], 0
        for passage_id, section in read_json(path, dict).items():
            s_where = f"{path}: {passage_id}"
            if not isinstance(section, dict):
                raise DataError(f"{s_where}: expected an object, got {type(section).__name__}")
            passage = text_field(section, "passage", s_where)
            for q_where, qa in _items(section, "qa_pairs", s_where):
                question = text_field(qa, "question", q_where)
                if answer_key == "answer":
                    answers = [(_child(q_where, "answer"), object_field(qa, "answer", q_where))]
                else:
                    answers = _items(qa, answer_key, q_where)
                try:
                    gold = drop_gold(answers)
                except _MalformedAnswer:
                    skipped += 1
                    continue
                rows.append({"passage": passage, "question": question, "answers_spans": gold})
        if not rows:
            raise DataError(f"{path}: file holds no examples")
        return rows, skipped

    def normalise_hub(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        spans = text_list_field(object_field(record, "answers_spans", where), "spans", f"{where}: answers_spans")
        if not spans:
            raise DataError(f"{where}: no gold answers")
        return {
            "passage": text_field(record, "passage", where),
            "question": text_field(record, "question", where),
            "answers_spans": spans,
        }

    def render(self, row: dict[str, Any]) -> Example:
        prompt = f"Passage: {row['passage']}\nQuestion: {row['question'].strip()}\nAnswer:"
        return self.example(prompt, row["answers_spans"])
