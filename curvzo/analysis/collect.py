"""Collect run outputs into tidy frames: one row per run, and one row per logged curve point.

    from curvzo.analysis.collect import collect_runs, load_curves
    runs = collect_runs("multirun/2026-11-23/12-00-00")   # searched recursively
    curves = load_curves(runs)                             # long frame read from each metrics.jsonl

A run is a directory holding ``summary.json`` (written by ``curvzo.job.run_job``). A directory
with a ``config.yaml`` (or Hydra's ``.hydra/config.yaml``) but no ``summary.json`` is a job that
died before writing its summary: it is kept, with status ``no_summary``, so a sweep with holes
cannot look complete. Runs with any status other than ``finished`` stay in the frame; selection
code filters on ``status`` itself.

``collect_wandb`` builds the same frame from online W&B runs (``wandb.Api().runs``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

# The fixed part of the tidy frame; method knobs (the optimizer node's other keys) follow, sorted.
CORE_COLUMNS = [
    "task", "model", "optimizer", "peft", "budget", "lr", "eps", "seed", "data_seed", "metric",
    "train_objective", "dev_best", "test_at_best_dev", "zero_shot_test", "best_step", "steps", "forward_passes",
    "forward_passes_per_step", "wall_s", "sec_per_step", "sec_per_forward", "peak_mem_gb",
    "peak_mem_kind", "state_mb", "max_steps", "max_forward_passes", "select_by", "status", "run_dir",
    "error",
]
# Keys of the optimizer node that are not knobs: the class, and values already in CORE_COLUMNS.
_NOT_KNOBS = {"_target_", "_partial_", "lr", "eps", "seed"}
_INT_COLUMNS = ["seed", "data_seed", "best_step", "steps", "forward_passes", "max_steps", "max_forward_passes"]
CURVE_COLUMNS = ["run_dir", "step", "forward_passes", "elapsed_s", "split", "metric", "value"]


class CollectError(ValueError):
    """A run directory that cannot be read (for example a summary.json that is not JSON)."""


def collect_runs(root: str | Path) -> pd.DataFrame:
    """One row per run directory below ``root`` (recursively), columns CORE_COLUMNS + knobs.

    Raises CollectError for a missing ``root`` or an unreadable summary.json / config.yaml.
    """
    root = Path(root)
    if not root.is_dir():
        raise CollectError(f"{root}: no such directory")
    rows = []
    for run_dir in _run_dirs(root):
        summary = _read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else None
        config = _read_config(run_dir)
        choices = _hydra_choices(run_dir)
        if summary is None:  # a job that failed writes status.json with its error (curvzo.run)
            status = _read_json(run_dir / "status.json") if (run_dir / "status.json").is_file() else {}
            summary = {"status": status.get("status", "no_summary"), "error": status.get("error")}
        rows.append(run_row(summary, config, str(run_dir), choices))
    return tidy(rows)


def _run_dirs(root: Path) -> list[Path]:
    """Directories holding summary.json, config.yaml or .hydra/config.yaml (each counted once)."""
    finished = {p.parent for p in root.rglob("summary.json")} | {p.parent for p in root.rglob("status.json")}
    started = {p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra"}
    started |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    # W&B's offline copy (<run>/wandb/run-*/files/config.yaml) is not a run of its own
    started = {d for d in started - finished
               if "wandb" not in d.relative_to(root).parts and not any(f in d.parents for f in finished)}
    return sorted(finished | started)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CollectError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    except OSError as err:
        raise CollectError(f"{path}: cannot be read ({err.strerror})") from None
    if not isinstance(data, dict):
        raise CollectError(f"{path}: not a JSON object")
    return data


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError) as err:
        raise CollectError(f"{path}: not readable YAML ({str(err).splitlines()[0]})") from None
    return data if isinstance(data, dict) else {}


def _read_config(run_dir: Path) -> dict:
    """The resolved config.yaml; Hydra's .hydra/config.yaml (unresolved) when the job died earlier."""
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            return _read_yaml(path)
    return {}


def _hydra_choices(run_dir: Path) -> dict:
    """The option chosen in each config group (model, optimizer, ...), from .hydra/hydra.yaml."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    choices = _get(_read_yaml(path), "hydra", "runtime", "choices")
    return dict(choices) if isinstance(choices, dict) else {}


def _get(data: Any, *keys: str) -> Any:
    """Nested lookup that also accepts W&B's flattened ``a/b`` keys; None when absent."""
    flat = "/".join(keys)
    if hasattr(data, "get") and len(keys) > 1 and data.get(flat) is not None:
        return data.get(flat)
    for key in keys:
        if not hasattr(data, "get"):
            return None
        data = data.get(key)
    return data


