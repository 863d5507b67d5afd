"""Checkpoint and exact resume, preemption, and failure isolation, end to end through curvzo-run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from curvzo.checkpoint import (
    FILE_NAME,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    pack_state,
    read_header,
    save_checkpoint,
    unpack_state,
)
from curvzo.preemption import REQUEUE_EXIT_CODE, Preempted, StopRequest, hand_over
from tests.helpers import REPO_ROOT

DATA_DIR = os.environ.get("CURVZO_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))
RUN = ["model=tiny-opt", "task=sst2", "optimizer=mezo", "budget=smoke", "budget.max_steps=40", "checkpoint.every=10",
       f"paths.data_dir={DATA_DIR}", "logger.wandb.mode=disabled"]
SAME_METRICS = ("status", "steps", "forward_passes", "skipped_steps", "zero_shot", "best", "test_at_best_dev", "last_dev")

# Runs curvzo-run in this process after patching the loop so that it signals itself after a step.
_INTERRUPTED = """
import os, signal, sys
from curvzo.train import TrainingLoop
at, signum = int(sys.argv[1]), int(sys.argv[2])
original = TrainingLoop._log_step
def log_step(self, step, *args):
    original(self, step, *args)
    if step == at:
        os.kill(os.getpid(), signum)
TrainingLoop._log_step = log_step
sys.argv = ["curvzo-run", *sys.argv[3:]]
from curvzo.run import main
main()
"""


def curvzo_run(*overrides: str, interrupt: tuple[int, int] | None = None) -> subprocess.CompletedProcess:
    if interrupt is None:
        command = [sys.executable, "-m", "curvzo.run", *overrides]
    else:
        command = [sys.executable, "-c", _INTERRUPTED, str(interrupt[0]), str(interrupt[1]), *overrides]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def eval_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("eval/") or k == "step"} for r in rows if "eval/dev_acc" in r]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    proc = curvzo_run(*RUN, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir


def assert_same_run(resumed: Path, whole: Path) -> None:
    a, b = summary(resumed), summary(whole)
    assert {k: a[k] for k in SAME_METRICS} == {k: b[k] for k in SAME_METRICS}
    assert a["resumed_from_step"] in (10, 15, 20)
    # identical final weights: the final checkpoints' bitwise fingerprints of every trainable tensor
    assert read_header(resumed / FILE_NAME)["weights_fingerprint"] == read_header(whole / FILE_NAME)["weights_fingerprint"]
    assert (resumed / "trajectory.jsonl").read_text() == (whole / "trajectory.jsonl").read_text()
    assert eval_rows(resumed) == eval_rows(whole)  # rows past the checkpoint were dropped, not doubled


@pytest.mark.integration
def test_sigkill_after_a_checkpoint_then_resume_true_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    root = tmp_path / "outputs"
    killed = curvzo_run(*RUN, f"paths.output_root={root}", interrupt=(25, signal.SIGKILL))
    assert killed.returncode == -signal.SIGKILL
    [run_dir] = list((root / "runs").glob("*/*"))
    assert read_header(run_dir / FILE_NAME)["step"] == 20 and not (run_dir / "summary.json").exists()
    resumed = curvzo_run(*RUN, f"paths.output_root={root}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert list((root / "runs").glob("*/*")) == [run_dir]  # continued in place; no stray directory
    assert_same_run(run_dir, uninterrupted)


@pytest.mark.integration
def test_sigterm_writes_a_checkpoint_and_exits_for_requeue_and_the_requeued_job_resumes(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    stopped = curvzo_run(*RUN, f"hydra.run.dir={run_dir}", interrupt=(15, signal.SIGTERM))
    assert stopped.returncode == REQUEUE_EXIT_CODE, stopped.stderr[-2000:]
    assert read_header(run_dir / FILE_NAME)["step"] == 15  # off the every-10 cadence: written for the signal
    assert summary(run_dir)["status"] == "preempted"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "preempted"
    requeued = curvzo_run(*RUN, f"hydra.run.dir={run_dir}")  # the same command in the same directory (resume=auto)
    assert requeued.returncode == 0, requeued.stderr[-2000:]
    assert_same_run(run_dir, uninterrupted)


@pytest.mark.integration
@pytest.mark.parametrize("extra", [["checkpoint.weights=true"], ["optimizer=fo_adam", "optimizer.lr=1e-3"]],
                         ids=["zo_stored_weights", "first_order"])
def test_resume_from_stored_weights_equals_an_uninterrupted_run(tmp_path, extra):
    """Weights and optimizer state loaded from the checkpoint (no replay); first-order with dropout."""
    whole, run_dir = tmp_path / "whole", tmp_path / "run"
    assert curvzo_run(*RUN, *extra, f"hydra.run.dir={whole}").returncode == 0
    stopped = curvzo_run(*RUN, *extra, f"hydra.run.dir={run_dir}", interrupt=(15, signal.SIGTERM))
    assert stopped.returncode == REQUEUE_EXIT_CODE, stopped.stderr[-2000:]
    assert any(k.startswith("param.") for k in load_checkpoint(run_dir / FILE_NAME).tensors)
    resumed = curvzo_run(*RUN, *extra, f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = summary(run_dir), summary(whole)
    assert {k: a[k] for k in SAME_METRICS} == {k: b[k] for k in SAME_METRICS}
    assert read_header(run_dir / FILE_NAME)["weights_fingerprint"] == read_header(whole / FILE_NAME)["weights_fingerprint"]


@pytest.mark.integration
def test_a_checkpoint_of_another_config_is_refused_with_the_differing_key(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = curvzo_run(*RUN, "optimizer.lr=3e-4", f"hydra.run.dir={run_dir}", f"resume={uninterrupted}")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()[-1:]
    assert "belongs to another run: optimizer.lr" in line and "Traceback" not in proc.stderr
    assert not run_dir.exists()  # refused before anything was written


@pytest.mark.integration
def test_resume_true_without_a_matching_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    proc = curvzo_run(*RUN, f"paths.output_root={tmp_path}", "resume=true")
    assert proc.returncode == 2 and "resume=true: no checkpoint of this config" in proc.stderr
    assert not any(tmp_path.rglob("metrics.jsonl"))


@pytest.mark.integration
def test_a_multirun_with_a_failing_job_completes_the_others_and_records_the_error(tmp_path):
    sweep = tmp_path / "sweep"
    proc = curvzo_run("-m", *RUN[:-2], "budget.max_steps=4", "checkpoint.every=2", "optimizer.lr=1e-4,-1",
                      f"paths.data_dir={DATA_DIR}", "logger.wandb.mode=disabled", f"hydra.sweep.dir={sweep}")
    assert proc.returncode != 0  # Hydra reports the failed job at the end
    assert summary(sweep / "0")["status"] == "finished"
    status = json.loads((sweep / "1" / "status.json").read_text())
    assert status["status"] == "failed" and "optimizer.lr must be a finite number > 0, got -1" in status["error"]
    from curvzo.analysis.collect import collect_runs
    from curvzo.analysis.missing import failed_runs

    failed = failed_runs(collect_runs(sweep))
    assert list(failed["status"]) == ["failed"] and "optimizer.lr" in failed["error"].iloc[0]


# --- the file format -------------------------------------------------------------------------------
def _checkpoint(step: int = 3, **tensors) -> Checkpoint:
    return Checkpoint(step=step, identity={"seed": 0}, data_fingerprint="d", start_fingerprint="s",
                      weights_fingerprint="w", loop={"step": step}, trajectory=[{"seed": 1, "projected_grad": 0.5}],
                      tensors=dict(tensors))


def test_adamw_state_round_trips_through_json_and_safetensors(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.9))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors: dict = {}
    skeleton = pack_state(opt.state_dict(), tensors)
    save_checkpoint(tmp_path, Checkpoint(**{**_checkpoint().__dict__, "optimizer_skeleton": skeleton,
                                            "tensors": tensors}))
    loaded = load_checkpoint(tmp_path / FILE_NAME)
    restored = unpack_state(loaded.optimizer_skeleton, loaded.tensors)
    assert restored["param_groups"][0]["betas"] == (0.8, 0.9)
    for index, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(restored["state"][index][key], value)


def test_a_failed_write_keeps_the_previous_checkpoint_and_says_why(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _checkpoint(step=3))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("curvzo.checkpoint.save_file", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(tmp_path, _checkpoint(step=4))
    assert read_header(tmp_path / FILE_NAME)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temporary file left


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"\x00" * 8 + b[8:], lambda b: b"junk"])
def test_a_corrupted_checkpoint_is_a_clear_error(tmp_path, damage):
    path = save_checkpoint(tmp_path, _checkpoint(t=torch.arange(6.0)))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match="unreadable or corrupted"):
        load_checkpoint(path)


def test_stop_request_records_the_signal_and_hands_over_to_the_previous_handler():
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.requested == signal.SIGUSR1 and calls == []  # ours ran, not submitit's (yet)
        with pytest.raises(SystemExit) as exit_info:
            hand_over(Preempted(signal.SIGUSR1, 7))
        assert calls == [signal.SIGUSR1] and exit_info.value.code == REQUEUE_EXIT_CODE
    finally:
        signal.signal(signal.SIGUSR1, previous)
