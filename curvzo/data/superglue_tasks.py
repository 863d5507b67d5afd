"""SuperGLUE WSC, WiC, MultiRC, COPA and ReCoRD with MeZO's prompt templates (protocol.md §2, §4, §11).

Each task is its own class, built by Hydra from ``conf/task/<name>.yaml``. Rows are kept in the
schema of the hub's parquet conversion (``aps/super_glue``, made by the HF ``super_glue`` script
from the official jsonl files), whichever source they come from; only the fields the template
uses are kept:

- WSC (``wsc.fixed``): ``text``, ``span1_text``, ``span2_text``, ``label`` 0 False / 1 True;
- WiC: ``word``, ``sentence1``, ``sentence2``, ``label`` 0 False / 1 True;
- MultiRC: ``paragraph``, ``question``, ``answer``, ``label`` 0 False / 1 True, one row per
  (paragraph, question, answer) in file order;
- COPA: ``premise``, ``choice1``, ``choice2``, ``question`` (``cause``/``effect``), ``label`` 0
  choice1 / 1 choice2;
- ReCoRD: ``passage``, ``query``, ``entities`` (candidate strings), ``answers`` (gold strings),
  one row per query in file order.

The official files differ from the hub as described in ``shared/data/README.md``: boolean labels
(WSC, WiC), WSC spans under ``target``, nested MultiRC and ReCoRD.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

from curvzo.data.base import OfficialTask, Pools
from curvzo.data.readers import (
    bool_label,
    index_label,
    int_field,
    list_field,
    object_field,
    read_jsonl,
    require_file,
    text_field,
    text_fields,
    text_list_field,
)
from curvzo.errors import DataError
from curvzo.example import Example
from curvzo.objectives import GoldOptionLM

__all__ = ["COPA", "WSC", "MultiRC", "ReCoRD", "WiC"]

YES_NO = ("No", "Yes")  # label 0 (False) → "No", 1 (True) → "Yes"


class _SuperGLUETask(OfficialTask):
    """A SuperGLUE task shipped as ``train.jsonl`` (train pool) + ``val.jsonl`` (test pool)."""

    def load_local(self, task_dir: Path) -> Pools:
        train, test = (
            [row for where, record in read_jsonl(require_file(task_dir / file_name))
             for row in self.rows_from_local(record, where)]
            for file_name in ("train.jsonl", "val.jsonl")
        )
        return Pools(train, test, f"local {self.local_subdir} (train.jsonl, val.jsonl)")

    @abc.abstractmethod
    def rows_from_local(self, record: dict[str, Any], where: str) -> list[dict[str, Any]]:
        """The normalised rows of one official jsonl record (several for MultiRC and ReCoRD)."""


class _OneRowPerLine(_SuperGLUETask):
    """A SuperGLUE task whose official jsonl lines are its rows (WSC, WiC, COPA)."""

    def rows_from_local(self, record: dict[str, Any], where: str) -> list[dict[str, Any]]:
        return [self.normalise_local(record, where)]

    @abc.abstractmethod
    def normalise_local(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        """Check one official record and keep the fields the template uses, in the hub's schema."""


# --------------------------------------------------------------------------------------- WSC

# The two spans the HF `wsc.fixed` correction leaves alone: their words are not contiguous in text.
_WSC_UNFIXABLE_SPANS = ("Kamenev and Zinoviev", "Kamenev, Zinoviev, and Stalin")


def wsc_fixed_span(text: str, span: str, index: int, where: str, key: str) -> str:
    """A span text corrected as the hub's ``wsc.fixed`` config corrects it (HF ``_fix_wst``).

    A span that already occurs in ``text`` is kept. Otherwise its first character takes the case
    of the first character of word ``index`` of ``text`` (``text.split()``; lower-case if that
    character is lower-case, else upper-case), trailing ``.`` are removed and newlines become
    spaces. In the official WSC files this turns e.g. "The table" into "the table" where the
    sentence has "the table" (88 train and 8 val spans), so local rows equal the hub's.
    """
    if span in text or span in _WSC_UNFIXABLE_SPANS:
        return span
    words = text.split()
    if not 0 <= index < len(words):
        raise DataError(f"{where}: {key}_index {index} is not a word index of text ({len(words)} words)")
    first = words[index][0]
    span = (span[0].lower() if first.islower() else span[0].upper()) + span[1:]
    return span.rstrip(".").replace("\n", " ")