def _number(value: Any) -> float | None:
    """A float, or None for missing or non-numeric values (JSON keeps "inf" as a string)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _ratio(value: Any, by: Any) -> float | None:
    value, by = _number(value), _number(by)
    return None if value is None or not by else value / by


def _scalar(value: Any) -> Any:
    """Knob values must be hashable for grouping: lists and dicts become their JSON text."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    if hasattr(value, "items"):  # a W&B SummarySubDict or an OmegaConf node
        return json.dumps(dict(value.items()), sort_keys=True, default=str)
    return value


def run_row(summary: dict, config: dict | None, run_dir: str, choices: dict | None = None) -> dict:
    """One tidy row from a summary (summary.json or a W&B summary) and the resolved config.

    ``choices`` are Hydra's group options; they name the model/optimizer when the summary is missing.
    """
    config, choices = config or {}, choices or {}
    metric = summary.get("metric") or "acc"
    # what training minimised (task.train_objective); runs from before the key trained on the loss
    train_objective = summary.get("train_objective") or _get(config, "task", "train_objective") or "loss"
    optimizer_node = config.get("optimizer") if isinstance(config.get("optimizer"), dict) else {}
    row = {
        "task": summary.get("task") or _get(config, "task", "name") or choices.get("task"),
        "model": summary.get("model") or choices.get("model") or _get(config, "model", "name_or_path"),
        "optimizer": method_label(summary.get("optimizer") or choices.get("optimizer") or _class_name(optimizer_node),
                                  train_objective),
        "peft": summary.get("peft") or choices.get("peft"),
        "budget": summary.get("budget") or choices.get("budget"),
        "lr": _number(_first(summary.get("lr"), optimizer_node.get("lr"))),
        "eps": _number(_first(summary.get("eps"), optimizer_node.get("eps"))),
        "seed": _first(summary.get("seed"), config.get("seed")),
        "data_seed": _first(summary.get("data_seed"), config.get("data_seed")),
        "metric": metric,
        "train_objective": train_objective,
        "dev_best": _number(_get(summary, "best", f"dev_{metric}")),
        "test_at_best_dev": _number(_get(summary, "test_at_best_dev", f"test_{metric}")),
        "zero_shot_test": _number(_get(summary, "zero_shot", f"test_{metric}")),
        "best_step": _get(summary, "best", "step"),
        "steps": summary.get("steps"),
        "forward_passes": summary.get("forward_passes"),
        "forward_passes_per_step": _number(summary.get("forward_passes_per_step")),
        "wall_s": _number(summary.get("wall_time_s")),
        "sec_per_step": _number(summary.get("sec_per_step")),
        "sec_per_forward": _ratio(summary.get("sec_per_step"), summary.get("forward_passes_per_step")),
        "peak_mem_gb": _number(summary.get("peak_mem_gb")),
        "peak_mem_kind": summary.get("peak_mem_kind") or summary.get("peak_mem_source"),
        "state_mb": _ratio(_get(summary, "optimizer_info", "state_bytes"), 2**20),
        "max_steps": _get(config, "budget", "max_steps"),
        "max_forward_passes": _get(config, "budget", "max_forward_passes"),
        "select_by": summary.get("select_by") or config.get("select_by"),
        "status": summary.get("status") or "unknown",
        "run_dir": run_dir,
        "error": summary.get("error"),
    }
    for key, value in optimizer_node.items():
        if key not in _NOT_KNOBS and not _is_interpolation(value):
            row[key if key not in CORE_COLUMNS else f"optimizer.{key}"] = _scalar(value)
    return row


def method_label(optimizer: str | None, train_objective: str) -> str | None:
    """The optimizer's name, marked when it trained on the metric itself: every table, figure and selection then
    keeps the two objectives apart as two methods."""
    return optimizer if optimizer is None or train_objective == "loss" else f"{optimizer} ({train_objective} objective)"


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None and not _is_interpolation(v)), None)


def _is_interpolation(value: Any) -> bool:
    # .hydra/config.yaml is unresolved; "${seed}" is not a value
    return isinstance(value, str) and "${" in value


def _class_name(node: dict) -> str | None:
    """curvzo.optim.CurvZO -> curvzo: a best guess when neither summary nor Hydra names the optimizer."""
    target = node.get("_target_") if node else None
    return target.rsplit(".", 1)[-1].lower() if isinstance(target, str) else None


