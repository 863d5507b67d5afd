"""The closing lines of a ``-m`` sweep: how many jobs finished, which did not and why, and where they are.

A Hydra callback (``hydra.callbacks`` in conf/hydra/default.yaml) notes the sweep directory when the
sweep starts; ``curvzo-run`` prints the report when Hydra returns, also after a failed job (Hydra then
raises before its own end-of-sweep callback). The report reads every job's ``status.json``, so it
holds for any launcher, also when the jobs ran on other machines.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def sweep_report(sweep_dir: Path) -> list[str]:
    """One line of counts per status, one line per job that did not finish, and the directory."""
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_job_order) \
        if sweep_dir.is_dir() else []
    statuses: dict[Path, dict] = {}
    for job in jobs:
        try:
            statuses[job] = json.loads((job / "status.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            statuses[job] = {"status": "no status.json"}
    counts = Counter(s.get("status", "?") for s in statuses.values())
    lines = [f"sweep: {len(jobs)} jobs, " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
             if jobs else "sweep: no jobs ran"]
    for job, status in statuses.items():
        if status.get("status") != "finished":
            detail = f": {status['error']}" if status.get("error") else ""
            lines.append(f"  job {job.name} {status.get('status')}{detail}")
    lines.append(f"outputs: {sweep_dir}")
    return lines


def _job_order(job: Path) -> tuple[int, int, str]:
    """Job numbers in numeric order (2 before 10); named job directories (a custom hydra.sweep.subdir) after, by name."""
    return (0, int(job.name), "") if job.name.isdigit() else (1, 0, job.name)


class SweepSummary(Callback):
    """Remembers the directory of each sweep this process starts (for :func:`print_sweep_reports`)."""

    started: ClassVar[list[Path]] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the same config object the launcher resolves, so ${now:...} gives the same directory (cached)
        SweepSummary.started.append(Path(str(config.hydra.sweep.dir)))


def print_sweep_reports() -> None:
    """Print the report of every sweep started in this process, to the console (not into a job's log)."""
    while SweepSummary.started:
        print("\n".join(sweep_report(SweepSummary.started.pop(0))), flush=True)
