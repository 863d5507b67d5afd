"""A job's lifecycle (issue 17): each reproduced failure as a regression test.

Base command: ``curvzo-run model=tiny-opt task=sst2 optimizer=mezo budget=smoke logger=jsonl``. Most cases
run the job in this process (``run_job`` on a composed config); those about exit codes, signals and
what is left on disk run ``curvzo-run`` itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import curvzo.train
from curvzo.command_line import command_line_problem
from curvzo.errors import ConfigError, RunDirectoryError
from curvzo.example import Example
from curvzo.job import run_job, validate_config
from curvzo.objectives import CandidateClassification
from curvzo.preemption import HARD_STOP_EXIT_CODE, REQUEUE_EXIT_CODE, StopRequest
from curvzo.run import CONFIG_DIR, DIVERGED_EXIT_CODE
from curvzo.scoring import CHARS_PER_TOKEN_BOUND, encode_examples
from curvzo.train import training_batches
from tests.helpers import BASE, REPO_ROOT, tiny_model

# curvzo-run in a child process that signals itself after a step (once, or twice: a second Ctrl-C)
_SIGNALLED = """
import os, sys
from curvzo.train import TrainingLoop
at, signum, times = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
original = TrainingLoop._log_step
def log_step(self, step, *args):
    original(self, step, *args)
    if step == at:
        for _ in range(times):
            os.kill(os.getpid(), signum)
