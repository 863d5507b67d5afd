"""W&B runs as its users expect them (issue 18), read back from W&B's offline run files: a sweep's
runs are named after their overrides and grouped by the sweep; a resumed job continues its W&B run."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.test_resume import RUN, curvzo_run

pytestmark = pytest.mark.integration


def offline_runs(run_dir: Path) -> list[Path]:
    """W&B's offline run directories of one job (``offline-run-<time>-<run id>``)."""
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def run_record(offline_run: Path) -> bytes:
    """The run's .wandb log: protobuf records, whose strings (name, group, tags) are stored as they are."""
    (log,) = offline_run.glob("run-*.wandb")
    return log.read_bytes()


def test_a_sweeps_runs_are_named_after_their_overrides_and_grouped_by_the_sweep(tmp_path):
    sweep = tmp_path / "my-sweep"
    base = [o for o in RUN if o not in ("budget.max_steps=40", "checkpoint.every=10", "logger.wandb.mode=disabled")]
    done = curvzo_run("-m", *base, "optimizer.lr=1e-3,1e-4", "logger.wandb.mode=offline", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    for job, lr in (("0", "0.001"), ("1", "0.0001")):
        (offline,) = offline_runs(sweep / job)
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert offline.name.endswith(f"-{summary['wandb_run_id']}")
        record = run_record(offline)
        assert f"mezo-sst2-tiny-opt-smoke-lr{lr}-seed0".encode() in record  # the name
        assert b"my-sweep" in record  # the group: the sweep
        for tag in (b"optimizer/mezo", b"task/sst2", b"model/tiny-opt", b"peft/full"):
            assert tag in record


def test_a_resumed_job_continues_the_same_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*[o for o in RUN if o != "logger.wandb.mode=disabled"], "logger.wandb.mode=offline",
                 f"hydra.run.dir={run_dir}"]
    stopped = curvzo_run(*overrides, interrupt=(15, signal.SIGTERM))
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    first = json.loads((run_dir / "summary.json").read_text())["wandb_run_id"]
    resumed = curvzo_run(*overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["wandb_run_id"] == first and summary["resumed_from_step"] == 15
    runs = offline_runs(run_dir)
    assert len(runs) == 2 and all(r.name.endswith(f"-{first}") for r in runs)  # both invocations log to one run id