def tidy(rows: Iterable[dict]) -> pd.DataFrame:
    """The frame with CORE_COLUMNS first, then the knob columns in sorted order.

    Counts and seeds are nullable integers (``Int64``), so a run without a seed does not turn
    every other seed into a float, and the CSV shows ``3`` rather than ``3.0``.
    """
    frame = pd.DataFrame(list(rows))
    knobs = sorted(c for c in frame.columns if c not in CORE_COLUMNS)
    frame = frame.reindex(columns=CORE_COLUMNS + knobs)
    for column in _INT_COLUMNS:
        try:
            frame[column] = pd.to_numeric(frame[column]).astype("Int64")
        except (TypeError, ValueError):  # a non-integer value: leave the column as it is
            pass
    return frame


def knob_columns(runs: pd.DataFrame) -> list[str]:
    """The method-knob columns of a tidy frame (everything outside CORE_COLUMNS)."""
    return [c for c in runs.columns if c not in CORE_COLUMNS]


def collect_wandb(entity: str, project: str, api: Any = None, filters: dict | None = None) -> pd.DataFrame:
    """The tidy frame of the W&B runs of ``entity/project`` (same columns as ``collect_runs``).

    ``api`` defaults to ``wandb.Api()``; any object whose ``runs(path, filters=...)`` yields
    objects with ``.config``, ``.summary``, ``.state`` and ``.name`` will do (tests pass a fake).
    A run W&B reports as finished takes the status our job wrote into its summary
    (``stopped_nonfinite`` also finishes cleanly on W&B); any other W&B state (running, crashed,
    failed) becomes the status, so such runs are kept but never selected.
    """
    if api is None:
        import wandb

        api = wandb.Api()
    rows = []
    for run in api.runs(f"{entity}/{project}", filters=filters or {}):
        summary = dict(run.summary.items())
        config = _plain(dict(run.config.items()))
        state = getattr(run, "state", None)
        if state != "finished":
            summary["status"] = state or "unknown"
        run_id = getattr(run, "id", None) or run.name
        rows.append(run_row(summary, config, f"wandb:{entity}/{project}/{run_id}"))
    return tidy(rows)


def _plain(value: Any) -> Any:
    """W&B configs may wrap values as {"value": x, "desc": ...}; unwrap them recursively."""
    if hasattr(value, "items"):
        value = dict(value.items())
        if set(value) <= {"value", "desc"} and "value" in value:
            return _plain(value["value"])
        return {k: _plain(v) for k, v in value.items()}
    return value


def load_curves(runs: pd.DataFrame | str | Path) -> pd.DataFrame:
    """Long frame of every run's metrics.jsonl: CURVE_COLUMNS, one row per (point, split, metric).

    Training rows give ``split="train", metric="loss"``; evaluation rows give one row per
    ``eval/<split>_<metric>`` (split dev or test; metric loss, acc, f1, em). ``run_dir`` joins the
    curve to the run frame. A partial last line (a job killed mid-write) is skipped.
    """
    if not isinstance(runs, pd.DataFrame):
        runs = collect_runs(runs)
    rows = []
    for run_dir in runs["run_dir"]:
        path = Path(run_dir) / "metrics.jsonl"
        if not path.is_file():
            continue
        passes = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                point = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(point, dict) or "step" not in point:
                continue
            passes = point.get("zo/forward_passes", passes) or passes
            base = {"run_dir": run_dir, "step": point["step"], "forward_passes": passes,
                    "elapsed_s": _number(point.get("time/elapsed_s"))}
            if _number(point.get("train/loss")) is not None:
                rows.append({**base, "split": "train", "metric": "loss", "value": _number(point["train/loss"])})
            for key, value in point.items():
                if key.startswith("eval/") and key.count("_") >= 1 and key != "eval/selected_step":
                    split, _, metric = key[len("eval/"):].partition("_")
                    if split in ("dev", "test") and _number(value) is not None and math.isfinite(_number(value)):
                        rows.append({**base, "split": split, "metric": metric, "value": _number(value)})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def write_runs(runs: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """runs.csv, plus runs.parquet when pyarrow is importable; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "runs.csv"]
    runs.to_csv(written[0], index=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return written
    # mixed-type knob columns (NaN for one method, strings for another) need a uniform type for parquet
    frame = runs.copy()
    for column in frame.columns:
        if frame[column].dtype == object and column not in ("run_dir",):
            frame[column] = frame[column].map(lambda v: None if _missing(v) else str(v))
    frame.to_parquet(out_dir / "runs.parquet", index=False)
    written.append(out_dir / "runs.parquet")
    return written


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
