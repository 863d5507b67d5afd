"""`curvzo-run` as a user runs it: one job, a sweep, bad input, help (subprocesses, tiny models)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curvzo.optim.streams import RNG_CONTRACT_VERSION
from tests.helpers import REPO_ROOT

# the check command; the lr comes from conf/zo/full_ft_lr/tiny-opt.yaml
SMOKE = ["model=tiny-opt", "task=sst2", "optimizer=mezo", "budget=smoke"]
METRIC_KEYS = {"step", "train/loss", "lr", "zo/projected_grad", "zo/forward_passes", "time/elapsed_s"}


def curvzo_run(*args: str, cwd: Path = REPO_ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "curvzo.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.integration
def test_one_job_writes_config_metrics_and_summary(tmp_path, shared_data_dir):
    out = tmp_path / "run"
    proc = curvzo_run(*SMOKE, f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={out}", "logger=jsonl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"config.yaml", "metrics.jsonl", "summary.json", "trajectory.jsonl"} <= {p.name for p in out.iterdir()}
    rows = read_jsonl(out / "metrics.jsonl")
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(METRIC_KEYS <= set(r) for r in train_rows)
    assert [r["zo/forward_passes"] for r in train_rows] == [2, 4, 6, 8]
    assert [r["step"] for r in rows if "eval/dev_acc" in r] == [0, 2, 4]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert (summary["task"], summary["model"], summary["optimizer"], summary["seed"]) == ("sst2", "tiny-opt", "mezo", 0)
    assert summary["steps"] == 4 and summary["forward_passes"] == 8
    assert summary["data"] == {"source": summary["data"]["source"], "train": 16, "dev": 8, "test": 16}
    for key in ("zero_shot", "best", "test_at_best_dev", "wall_time_s", "peak_mem_gb", "git_commit", "command"):
        assert key in summary
    assert 0 <= summary["test_at_best_dev"]["test_acc"] <= 1
    config = (out / "config.yaml").read_text()
    assert "lr: 0.001" in config and "???" not in config and "${" not in config
    assert len(read_jsonl(out / "trajectory.jsonl")) == 4


@pytest.mark.integration
def test_same_command_twice_gives_identical_metrics(tmp_path, shared_data_dir):
    rows = []
    for name in ("a", "b"):
        out = tmp_path / name
        proc = curvzo_run(*SMOKE, f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={out}", "logger=jsonl")
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows.append([{k: v for k, v in r.items() if not k.startswith(("time/", "sys/"))}
                     for r in read_jsonl(out / "metrics.jsonl")])
    assert rows[0] == rows[1]


@pytest.mark.integration
def test_multirun_runs_every_job(tmp_path, shared_data_dir):
    sweep = tmp_path / "sweep"
    proc = curvzo_run("-m", *SMOKE, "seed=0,1", f"paths.data_dir={shared_data_dir}", f"hydra.sweep.dir={sweep}",
                      "logger=jsonl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [s["seed"] for s in summaries] == [0, 1]
    assert all(s["status"] == "finished" for s in summaries)


@pytest.mark.integration
def test_named_sweep_file_runs_its_grid(tmp_path, shared_data_dir):
    sweep = tmp_path / "sweep"
    proc = curvzo_run("-cd", str(REPO_ROOT / "sweeps"), "-cn", "mezo_lr_smoke", f"paths.data_dir={shared_data_dir}",
                      f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = sorted((json.loads(p.read_text()) for p in sweep.glob("*/summary.json")), key=lambda s: (s["lr"], s["seed"]))
    assert [(s["lr"], s["seed"]) for s in summaries] == [(1e-4, 0), (1e-4, 1), (1e-3, 0), (1e-3, 1)]


@pytest.mark.integration
def test_wandb_offline_run_is_written_and_finished(tmp_path, shared_data_dir):
    out = tmp_path / "run"
    proc = curvzo_run(*SMOKE, f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={out}", "logger.wandb.mode=offline")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.integration
@pytest.mark.parametrize("args", [["optimizer=no_such_optimizer"], ["-m", "optimizer=mezo,no_such_optimizer"]])
def test_unknown_config_option_is_one_line(tmp_path, args):
    proc = curvzo_run(*args, f"hydra.run.dir={tmp_path / 'x'}")
    assert proc.returncode == 2
    assert proc.stderr == ("error: optimizer=no_such_optimizer: no such option (choose from curvzo, curvzo_fixed, "
                           "curvzo_sparse, curvzo_uniform, curvzo_variance_optimal, dizo, fo_adam, hizoo, loren, mezo, "
                           "none, sparse_mezo, zo_adam, zo_sgd_momentum)\n")
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
@pytest.mark.parametrize("override,needle", [
    ("optimizer.lr=-1", "optimizer.lr must be"),
    ("optimizer.eps=0", "optimizer.eps must be"),
    ("budget.max_steps=0", "budget.max_steps must be"),
    ("paths.data_dir=/nonexistent/data", "/nonexistent/data"),
])
def test_bad_values_fail_before_the_model_loads(tmp_path, override, needle):
    out = tmp_path / "run"
    proc = curvzo_run(*SMOKE, "paths.data_dir=/unused", override, f"hydra.run.dir={out}", "logger=jsonl")
    line = _error_line(proc)
    assert proc.returncode == 2
    assert line.startswith("error: ") and needle in line
    assert not (out / "metrics.jsonl").exists()


@pytest.mark.integration
def test_malformed_data_line_names_file_and_line(tmp_path, shared_data_dir):
    data = tmp_path / "data"
    sst2 = data / "glue" / "SST-2"
    sst2.mkdir(parents=True)
    shutil.copy(shared_data_dir / "glue" / "SST-2" / "dev.tsv", sst2 / "dev.tsv")
    lines = (shared_data_dir / "glue" / "SST-2" / "train.tsv").read_text().splitlines()[:40]
    lines[7] = "a sentence without a label"
    (sst2 / "train.tsv").write_text("\n".join(lines) + "\n")
    proc = curvzo_run(*SMOKE, f"paths.data_dir={data}", f"hydra.run.dir={tmp_path / 'run'}", "logger=jsonl")
    line = _error_line(proc)
    assert "train.tsv:8" in line


@pytest.mark.integration
def test_help_and_cfg_job():
    proc = curvzo_run("--help")
    assert proc.returncode == 0 and ("optimizer: curvzo, curvzo_fixed, curvzo_sparse, curvzo_uniform, "
                                     "curvzo_variance_optimal, dizo, fo_adam, hizoo, loren, mezo, "
                                     "none, sparse_mezo, zo_adam, zo_sgd_momentum") in proc.stdout
    assert proc.stdout.startswith("curvzo-run is powered by Hydra")
    proc = curvzo_run("--cfg", "job", "model=tiny-opt")
    assert proc.returncode == 0 and "_target_: curvzo.models.build_tiny_causal_lm" in proc.stdout


CURVZO_KEYS = {"curvzo/budget_f", "curvzo/expected_selected", "curvzo/num_selected", "curvzo/selected_numel_frac",
               "curvzo/d_eff", "curvzo/entropy", "curvzo/pi_min", "curvzo/pi_max", "curvzo/max_inv_pi_selected"}


@pytest.mark.integration
@pytest.mark.parametrize("preset", ["curvzo", "curvzo_uniform", "curvzo_fixed"])
def test_curvzo_presets_run_and_log_their_diagnostics(tmp_path, shared_data_dir, preset):
    out = tmp_path / "run"
    proc = curvzo_run("model=tiny-opt", "task=sst2", f"optimizer={preset}", "budget=smoke", "budget.max_steps=6",
                      "optimizer.budget_every=2", f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={out}",
                      "logger=jsonl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 6 and all(CURVZO_KEYS <= set(r) for r in rows)
    assert [r["zo/forward_passes"] for r in rows] == [2, 4, 6, 8, 10, 12]
    fractions = [r["curvzo/budget_f"] for r in rows]
    if preset == "curvzo_fixed":
        assert fractions == [0.4] * 6
    else:
        assert fractions[0] == 0.4 and len(set(fractions)) > 1  # adaptive: moves every 2 steps here
    if preset == "curvzo_uniform":
        assert all(r["curvzo/pi_min"] == r["curvzo/pi_max"] == r["curvzo/budget_f"] for r in rows)
    else:
        assert all(r["curvzo/pi_min"] < r["curvzo/pi_max"] for r in rows[1:])
    assert json.loads((out / "summary.json").read_text())["optimizer"] == preset


@pytest.mark.integration
@pytest.mark.parametrize("preset", ["curvzo_sparse", "curvzo_variance_optimal"])
def test_the_new_curvzo_variants_run_and_log_what_tells_whether_sampling_helps(tmp_path, shared_data_dir, preset):
    """Issue 20's variants (ours): they run from their preset names and log the HT factors, the size correlation
    of S and (HT only) the predicted variance ratio to MeZO."""
    out = tmp_path / "run"
    proc = curvzo_run("model=tiny-opt", "task=sst2", f"optimizer={preset}", "budget=smoke", "budget.max_steps=8",
                      f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={out}", "logger=jsonl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "train/loss" in r]
    assert rows and all(CURVZO_KEYS | {"curvzo/ht_factor_mean"} <= set(r) for r in rows)
    assert any("curvzo/score_size_log_corr" in r for r in rows)  # absent while every S sits at the floor
    if preset == "curvzo_sparse":  # no 1/pi: every factor applied is 1, and no HT moment is predicted
        assert all(r["curvzo/ht_factor_max"] == 1.0 and "curvzo/predicted_variance_ratio_vs_mezo" not in r for r in rows)
    else:  # pi within [floor, ceiling]; the ratio appears once the contrast has seen both sides of a block
        assert all(0.05 <= r["curvzo/pi_min"] <= r["curvzo/pi_max"] <= 0.9 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["optimizer"] == preset and summary["status"] == "finished"


# forward passes per step of every method at its defaults (optimizers.md §2); DiZO adds 2J every κ steps
FORWARDS_PER_STEP = {"mezo": 2, "zo_sgd_momentum": 2, "zo_adam": 2, "sparse_mezo": 2, "dizo": 2, "hizoo": 3,
                     "loren": 10, "fo_adam": 1}


@pytest.mark.integration
@pytest.mark.parametrize("method", sorted(FORWARDS_PER_STEP))
def test_every_method_runs_the_smoke_job_and_counts_its_forward_passes(tmp_path, shared_data_dir, method):
    out = tmp_path / "run"
    proc = curvzo_run("model=tiny-opt", "task=sst2", f"optimizer={method}", "budget=smoke",
                      f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={out}", "logger=jsonl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "train/loss" in r]
    per_step = FORWARDS_PER_STEP[method]
    assert [r["zo/forward_passes"] for r in rows] == [per_step * s for s in (1, 2, 3, 4)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["optimizer"] == method
    assert summary["forward_passes_per_step"] == per_step
    assert summary["optimizer_info"]["state_bytes"] >= 0


ZO_METHODS = ("mezo", "curvzo", "sparse_mezo", "hizoo", "loren", "dizo", "zo_sgd_momentum", "zo_adam")


@pytest.mark.integration
def test_every_zo_method_trains_tiny_llama_in_bfloat16_with_exact_probes_and_stochastic_rounding(tmp_path,
                                                                                               shared_data_dir):
    sweep = tmp_path / "sweep"
    proc = curvzo_run("-m", "model=tiny-llama", "model.dtype=bfloat16", "task=sst2", f"optimizer={','.join(ZO_METHODS)}",
                      "budget=smoke", f"paths.data_dir={shared_data_dir}", f"hydra.sweep.dir={sweep}", "logger=jsonl",
                      timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for i, method in enumerate(ZO_METHODS):
        summary = json.loads((sweep / str(i) / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["optimizer"] == method and summary["steps"] == 4
        info = summary["optimizer_info"]
        assert (info["probe"], info["update_rounding"], info["rng_contract"]) == ("exact", "auto", RNG_CONTRACT_VERSION)
        config = (sweep / str(i) / "config.yaml").read_text()
        assert "dtype: bfloat16" in config and "probe: exact" in config


@pytest.mark.integration
def test_dizo_projection_spends_its_probes_on_fresh_batches(tmp_path, shared_data_dir):
    out = tmp_path / "run"
    proc = curvzo_run("model=tiny-opt", "task=sst2", "optimizer=dizo", "optimizer.interval=2",
                      "optimizer.inner_iterations=3", "budget=smoke", f"paths.data_dir={shared_data_dir}",
                      f"hydra.run.dir={out}", "logger=jsonl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "train/loss" in r]
    assert [r["zo/forward_passes"] for r in rows] == [2, 10, 12, 20]  # 2 per step + 2J = 6 after steps 2 and 4
    assert [r["dizo/projections"] for r in rows if "dizo/projections" in r] == [1, 2]
    assert all(0.8 <= r["dizo/ratio_min"] <= r["dizo/ratio_max"] <= 1.2 for r in rows if "dizo/ratio_min" in r)
    info = json.loads((out / "summary.json").read_text())["optimizer_info"]
    assert len(info["projected_tensors"]) == 4 and all("k_proj" in n or "v_proj" in n for n in info["projected_tensors"])


@pytest.mark.integration
def test_forward_pass_budget_stops_and_evaluates_at_equal_cost(tmp_path, shared_data_dir):
    out = tmp_path / "run"
    proc = curvzo_run("model=tiny-opt", "task=sst2", "optimizer=hizoo", "budget=smoke", "budget.max_steps=100",
                      "budget.max_forward_passes=12", "budget.eval_every_forward_passes=6",
                      f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={out}", "logger=jsonl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["zo/forward_passes"] for r in rows if "train/loss" in r] == [3, 6, 9, 12]
    assert [(r["step"], r["zo/forward_passes"]) for r in rows if "eval/dev_acc" in r] == [(0, 0), (2, 6), (4, 12)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["forward_passes"] == 12


@pytest.mark.integration
def test_forward_pass_budget_is_never_overrun_by_a_projection_step(tmp_path, shared_data_dir):
    # DiZO steps cost 2, 2 + 2J, 2, 2 + 2J, ... (interval 2, J 3): a budget of 15 ends after 3 steps (12 passes)
    out = tmp_path / "run"
    proc = curvzo_run("model=tiny-opt", "task=sst2", "optimizer=dizo", "optimizer.interval=2",
                      "optimizer.inner_iterations=3", "budget=smoke", "budget.max_steps=100",
                      "budget.max_forward_passes=15", f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={out}",
                      "logger=jsonl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["zo/forward_passes"] for r in rows if "train/loss" in r] == [2, 10, 12]
    assert rows[-1]["step"] == 3 and "eval/dev_acc" in rows[-1]  # evaluated where the budget ended


def test_plugin_configs_of_hydra_groups_are_left_to_hydra():
    from curvzo.command_line import command_line_problem
    from curvzo.run import CONFIG_DIR

    # conf/hydra/launcher/ holds only our launchers; the plugin's own live in Hydra's ConfigStore
    assert command_line_problem(["-m", "hydra/launcher=submitit_slurm"], CONFIG_DIR) is None
    assert command_line_problem(["hydra/launcher=curvzo_slurm", "task=nope"], CONFIG_DIR).startswith(
        "task=nope: no such option")
