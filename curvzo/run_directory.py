"""A job's run directory: start fresh, resume, or leave a finished run alone, decided once; and its files.

A directory is resumed (a checkpoint of this config), skipped (this config's finished run, by its
``status.json``) or refused (another run's outputs and nothing to resume): never appended to.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from curvzo.checkpoint import CheckpointError, json_fingerprint
from curvzo.errors import RunDirectoryError
from curvzo.resume import check_identity, locate_checkpoint, resume_mode

log = logging.getLogger(__name__)

# what a run writes into its directory: one holding any of them is resumed from its checkpoint or refused
RUN_OUTPUTS = ("metrics.jsonl", "trajectory.jsonl", "summary.json")


@dataclass
class DirectoryPlan:
    """What this job does with its run directory: start fresh, resume a checkpoint, or nothing (finished)."""

    run_dir: Path
    checkpoint_path: Path | None = None
    header: dict | None = None  # the checkpoint's header, identity already checked
    finished: dict | None = None  # the summary of a finished run of this same config


def plan_directory(cfg: DictConfig, output_dir: Path, identity: dict) -> DirectoryPlan:
    """Skip (finished), resume, or start fresh, decided once; a directory holding another run's outputs and no
    checkpoint to resume is refused with one line (:class:`RunDirectoryError`, the directory left as it is)."""
    status = read_status(output_dir)
    summary_path = output_dir / "summary.json"
    if (status.get("status") == "finished" and status.get("identity") == json_fingerprint(identity)
            and summary_path.is_file()):
        return DirectoryPlan(output_dir, finished=json.loads(summary_path.read_text(encoding="utf-8")))
    try:
        checkpoint_path = locate_checkpoint(resume_mode(cfg.resume), output_dir, Path(cfg.paths.output_root), identity)
        header = check_identity(checkpoint_path, identity) if checkpoint_path is not None else None
    except CheckpointError as err:
        raise RunDirectoryError(str(err)) from None
    if checkpoint_path is not None:
        run_dir = output_dir
        if checkpoint_path.parent.resolve() != output_dir.resolve():
            run_dir = adopt_run_dir(output_dir, checkpoint_path.parent)
        return DirectoryPlan(run_dir, checkpoint_path, header)
    outputs = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if outputs:
        what = f"a {status['status']} run" if status.get("status") else "a run"
        raise RunDirectoryError(f"{output_dir} already holds {what} ({', '.join(outputs)}) and no checkpoint of this "
                                f"config to resume: choose another hydra.run.dir, or delete that directory")
    return DirectoryPlan(output_dir)


def adopt_run_dir(fresh_dir: Path, run_dir: Path) -> Path:
    """Continue in ``run_dir``: the log goes on in its own ``run.log``, and the directory Hydra just made for
    this invocation goes if it holds only Hydra's own files, so a resume leaves no stray run directory."""
    log.info("resume: continuing in %s", run_dir)
    move_file_logs(fresh_dir, run_dir)
    if fresh_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in fresh_dir.iterdir()):
        shutil.rmtree(fresh_dir, ignore_errors=True)
    log.info("resumed from %s (this invocation's first lines are above)", fresh_dir)
    return run_dir


def move_file_logs(old_dir: Path, new_dir: Path) -> None:
    """Point every logging file handler writing into ``old_dir`` at the same file name in ``new_dir``
    (appending), carrying over what this invocation has logged so far."""
    old_dir = old_dir.resolve()
    named = [x for x in logging.root.manager.loggerDict.values() if isinstance(x, logging.Logger)]
    for logger in [logging.getLogger(), *named]:
        for handler in list(logger.handlers):
            if not isinstance(handler, logging.FileHandler) or Path(handler.baseFilename).parent != old_dir:
                continue
            handler.flush()
            old_file = Path(handler.baseFilename)
            so_far = old_file.read_text(encoding="utf-8") if old_file.is_file() else ""
            replacement = logging.FileHandler(new_dir / old_file.name, mode="a", encoding="utf-8")
            replacement.setFormatter(handler.formatter)
            replacement.setLevel(handler.level)
            for log_filter in handler.filters:
                replacement.addFilter(log_filter)
            with open(new_dir / old_file.name, "a", encoding="utf-8") as target:
                target.write(so_far)
            logger.removeHandler(handler)
            handler.close()
            logger.addHandler(replacement)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics rows logged after ``step`` (the killed run went on past its checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)


def _write_json_atomically(path: Path, value: dict[str, Any]) -> None:
    """A temporary file, then a rename: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_summary(output_dir: Path, summary: dict[str, Any]) -> None:
    """Write summary.json atomically."""
    _write_json_atomically(output_dir / "summary.json", summary)


def read_status(run_dir: Path) -> dict:
    """``status.json`` of a run directory, or {} when there is none (or it is unreadable)."""
    try:
        return json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_status(run_dir: Path, status: dict) -> None:
    """``status.json``: how the job ended (the analysis lists every job not ``finished``)."""
    if run_dir.is_dir():
        _write_json_atomically(run_dir / "status.json", status)
