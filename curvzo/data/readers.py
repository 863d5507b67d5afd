"""Strict readers for the official task files and for hub (parquet) datasets.

Every problem is raised as a one-line :class:`DataError` naming the file and 1-based line
number, so a broken data directory ends a run with a message instead of a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from curvzo.errors import DataError


def require_data_dir(data_dir: str | Path) -> Path:
    """Return ``data_dir`` as a path, or raise if it does not exist."""
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist (set paths.data_dir)")
    return path


def require_task_dir(data_dir: str | Path, subdir: str) -> Path:
    """Return ``data_dir/subdir``, raising if either is missing."""
    path = require_data_dir(data_dir) / subdir
    if not path.is_dir():
        raise DataError(f"missing data directory {path}")
    return path


def require_file(path: Path) -> Path:
    """Return ``path``, or raise if it is not a file."""
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    return path


def _content_lines(path: Path) -> list[tuple[int, bytes]]:
    """Numbered lines of ``path`` without their line breaks; trailing blank lines dropped.

    Splitting on b"\\n" only (not ``str.splitlines``) keeps characters such as U+2028, which
    are legal inside sentences and JSON strings, from being taken as line breaks.
    """
    lines = require_file(path).read_bytes().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    numbered = []
    for lineno, line in enumerate(lines, start=1):
        line = line.removesuffix(b"\r")
        if not line.strip():
            raise DataError(f"{path}:{lineno}: blank line inside the file")
        numbered.append((lineno, line))
    if not numbered:
        raise DataError(f"{path}: file holds no examples")
    return numbered


def _decode(path: Path, lineno: int, line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start})") from None


def read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Records of a JSON-lines file, each paired with its ``"file:line"`` location."""
    records = []
    for lineno, line in _content_lines(path):
        try:
            record = json.loads(_decode(path, lineno, line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: malformed JSON ({err})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append((f"{path}:{lineno}", record))
    return records


def read_tsv(path: Path, columns: tuple[str, ...]) -> list[tuple[str, dict[str, str]]]:
    """Rows of a headed, unquoted TSV file (the GLUE layout) with their locations.

    GLUE files are not CSV-quoted (sentences contain bare quote characters), so fields are
    split on tabs only, and every row must have exactly ``len(columns)`` of them.
    """
    lines = _content_lines(path)
    header_lineno, header_bytes = lines[0]
    header = tuple(_decode(path, header_lineno, header_bytes).split("\t"))
    if header != columns:
        raise DataError(f"{path}:{header_lineno}: header {'|'.join(header)!r} is not {'|'.join(columns)!r}")
    rows = []
    for lineno, line in lines[1:]:
        fields = _decode(path, lineno, line).split("\t")
        if len(fields) != len(columns):
            raise DataError(f"{path}:{lineno}: expected {len(columns)} tab-separated fields, got {len(fields)}")
        rows.append((f"{path}:{lineno}", dict(zip(columns, fields))))
    if not rows:
        raise DataError(f"{path}: file holds no examples")
    return rows


def load_hub_split(hub_id: str, hub_config: str | None, split: str) -> list[tuple[str, dict[str, Any]]]:
    """Rows of one split of a hub dataset (or a local dataset directory) with their locations.

    ``datasets>=4`` runs no loading scripts, so ``hub_id`` must name a parquet/data-file
    dataset (or a local directory laid out like one).
    """
    # Imported here: `datasets` takes a second to import and only the hub path needs it.
    import datasets

    name = f"{hub_id}/{hub_config}" if hub_config else hub_id
    try:
        dataset = datasets.load_dataset(hub_id, hub_config, split=split)
    except (OSError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"cannot load hub dataset {name} split {split!r}: {reason} "
            "(offline? set paths.data_dir to read the official files)"
        ) from None
    rows = dataset.to_list()
    if not rows:
        raise DataError(f"hub dataset {name} split {split!r} holds no examples")
    return [(f"hub {name} [{split}] row {index}", row) for index, row in enumerate(rows)]


def text_field(record: dict[str, Any], key: str, where: str) -> str:
    """``record[key]``, which must be present and a string."""
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def object_field(record: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """``record[key]``, which must be present and a JSON object."""
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, dict):
        raise DataError(f"{where}: field {key!r} must be an object, got {type(value).__name__}")
    return value


def list_field(record: dict[str, Any], key: str, where: str) -> list[Any]:
    """``record[key]``, which must be present and a JSON array."""
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, list):
        raise DataError(f"{where}: field {key!r} must be a list, got {type(value).__name__}")
    return value


def int_field(record: dict[str, Any], key: str, where: str) -> int:
    """``record[key]``, which must be present and an integer (not a boolean)."""
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: field {key!r} must be an integer, got {value!r}")
    return value


def text_list_field(record: dict[str, Any], key: str, where: str) -> list[str]:
    """``record[key]``, which must be a list of strings."""
    values = list_field(record, key, where)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"{where}: {key}[{i}] must be a string, got {type(value).__name__}")
    return list(values)


def text_fields(record: dict[str, Any], keys: tuple[str, ...], where: str) -> dict[str, str]:
    """The string fields ``keys`` of ``record``, each checked as :func:`text_field` does."""
    return {key: text_field(record, key, where) for key in keys}


def name_label(record: dict[str, Any], names: tuple[str, ...], where: str) -> int:
    """Index of a string label (the official files' form) in ``names``."""
    if "label" not in record:
        raise DataError(f"{where}: missing field 'label'")
    value = record["label"]
    if not isinstance(value, str) or value not in names:
        raise DataError(f"{where}: label {value!r} is not one of {', '.join(names)}")
    return names.index(value)


def index_label(record: dict[str, Any], num_classes: int, where: str, key: str = "label") -> int:
    """An integer class label (the hub's form), checked to lie in ``range(num_classes)``.

    Hidden test labels are stored as -1 on the hub, so this also catches a test split
    configured by mistake.
    """
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_classes:
        raise DataError(f"{where}: {key} {value!r} is not an integer in 0..{num_classes - 1}")
    return value


def bool_label(record: dict[str, Any], key: str, where: str) -> bool:
    """A JSON/parquet boolean label."""
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, bool):
        raise DataError(f"{where}: {key} {value!r} is not one of true, false")
    return value