TrainingLoop._log_step = log_step
sys.argv = ["curvzo-run", *sys.argv[4:]]
from curvzo.run import main
main()
"""


def curvzo_run(*args: str, signal_at: tuple[int, int, int] | None = None) -> subprocess.CompletedProcess:
    head = [sys.executable, "-m", "curvzo.run"] if signal_at is None else \
        [sys.executable, "-c", _SIGNALLED, *map(str, signal_at)]
    return subprocess.run([*head, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The process's single stderr line (Hydra's and our log lines go to stderr too: errors start 'error:')."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# 1. budget.num_train=0 hung at "train 0/4", immune to SIGTERM -------------------------------------------------------
def test_no_training_examples_is_one_line_before_anything_loads(job_cfg):
    with pytest.raises(ConfigError, match=r"^budget.num_train must be an integer >= 1, got 0$"):
        validate_config(job_cfg("budget.num_train=0"))
    validate_config(job_cfg("budget.num_train=0", "optimizer=none"))  # zero-shot needs no training examples


def test_drawing_batches_from_nothing_raises_instead_of_looping_forever():
    with pytest.raises(ValueError, match="no training examples"):
        next(training_batches([], batch_size=4, seed=0))


def test_a_second_signal_stops_at_once_even_where_no_step_boundary_comes():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM  # the first one waits for the step boundary
        with pytest.raises(KeyboardInterrupt, match="SIGTERM again"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here at the latest


def test_under_torchrun_the_launchers_forwarded_copy_of_a_signal_is_the_same_request():
    with StopRequest(repeat_window_s=60.0) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun forwards the signal the group already got
        time.sleep(0.1)
        assert stop.requested == signal.SIGTERM  # still waiting for the step boundary, no KeyboardInterrupt


# 2. re-running into a directory appended to it -------------------------------------------------------------------------
def test_a_finished_directory_is_left_alone_or_refused_never_appended_to(job_cfg, tmp_path):
    out = tmp_path / "run"
    assert run_job(job_cfg(), out)["status"] == "finished"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    again = run_job(job_cfg(), out)  # the same config: finished already, nothing to do
    assert again["status"] == "finished" and again["steps"] == 4
    with pytest.raises(RunDirectoryError, match=r"already holds a finished run \(metrics.jsonl, trajectory.jsonl, "
                                                r"summary.json\) and no checkpoint of this config to resume"):
        run_job(job_cfg("optimizer.lr=1e-4"), out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_directory_with_outputs_but_no_checkpoint_is_refused(job_cfg, tmp_path):
    out = tmp_path / "run"  # what Ctrl-C left before this issue: metrics and no checkpoint
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirectoryError, match=r"already holds a run \(metrics.jsonl\)"):
        run_job(job_cfg(), out)
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n' and sorted(os.listdir(out)) == ["metrics.jsonl"]


@pytest.mark.integration
def test_a_refused_directory_keeps_its_status_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    assert curvzo_run(*BASE, f"hydra.run.dir={out}").returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = curvzo_run(*BASE, "optimizer.lr=1e-4", f"hydra.run.dir={out}")
    assert proc.returncode == 2 and "already holds a finished run" in one_error_line(proc)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.suffix != ".log"} == \
        {k: v for k, v in before.items() if not k.endswith(".log")}


# 3. Ctrl-C: traceback, status failed, no checkpoint -------------------------------------------------------------------
@pytest.mark.integration
def test_ctrl_c_finishes_the_step_checkpoints_and_a_rerun_continues(tmp_path):
    out, whole = tmp_path / "run", tmp_path / "whole"
    run = [*BASE, "budget.max_steps=12", "budget.eval_every=4"]
    assert curvzo_run(*run, f"hydra.run.dir={whole}").returncode == 0
    stopped = curvzo_run(*run, f"hydra.run.dir={out}", signal_at=(6, signal.SIGINT, 1))
    assert stopped.returncode == REQUEUE_EXIT_CODE and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert "stopped by SIGINT after step 6; checkpoint written" in stopped.stdout
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    assert (out / "checkpoint.safetensors").is_file()
    resumed = curvzo_run(*run, f"hydra.run.dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "zero-shot:" not in resumed.stdout and "resuming" in resumed.stdout  # 13: a resume does not pretend to evaluate step 0 again
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, whole))
    assert (a["test_at_best_dev"], a["steps"]) == (b["test_at_best_dev"], b["steps"])
    # 13: metrics and trajectory number steps alike (1-based), and the metrics were not doubled
    assert [r["step"] for r in read_jsonl(out / "trajectory.jsonl")] == list(range(1, 13))
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "train/loss" in r] == list(range(1, 13))


@pytest.mark.integration
def test_a_second_ctrl_c_stops_at_once_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = curvzo_run(*BASE, "budget.max_steps=12", "checkpoint.every=4", f"hydra.run.dir={out}",
                      signal_at=(6, signal.SIGINT, 2))
    assert proc.returncode == HARD_STOP_EXIT_CODE
    assert "interrupted at once; run the same command again" in one_error_line(proc)
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    resumed = curvzo_run(*BASE, "budget.max_steps=12", "checkpoint.every=4", f"hydra.run.dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 4


# 5. resume=true into an older directory lost the resumed part of the log ------------------------------------------------
@pytest.mark.integration
def test_a_resumed_run_logs_into_its_own_run_log(tmp_path):
    root = tmp_path / "outputs"
    run = [*BASE, "budget.max_steps=12", "checkpoint.every=4", f"paths.output_root={root}"]
    assert curvzo_run(*run, signal_at=(6, signal.SIGTERM, 1)).returncode == REQUEUE_EXIT_CODE
    [run_dir] = list((root / "runs").glob("*/*"))
    resumed = curvzo_run(*run, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list((root / "runs").glob("*/*")) == [run_dir]  # the fresh directory went
    log = (run_dir / "run.log").read_text()
    assert "stopped by SIGTERM after step 6" in log  # the first invocation
    assert "resume: continuing in" in log and "status: finished" in log.split("resume: continuing in")[1]


# 6. unknown keys ----------------------------------------------------------------------------------------------------
def test_an_added_key_the_optimizer_does_not_take_is_one_line_with_a_suggestion(job_cfg):
    with pytest.raises(ConfigError, match=r"^optimizer.lrr: not an option of MeZO \(did you mean optimizer.lr\?\)$"):
        validate_config(job_cfg("+optimizer.lrr=5"))


def test_an_unknown_key_is_one_line_with_a_suggestion():
    assert command_line_problem([*BASE, "optimizer.lrr=1"], CONFIG_DIR) == \
        "optimizer.lrr: no such key (did you mean optimizer.lr?)"
    assert command_line_problem([*BASE, "budget.max_step=3"], CONFIG_DIR) == \
        "budget.max_step: no such key (did you mean budget.max_steps?)"
    assert command_line_problem(["-m", *BASE, "optimizer.lrr=1,2"], CONFIG_DIR).startswith("optimizer.lrr: no such key")
    assert command_line_problem(BASE, CONFIG_DIR) is None


@pytest.mark.integration
def test_typos_from_the_command_line_exit_2_with_one_line(tmp_path):
    for typo, expected in (("+optimizer.lrr=5", "did you mean optimizer.lr?"),
                           ("optimizer.lrr=1", "did you mean optimizer.lr?")):
        proc = curvzo_run(*BASE, typo, f"hydra.run.dir={tmp_path / 'run'}")
        assert proc.returncode == 2 and expected in one_error_line(proc)
        assert not (tmp_path / "run").exists()


# 7. a run directory that cannot be made ---------------------------------------------------------------------------------
def test_a_run_directory_under_a_file_or_unwritable_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert command_line_problem([*BASE, f"hydra.run.dir={blocker}/run"], CONFIG_DIR) == \
        f"hydra.run.dir={blocker}/run: cannot create it, {blocker} is a file"
    assert command_line_problem([*BASE, f"hydra.run.dir={blocker}"], CONFIG_DIR) == \
        f"hydra.run.dir={blocker}: a file is in the way, not a directory"
    problem = command_line_problem([*BASE, "paths.output_root=/proc/curvzo-outputs"], CONFIG_DIR)
    assert problem.startswith("hydra.run.dir=/proc/curvzo-outputs/runs/") and "cannot create it under /proc" in problem
    problem = command_line_problem(["-m", *BASE, f"paths.output_root={blocker}"], CONFIG_DIR)
    assert problem.startswith(f"hydra.sweep.dir={blocker}/multirun/") and problem.endswith(f"{blocker} is a file")


# 8. errors after composing left a directory behind --------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("overrides,expected", [
    (["model.dtype=float8"], "model.dtype='float8' is not supported"),
    (["model.device=cuda"], "model.device"),
    (["peft=prefix", "optimizer=dizo"], "optimizer.projected=auto matches no trainable matrix"),
], ids=["dtype", "device", "prefix_dizo"])
def test_bad_model_settings_leave_no_directory(tmp_path, overrides, expected):
    if "model.device=cuda" in overrides and _cuda():
        pytest.skip("a GPU is visible")
    out = tmp_path / "run"
    proc = curvzo_run(*BASE, *overrides, f"hydra.run.dir={out}")
    assert proc.returncode == 2 and expected in one_error_line(proc).lower()
    assert not out.exists()


@pytest.mark.integration
def test_a_missing_model_path_leaves_no_directory(tmp_path):
    out = tmp_path / "run"
    proc = curvzo_run(*[o for o in BASE if not o.startswith("model=")], "model=smollm2-135m",
                      f"model.name_or_path={tmp_path / 'no-such-model'}", "model.gguf=null", f"hydra.run.dir={out}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    one_error_line(proc)
    assert not out.exists()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# 9. no dev set while training -------------------------------------------------------------------------------------------
def test_training_without_a_dev_set_is_refused(job_cfg):
    with pytest.raises(ConfigError, match=r"^budget.num_dev must be an integer >= 1, got 0$"):
        validate_config(job_cfg("budget.num_dev=0"))


# 10. a step that overruns the forward-pass budget ------------------------------------------------------------------------
def test_a_budget_smaller_than_one_step_is_refused(job_cfg):
    with pytest.raises(ConfigError, match=r"budget.max_forward_passes=1 does not cover one step \(2 forward passes\)"):
        validate_config(job_cfg("budget.max_forward_passes=1"))
    validate_config(job_cfg("budget.max_forward_passes=2"))


def test_the_loop_checks_the_budget_before_a_step(job_cfg, tmp_path, monkeypatch):
    validated = curvzo.job.validate_config  # past validation (which refuses it), the loop still never overruns
    monkeypatch.setattr(curvzo.job, "validate_config",
                        lambda cfg: dataclasses.replace(validated(cfg), max_forward_passes=1))
    summary = run_job(job_cfg(), tmp_path / "run")
    assert (summary["steps"], summary["forward_passes"]) == (0, 0)


# 11. a huge data line was tokenized whole, and dev/test were encoded at every evaluation --------------------------------
def test_a_huge_prompt_is_bounded_before_tokenizing_and_encodes_as_before():
    tokenizer, max_length = tiny_model("tiny-opt").tokenizer, 64
    longest = []

    class Recording:  # the tokenizer, recording the longest text it was asked to tokenize
        bos_token_id, pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id

        def __call__(self, text, **kwargs):
            longest.append(len(text))
            return tokenizer(text, **kwargs)

    long = Example(prompt="word " * 400_000 + "It was", options=[" great", " terrible"], label=0)
    short = Example(prompt="word " * 200 + "It was", options=[" great", " terrible"], label=0)
    huge, small = encode_examples([long], Recording(), max_length), encode_examples([short], tokenizer, max_length)
    assert max(longest) <= max_length * CHARS_PER_TOKEN_BOUND + len(" terrible")  # not the 2 MB line
    assert huge.input_ids.equal(small.input_ids) and huge.token_id.equal(small.token_id)  # the same last tokens


def test_evaluation_sets_are_encoded_once(monkeypatch):
    model = tiny_model("tiny-opt")
    calls = []
    original = curvzo.objectives.encode_examples

    def counting(examples, *args, **kwargs):
        calls.append(len(examples))
        return original(examples, *args, **kwargs)

    monkeypatch.setattr(curvzo.objectives, "encode_examples", counting)
    monkeypatch.setattr(curvzo.objectives, "_ENCODED", type(curvzo.objectives._ENCODED)())
    dev = [Example(prompt=f"text {i} It was", options=[" great", " terrible"], label=i % 2) for i in range(10)]
    objective = CandidateClassification()
    first = curvzo.train.evaluate(model.model, model.tokenizer, objective, dev, 4, 64, "cpu")
    second = curvzo.train.evaluate(model.model, model.tokenizer, objective, dev, 4, 64, "cpu")
    assert first == second and sum(calls) == 10  # three chunks, encoded at the first evaluation only


# 12. a diverged run exited 0 ---------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_a_diverged_run_exits_non_zero(tmp_path):
    out = tmp_path / "run"
    proc = curvzo_run(*BASE, "optimizer.lr=1e30", "max_nonfinite_streak=2", f"hydra.run.dir={out}")
    assert proc.returncode == DIVERGED_EXIT_CODE, proc.stderr[-3000:]
    assert "status stopped_nonfinite" in one_error_line(proc)
    assert json.loads((out / "status.json").read_text())["status"] == "stopped_nonfinite"


# 13. smaller ------------------------------------------------------------------------------------------------------------
def test_the_progress_bar_shows_the_loss_of_the_step_it_counts(job_cfg, tmp_path, monkeypatch):
    shown = []

    class Bar:
        def __init__(self, *args, **kwargs):
            self.n, self.postfix = 0, None

        def set_postfix(self, **kwargs):
            self.postfix = kwargs["loss"]

        def update(self, n):
            self.n += n
            shown.append((self.n, self.postfix))

        def close(self):
            pass

    monkeypatch.setattr(curvzo.train, "tqdm", Bar)
    run_job(job_cfg(), tmp_path / "run")
    losses = [f"{r['train/loss']:.4f}" for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert shown == list(zip(range(1, 5), losses))


@pytest.mark.integration
def test_wall_time_of_a_resumed_run_counts_every_invocation(tmp_path):
    out = tmp_path / "run"
    run = [*BASE, "budget.max_steps=12", "checkpoint.every=4", f"hydra.run.dir={out}"]
    assert curvzo_run(*run, signal_at=(6, signal.SIGTERM, 1)).returncode == REQUEUE_EXIT_CODE
    first = json.loads((out / "summary.json").read_text())["wall_time_s"]
    assert curvzo_run(*run).returncode == 0
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["wall_time_s"] > first  # the resumed invocation adds to the checkpoint's wall time


def test_the_bench_names_its_own_flag_for_a_missing_data_directory(tmp_path):
    from curvzo.bench.__main__ import BenchError, run_measurement

    with pytest.raises(BenchError, match="pass --data-dir"):
        run_measurement("mezo", ["model=tiny-opt", "task=sst2", f"paths.data_dir={tmp_path / 'none'}"], 1, 1)


# long jobs: a sweep's closing summary, and a rerun that skips its finished jobs -----------------------------------
@pytest.mark.integration
def test_a_sweep_ends_with_a_summary_and_a_rerun_skips_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *BASE, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    first = curvzo_run(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"sweep: 2 jobs, 2 finished\noutputs: {sweep}" in first.stdout
    metrics = [(sweep / str(i) / "metrics.jsonl").read_bytes() for i in (0, 1)]
    (sweep / "1" / "status.json").unlink()  # job 1 as if killed without a checkpoint: refused, not appended to
    again = curvzo_run(*args)
    assert "already holds this finished run" in again.stdout and "nothing to do" in again.stdout
    assert "sweep: 2 jobs, 1 failed, 1 finished" in again.stdout and "job 1 failed: RunDirectoryError:" in again.stdout
    assert [(sweep / str(i) / "metrics.jsonl").read_bytes() for i in (0, 1)] == metrics


def test_a_finished_run_continues_for_more_steps_and_equals_a_longer_run(job_cfg, tmp_path):
    out, whole = tmp_path / "run", tmp_path / "whole"
    assert run_job(job_cfg("checkpoint.every=2"), out)["steps"] == 4
    longer = run_job(job_cfg("checkpoint.every=2", "budget.max_steps=8"), out)  # raised: continued from step 4
    fresh = run_job(job_cfg("checkpoint.every=2", "budget.max_steps=8"), whole)
    assert (longer["resumed_from_step"], longer["steps"], longer["status"]) == (4, 8, "finished")
    assert (out / "trajectory.jsonl").read_text() == (whole / "trajectory.jsonl").read_text()
    assert (longer["best"], longer["test_at_best_dev"]) == (fresh["best"], fresh["test_at_best_dev"])
    with pytest.raises(RunDirectoryError, match=r"is at step 8, past budget.max_steps=6: a run continues for more"):
        run_job(job_cfg("checkpoint.every=2", "budget.max_steps=6"), out)


# issue 18: what a Hydra sweeper (Optuna) optimises is the dev metric, never test ------------------------------------
def test_the_task_function_returns_the_dev_metric_of_the_selected_model(tmp_path):
    from curvzo.run import hydra_app, sweep_objective

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", return_hydra_config=True, overrides=[*BASE, "select_by=dev_metric"])
    cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    value = hydra_app(cfg)  # Hydra passes a given config straight to the task function
    GlobalHydra.instance().clear()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert value == summary["best"]["dev_acc"] == sweep_objective(summary)
    assert sweep_objective({"metric": "f1", "best": {"dev_f1": 0.5}, "test_at_best_dev": {"test_f1": 0.9}}) == 0.5