class WSC(_OneRowPerLine):
    """SuperGLUE WSC (hub ``wsc.fixed``): False → ``No``, True → ``Yes``.

    With the MeZO defaults its 554-example train pool gives 54 train / 500 dev examples
    (``protocol.faithful_small_pools``, protocol.md §3.2); that follows from the sampling.
    """

    OPTIONS = YES_NO

    def normalise_local(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        text = text_field(record, "text", where)
        target = object_field(record, "target", where)
        target_where = f"{where}: target"
        spans = {
            f"{key}_text": wsc_fixed_span(text, text_field(target, f"{key}_text", target_where),
                                          int_field(target, f"{key}_index", target_where), target_where, key)
            for key in ("span1", "span2")
        }
        return {"text": text, **spans, "label": int(bool_label(record, "label", where))}

    def normalise_hub(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        return {**text_fields(record, ("text", "span1_text", "span2_text"), where),
                "label": index_label(record, 2, where)}

    def render(self, row: dict[str, Any]) -> Example:
        prompt = (f'{row["text"]}\nIn the previous sentence, does the pronoun "{row["span2_text"].lower()}" '
                  f'refer to {row["span1_text"]}? Yes or No?\n')
        return Example(prompt, self.OPTIONS, row["label"])


# --------------------------------------------------------------------------------------- WiC

class WiC(_OneRowPerLine):
    """SuperGLUE Words in Context: False → ``No``, True → ``Yes``."""

    OPTIONS = YES_NO
    FIELDS = ("word", "sentence1", "sentence2")

    def normalise_local(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        return {**text_fields(record, self.FIELDS, where), "label": int(bool_label(record, "label", where))}

    def normalise_hub(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        return {**text_fields(record, self.FIELDS, where), "label": index_label(record, 2, where)}

    def render(self, row: dict[str, Any]) -> Example:
        prompt = (f'Does the word "{row["word"]}" have the same meaning in these two sentences? Yes, No?\n'
                  f'{row["sentence1"]}\n{row["sentence2"]}\n')
        return Example(prompt, self.OPTIONS, row["label"])


# ----------------------------------------------------------------------------------- MultiRC

class MultiRC(_SuperGLUETask):
    """SuperGLUE MultiRC, one example per (paragraph, question, answer): 0 → ``No``, 1 → ``Yes``.

    An official record is a passage ``{"passage": {"text", "questions": [{"question", "answers":
    [{"text", "label"}]}]}}``; it is flattened in file order (passage, then question, then
    answer), which is the hub's row order: 27,243 train / 4,848 val rows. The official label is
    0/1 (a JSON boolean is accepted too, as the HF script casts it with ``bool``).
    """

    OPTIONS = YES_NO

    def rows_from_local(self, record: dict[str, Any], where: str) -> list[dict[str, Any]]:
        passage = object_field(record, "passage", where)
        paragraph = text_field(passage, "text", f"{where}: passage")
        rows = []
        for q, question in enumerate(list_field(passage, "questions", f"{where}: passage")):
            q_where = f"{where}: passage.questions[{q}]"
            if not isinstance(question, dict):
                raise DataError(f"{q_where}: expected an object, got {type(question).__name__}")
            question_text = text_field(question, "question", q_where)
            for a, answer in enumerate(list_field(question, "answers", q_where)):
                a_where = f"{q_where}.answers[{a}]"
                if not isinstance(answer, dict):
                    raise DataError(f"{a_where}: expected an object, got {type(answer).__name__}")
                label = answer.get("label")
                label = int(label) if isinstance(label, bool) else index_label(answer, 2, a_where)
                rows.append({"paragraph": paragraph, "question": question_text,
                             "answer": text_field(answer, "text", a_where), "label": label})
        return rows

    def normalise_hub(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        return {**text_fields(record, ("paragraph", "question", "answer"), where),
                "label": index_label(record, 2, where)}

    def render(self, row: dict[str, Any]) -> Example:
        prompt = (f'{row["paragraph"]}\nQuestion: {row["question"]}\n'
                  f'I found this answer "{row["answer"]}". Is that correct? Yes or No?\n')
        return Example(prompt, self.OPTIONS, row["label"])


# -------------------------------------------------------------------------------------- COPA

def copa_choice(choice: str) -> str:
    """MeZO's ``CopaTemplate.capitalize``: the first space-separated word lower-cased unless it is ``I``."""
    words = choice.split(" ")
    if words[0] != "I":
        words[0] = words[0].lower()
    return " ".join(words)


class COPA(_OneRowPerLine):
    """SuperGLUE COPA as MeZO's ``CopaTemplate``: prompt ``{P} so`` (effect) or ``{P} because``
    (cause), P = premise right-stripped with one final ``.`` removed; options `` {choice}`` with the
    choice's first word lower-cased unless it is ``I``; gold = choice{label+1}.

    Trained with the LM loss on the gold option (protocol.md §6). MeZO caps num_dev at 100
    (conf/task/copa.yaml ``dev_cap``): 300 train / 100 dev / 100 test.
    """

    objective = GoldOptionLM()
    CONJUNCTIONS: ClassVar[dict[str, str]] = {"effect": " so", "cause": " because"}

    def _normalise(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        question = text_field(record, "question", where)
        if question not in self.CONJUNCTIONS:
            raise DataError(f"{where}: question {question!r} is not one of cause, effect")
        return {
            "premise": text_field(record, "premise", where),
            "choice1": text_field(record, "choice1", where),
            "choice2": text_field(record, "choice2", where),
            "question": question,
            "label": index_label(record, 2, where),  # official and hub alike: 0 choice1, 1 choice2
        }

    def normalise_local(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        return self._normalise(record, where)

    def normalise_hub(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        return self._normalise(record, where)

    def render(self, row: dict[str, Any]) -> Example:
        premise = row["premise"].rstrip().removesuffix(".")  # one final "." at most
        prompt = premise + self.CONJUNCTIONS[row["question"]]
        options = tuple(" " + copa_choice(row[key]) for key in ("choice1", "choice2"))
        return Example(prompt, options, row["label"])


# ------------------------------------------------------------------------------------ ReCoRD

class ReCoRD(_SuperGLUETask):
    """SuperGLUE ReCoRD as MeZO's ``ReCoRDTemplateGPT3``: one candidate per entity.

    Prompt ``{passage'}\\n-`` with every ``@highlight\\n`` of the passage replaced by ``- ``;
    option i is `` {query}`` with ``@placeholder`` replaced by ``entities[i]``. The training gold
    (``label``) is the first occurrence in ``entities`` of ``answers[0]``; every entity in
    ``answers`` counts as a hit (``correct``). Trained with the LM loss on the gold option.

    An official record is ``{"passage": {"text", "entities": [{"start", "end"}]}, "qas":
    [{"query", "answers": [{"text", ...}]}]}`` with ``end`` inclusive; it gives one row per query,
    as the HF ``super_glue`` script does: ``entities`` = the distinct texts ``text[start:end+1]``,
    ordered by first start position, and ``answers`` = the distinct answer texts, sorted. (The
    hub keeps the entities in the order of the Python set the script built, which no local
    reader can reproduce; the order only matters for argmax ties and the value of ``label``.)
    """

    objective = GoldOptionLM()

    @staticmethod
    def _check(row: dict[str, Any], where: str) -> dict[str, Any]:
        if not row["answers"]:
            raise DataError(f"{where}: no gold answers (hidden test labels?)")
        if row["answers"][0] not in row["entities"]:
            raise DataError(f"{where}: answer {row['answers'][0]!r} is not one of the passage entities")
        return row

    def rows_from_local(self, record: dict[str, Any], where: str) -> list[dict[str, Any]]:
        passage = object_field(record, "passage", where)
        text = text_field(passage, "text", f"{where}: passage")
        spans = []
        for e, entity in enumerate(list_field(passage, "entities", f"{where}: passage")):
            e_where = f"{where}: passage.entities[{e}]"
            if not isinstance(entity, dict):
                raise DataError(f"{e_where}: expected an object, got {type(entity).__name__}")
            start, end = int_field(entity, "start", e_where), int_field(entity, "end", e_where)
            if not 0 <= start <= end < len(text):
                raise DataError(f"{e_where}: span {start}..{end} is not inside the passage ({len(text)} chars)")
            spans.append((start, text[start:end + 1]))
        entities = list(dict.fromkeys(entity for _, entity in sorted(spans, key=lambda span: span[0])))
        rows = []
        for q, qa in enumerate(list_field(record, "qas", where)):
            q_where = f"{where}: qas[{q}]"
            if not isinstance(qa, dict):
                raise DataError(f"{q_where}: expected an object, got {type(qa).__name__}")
            answers = set()
            for a, answer in enumerate(list_field(qa, "answers", q_where)):
                if not isinstance(answer, dict):
                    raise DataError(f"{q_where}.answers[{a}]: expected an object, got {type(answer).__name__}")
                answers.add(text_field(answer, "text", f"{q_where}.answers[{a}]"))
            row = {"passage": text, "query": text_field(qa, "query", q_where), "entities": entities,
                   "answers": sorted(answers)}
            rows.append(self._check(row, q_where))
        return rows

    def normalise_hub(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        return self._check({
            "passage": text_field(record, "passage", where),
            "query": text_field(record, "query", where),
            "entities": text_list_field(record, "entities", where),
            "answers": text_list_field(record, "answers", where),
        }, where)

    def render(self, row: dict[str, Any]) -> Example:
        passage = row["passage"].replace("@highlight\n", "- ")
        entities, answers = row["entities"], row["answers"]
        options = tuple(" " + row["query"].replace("@placeholder", entity) for entity in entities)
        correct = tuple(i for i, entity in enumerate(entities) if entity in answers)
        return Example(f"{passage}\n-", options, entities.index(answers[0]), correct=correct)
