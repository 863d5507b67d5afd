"""Metric loggers (torchtune's small protocol): a local JSONL logger and a guarded W&B logger.

Local files are the source of truth; W&B mirrors them. A failing W&B call is reported once and
never stops training, and every logger is closed in a ``finally`` so a multirun goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Protocol

from curvzo.wandb_run import WandbRun

log = logging.getLogger(__name__)


class MetricLogger(Protocol):
    """What the training loop needs from a logger."""

    def log_config(self, config: dict) -> None: ...
    def log_dict(self, payload: dict[str, Any], step: int) -> None: ...
    def log_summary(self, summary: dict[str, Any]) -> None: ...
    def close(self, status: str = "finished") -> None: ...


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


class JsonlLogger:
    """Writes ``metrics.jsonl`` (one object per logged step) into the run's output directory."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def log_config(self, config: dict) -> None:
        """The resolved config.yaml is written by the run itself; nothing to add here."""

    def log_dict(self, payload: dict[str, Any], step: int) -> None:
        row = {"step": step, **{k: _jsonable(v) for k, v in payload.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def log_summary(self, summary: dict[str, Any]) -> None:
        """summary.json is written by the run; the JSONL stream has no summary row."""

    def close(self, status: str = "finished") -> None:
        if not self._file.closed:
            self._file.close()


class WandbLogger:
    """Mirrors metrics to Weights & Biases; offline by default, so no account is needed."""

    def __init__(self, output_dir: str | os.PathLike, run: WandbRun) -> None:
        self._run = None
        self._failed = False  # after the first failing call, nothing more is sent
        try:
            import wandb

            self._run = wandb.init(
                dir=str(output_dir),
                mode=run.mode,
                project=run.project,
                entity=run.entity,
                group=run.group,
                job_type=run.job_type,
                name=run.name,
                tags=run.tags,
                id=run.run_id,
                resume="allow",  # a resumed job continues the run with this id; a fresh id starts one
                reinit="finish_previous",
                settings=wandb.Settings(console="off", silent=True),
            )
            self._run.define_metric("zo/forward_passes")
            for metric in ("eval/dev_acc", "eval/dev_f1", "eval/dev_em"):
                self._run.define_metric(metric, summary="max")
        except Exception as err:  # W&B must never stop training
            self._warn(err)

    def _warn(self, err: Exception) -> None:
        if not self._failed:
            log.warning("W&B logging disabled for this run: %s", str(err).splitlines()[0] if str(err) else err)
        self._failed = True

    def _call(self, fn) -> None:
        if self._run is None or self._failed:
            return
        try:
            fn()
        except Exception as err:
            self._warn(err)

    def log_config(self, config: dict) -> None:
        self._call(lambda: self._run.config.update(config, allow_val_change=True))

    def log_dict(self, payload: dict[str, Any], step: int) -> None:
        self._call(lambda: self._run.log({k: _jsonable(v) for k, v in payload.items()}, step=step))

    def log_summary(self, summary: dict[str, Any]) -> None:
        flat = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}
        self._call(lambda: self._run.summary.update(flat))

    def close(self, status: str = "finished") -> None:
        """Finish the W&B run, also after a failed call, so it is never left open."""
        if self._run is not None:
            run, self._run = self._run, None
            try:
                run.finish(exit_code=0 if status == "finished" else 1)
            except Exception as err:
                self._warn(err)


class LoggerGroup:
    """Fans every call out to several loggers."""

    def __init__(self, loggers: list[MetricLogger]) -> None:
        self.loggers = loggers

    def log_config(self, config: dict) -> None:
        for lg in self.loggers:
            lg.log_config(config)

    def log_dict(self, payload: dict[str, Any], step: int) -> None:
        for lg in self.loggers:
            lg.log_dict(payload, step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_summary(summary)

    def close(self, status: str = "finished") -> None:
        for lg in self.loggers:
            lg.close(status)
