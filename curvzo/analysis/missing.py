"""The missing-runs report: the expected grid minus the finished runs, and every unfinished run.

    from curvzo.analysis.missing import grid_from_multirun, missing_runs, missing_report
    grid = grid_from_multirun("multirun/2026-11-23/12-00-00/multirun.yaml")  # {"optimizer": [...], "seed": [...]}
    print(missing_report(runs, [("that sweep", grid, runs)]))

The expected grid comes from a Hydra sweep's ``multirun.yaml``: ``hydra.sweeper.params`` (a
sweep config) merged with the command-line overrides in ``hydra.overrides.task`` (the command
line wins, as in Hydra). Values are expanded with Hydra's own override parser, so ``a,b``,
``range(0,3)`` and ``choice(...)`` all work. Override keys map to tidy-frame columns:
``optimizer.lr``/``peft.zo_lr`` -> lr, ``optimizer.eps``/``peft.zo_eps`` -> eps,
``optimizer.<knob>`` -> the knob column, group names (task, model, ...) to themselves; keys with
no column (paths.data_dir, budget.max_steps, ...) cannot be checked and are listed as such when
they vary.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from curvzo.analysis.tables import markdown_table

_ALIASES = {"optimizer.lr": "lr", "optimizer.eps": "eps", "peft.zo_lr": "lr", "peft.zo_eps": "eps"}


def parse_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """``["optimizer=mezo,curvzo", "seed=range(2)"]`` -> ``{"optimizer": ["mezo", "curvzo"], "seed": ["0", "1"]}``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    grid: dict[str, list[str]] = {}
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except Exception:  # a malformed entry cannot tell us what was expected; skip it
            continue
        if override.is_delete() or override.value() is None:
            continue
        key = override.key_or_group.lstrip("+~")
        if override.is_sweep_override():
            grid[key] = list(override.sweep_string_iterator())
        else:
            grid[key] = [override.get_value_element_as_str()]
    return grid


def grid_from_multirun(path: str | Path) -> dict[str, list[str]]:
    """The expected grid of one Hydra sweep, read from its ``multirun.yaml``."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    hydra = data.get("hydra") or {}
    params = (hydra.get("sweeper") or {}).get("params") or {}
    entries = [f"{k}={v}" for k, v in params.items()]
    entries += list((hydra.get("overrides") or {}).get("task") or [])  # later entries win
    return parse_overrides(entries)


def find_grids(root: str | Path) -> list[tuple[Path, dict[str, list[str]]]]:
    """Every ``multirun.yaml`` below ``root`` with its grid (a sweep dir may hold several sweeps)."""
    return [(p, grid_from_multirun(p)) for p in sorted(Path(root).rglob("multirun.yaml"))]


def column_of(key: str, runs: pd.DataFrame) -> str | None:
    """The tidy-frame column an override key sets, or None when it has none."""
    key = _ALIASES.get(key, key)
    if key in runs.columns:
        return key
    if key.startswith("optimizer.") and key.split(".", 1)[1] in runs.columns:
        return key.split(".", 1)[1]
    return None


def _same(run_value: Any, wanted: str) -> bool:
    """Compare a frame value with an override string: numerically when both are numbers."""
    if run_value is None or (isinstance(run_value, float) and math.isnan(run_value)):
        return wanted in ("null", "None")
    try:
        return math.isclose(float(run_value), float(wanted), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return str(run_value).lower() == wanted.lower() if isinstance(run_value, bool) else str(run_value) == wanted


def missing_runs(runs: pd.DataFrame, grid: dict[str, list]) -> tuple[pd.DataFrame, list[str]]:
    """Combinations of ``grid`` with no finished run in ``runs``, and the grid keys left unchecked.

    The frame has one column per checked key plus ``status``: ``absent`` when no run matches at
    all, else the statuses of the unfinished runs that match (for example ``stopped_nonfinite``).
    """
    checked = {k: column_of(k, runs) for k in grid}
    unchecked = [k for k, c in checked.items() if c is None and len(grid[k]) > 1]
    keys = [k for k, c in checked.items() if c is not None]
    rows = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        mask = pd.Series(True, index=runs.index)
        for key, value in zip(keys, combo):
            mask &= runs[checked[key]].map(lambda v, w=str(value): _same(v, w))
        matches = runs[mask]
        if (matches["status"] == "finished").any():
            continue
        status = ", ".join(sorted(set(matches["status"]))) or "absent"
        rows.append({**{checked[k]: v for k, v in zip(keys, combo)}, "status": status})
    columns = [checked[k] for k in keys] + ["status"]
    return pd.DataFrame(rows, columns=columns), unchecked


def failed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run whose status is not ``finished``, with its identifying columns."""
    columns = ["task", "model", "optimizer", "peft", "lr", "seed", "status", "error", "run_dir"]
    return runs.loc[runs["status"] != "finished", columns].reset_index(drop=True)


def _runs_under(runs: pd.DataFrame, directory: Path) -> pd.DataFrame:
    directory = directory.resolve()
    inside = runs["run_dir"].map(lambda d: not str(d).startswith("wandb:") and directory in Path(d).resolve().parents)
    return runs[inside]


def missing_report(runs: pd.DataFrame, grids: list[tuple[str, dict[str, list]]] | None = None) -> str:
    """Markdown: per expected grid, the combinations without a finished run; then the unfinished runs.

    ``grids`` is a list of (label, grid); a label that is a multirun.yaml path restricts the check
    to the runs inside that sweep directory. Without grids only the unfinished runs are listed.
    """
    finished = int((runs["status"] == "finished").sum())
    parts = [f"# Missing and failed runs\n\n{len(runs)} run directories, {finished} finished."]
    if not grids:
        parts.append("No expected grid (no multirun.yaml found and none given): only failed runs are listed.")
    for label, grid in grids or []:
        scope = runs
        if str(label).endswith("multirun.yaml") and Path(label).is_file():
            scope = _runs_under(runs, Path(label).parent)
        missing, unchecked = missing_runs(scope, grid)
        size = math.prod(len(v) for k, v in grid.items() if column_of(k, runs) is not None)
        expected = ", ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in grid.items() if len(v) > 1)
        text = [f"## Expected grid from {label}", f"{size} combinations ({expected or 'a single point'}); "
                f"{len(missing)} without a finished run."]
        if unchecked:
            text.append(f"Not checked (no such column in the runs): {', '.join(unchecked)}.")
        if len(missing):
            text.append(markdown_table(list(missing.columns), missing.astype(str).values.tolist(),
                                       "l" * len(missing.columns)))
        parts.append("\n\n".join(text))
    failed = failed_runs(runs)
    text = [f"## Unfinished runs ({len(failed)})"]
    if len(failed):
        cells = failed.map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else
                           (f"{v:g}" if isinstance(v, float) else str(v)))
        text.append(markdown_table(list(failed.columns), cells.values.tolist(), "l" * len(failed.columns)))
    else:
        text.append("None.")
    parts.append("\n\n".join(text))
    return "\n\n".join(parts) + "\n"
