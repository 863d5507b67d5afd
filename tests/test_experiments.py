"""The papers' experiments: presets (experiments/), their grids (sweeps/), the submitit launchers and the make targets.

Every experiment and sweep file composes and validates; the grids hold the spec's values (optimizers.md, protocol.md)
and expand to the expected number of jobs; the SLURM launcher composes with requeue on and two tiny jobs really run
through submitit's local executor; `make -n <target>` prints the sweep and analysis commands; and table1-smoke's
sweep runs end to end on tiny-opt.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from curvzo.job import validate_config
from curvzo.run import CONFIG_DIR
from tests.helpers import REPO_ROOT, split_command

EXPERIMENTS = REPO_ROOT / "experiments"
SWEEPS = REPO_ROOT / "sweeps"
TARGETS = ("table1", "table1_lora", "figure3", "ablation", "memory")  # the make targets, one paper experiment each
SCALES = ("smoke", "local", "paper")

EIGHT = ["sst2", "rte", "cb", "boolq", "wsc", "wic", "squad", "drop"]  # CurvZO Table 1 (protocol.md §9.4)
SIX = ["sst2", "rte", "cb", "boolq", "wsc", "wic"]  # the local classification tasks (protocol.md §11)
GEN = {"squad", "drop"}
TABLE1_METHODS = {"none", "fo_adam", "mezo", "dizo", "hizoo", "loren", "sparse_mezo", "curvzo"}
MEMORY_METHODS = TABLE1_METHODS | {"zo_sgd_momentum", "zo_adam"}
ARMS = {"curvzo_uniform", "curvzo_fixed", "curvzo"}  # CurvZO Table 4 (optimizers.md §11.7)

# the spec's lr grids (optimizers.md §4, §5, §7-§11)
MEZO_FULL, MEZO_FULL_GEN = {1e-6, 1e-7}, {1e-6, 5e-7, 1e-7}  # MeZO Table 16, full FT on OPT
MEZO_LORA, MEZO_LORA_GEN = {1e-4, 5e-5}, {1e-4, 5e-5, 1e-5}  # MeZO Table 16, LoRA
FT_FULL = {1e-5, 5e-5, 8e-5}  # MeZO FT grid (Table 16)
CURVZO = {1e-7, 3e-7, 1e-6}  # optimizers.md §11.6

# jobs per sweep file: the cross product of its hydra.sweeper.params
JOBS = {
    "table1-paper-zeroshot": 8, "table1-paper-ft": 72, "table1-paper-zo": 192, "table1-paper-zo_gen": 30,
    "table1-paper-sparse_mezo": 96, "table1-paper-curvzo": 72, "table1-local": 48, "table1-smoke": 8,
    "table1_lora-paper-zeroshot": 8, "table1_lora-paper-ft": 48, "table1_lora-paper-zo": 240,
    "table1_lora-paper-zo_gen": 36, "table1_lora-paper-sparse_mezo": 96, "table1_lora-local": 48, "table1_lora-smoke": 8,
    "figure3-paper-mezo": 12, "figure3-paper-curvzo": 18, "figure3-local": 8, "figure3-smoke": 4,
    "ablation-paper": 216, "ablation-local": 36, "ablation-smoke": 3,
    "memory-paper": 20, "memory-local": 10, "memory-smoke": 4,
}

# what each experiment preset sets for one job
PRESETS = {
    "table1": dict(model="opt-2.7b", peft="full", budget="mezo_fp", data_dir=None),
    "table1_lora": dict(model="opt-2.7b", peft="lora", budget="mezo_fp", data_dir=None),
    "figure3": dict(model="opt-2.7b", peft="full", budget="mezo_curve", data_dir=None),
    "ablation": dict(model="opt-2.7b", peft="full", budget="mezo", data_dir=None),
    "memory": dict(model="opt-2.7b", peft="full", budget="memory", data_dir=None),
    "table1-local": dict(model="smollm2-135m", peft="full", budget="cpu_local", data_dir="../shared/data"),
    "table1_lora-local": dict(model="smollm2-135m", peft="lora", budget="cpu_local", data_dir="../shared/data"),
    "figure3-local": dict(model="smollm2-135m", peft="full", budget="cpu_curve", data_dir="../shared/data"),
    "ablation-local": dict(model="smollm2-135m", peft="full", budget="cpu_local", data_dir="../shared/data"),
    "memory-local": dict(model="smollm2-135m", peft="full", budget="memory", data_dir="../shared/data"),
    **{f"{t}-smoke": dict(model="tiny-opt", peft="lora" if t == "table1_lora" else "full",
                          budget="memory" if t == "memory" else "smoke", data_dir="../shared/data") for t in TARGETS},
}

NEW_FILES = sorted(
    [EXPERIMENTS / f"{name}.yaml" for name in PRESETS]
    + [SWEEPS / f"{name}.yaml" for name in JOBS]
    + [REPO_ROOT / "conf" / "budget" / f"{b}.yaml" for b in ("mezo_fp", "mezo_curve", "memory", "cpu_local", "cpu_curve")]
    + sorted((REPO_ROOT / "conf" / "hydra" / "launcher").glob("*.yaml"))
)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


# helpers -------------------------------------------------------------------------------------------------------------
def compose_job(config_dir: str, config_name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def sweep_lists(params) -> dict[str, list[str]]:
    """hydra.sweeper.params as {key: [value, ...]}, parsed with Hydra's own override parser."""
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    return {o.key_or_group: [str(o.value())] if o.is_interval_sweep()  # an Optuna interval is a range, not a list
            else list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for o in parsed}


def compose_sweep(name: str, extra: list[str] = ()):
    """The sweep file's base config (no job overrides) and its grid."""
    cfg = compose_job(str(SWEEPS), name, [f"hydra.searchpath=[file://{CONFIG_DIR}]", *extra])
    return cfg, sweep_lists(cfg.hydra.sweeper.get("params") or {})


def header_commands(path: Path, label: str) -> list[str]:
    """The `# <label>: curvzo-run ...` lines of a file (a trailing '  (note)' dropped)."""
    commands = []
    for line in path.read_text().splitlines():
        body = line.lstrip("# ")
        if line.startswith("#") and body.startswith(f"{label}: curvzo-run"):
            commands.append(body.split(":", 1)[1].split("  (")[0].strip())
    return commands


def jobs_of(name: str) -> set[tuple]:
    """Every job of a sweep file as (task, optimizer, peft, lr, seed), from its grid and its base config.

    lr is the grid's value, else the base config's when the optimizer is fixed, else "default" (each method's own)."""
    cfg, lists = compose_sweep(name)
    choices = cfg.hydra.runtime.choices
    keys = list(lists)
    jobs = set()
    for values in itertools.product(*lists.values()):
        job = dict(zip(keys, values))
        if "optimizer.lr" in job:
            lr = float(job["optimizer.lr"])
        else:
            lr = "default" if "optimizer" in job else cfg.optimizer.get("lr")
        jobs.add((job.get("task", choices.task), job.get("optimizer", choices.optimizer), choices.peft, lr,
                  int(job.get("seed", cfg.seed))))
    return jobs


# experiment files ----------------------------------------------------------------------------------------------------
def test_every_target_has_its_three_scales_and_nothing_else():
    assert {p.stem for p in EXPERIMENTS.glob("*.yaml")} >= set(PRESETS)
    for target in TARGETS:
        for scale in SCALES:
            assert sorted(SWEEPS.glob(f"{target}-{scale}*.yaml")), f"no sweeps/{target}-{scale}*.yaml"
    hyphenated = {p.stem for p in SWEEPS.glob("*-*.yaml")}
    assert hyphenated == set(JOBS), "a sweep file without an expected job count (update JOBS)"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_experiment_file_is_global_and_headed_by_its_commands(name):
    lines = (EXPERIMENTS / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith("# launch: curvzo-run -cn sweeps/"), "the second line is the command that runs it"
    sweeps = [split_command(c)[1].removeprefix("sweeps/") for c in header_commands(EXPERIMENTS / f"{name}.yaml", "launch")]
    target, _, scale = name.partition("-")
    expected = sorted(p.stem for p in SWEEPS.glob(f"{target}-{scale or 'paper'}*.yaml"))
    assert sorted(sweeps) == expected, "the header names every sweep of its scale"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_experiment_sets_one_jobs_settings(name):
    cfg = compose_job(CONFIG_DIR, "config", [f"experiment={name}"])
    choices, want = cfg.hydra.runtime.choices, PRESETS[name]
    assert (choices.model, choices.peft, choices.budget) == (want["model"], want["peft"], want["budget"])
    assert cfg.paths.data_dir == want["data_dir"]
    assert (cfg.select_by, cfg.data_seed) == ("dev_loss", 0)  # MeZO's selection and sample (protocol.md §3, §8)
    assert cfg.logger.wandb.group == name
    if want["model"] != "opt-2.7b":  # the CPU and smoke presets keep W&B off
        assert cfg.logger.wandb.mode == "disabled"


@pytest.mark.parametrize("where,command", [(f"experiments/{p.name}", c) for p in sorted(EXPERIMENTS.glob("*.yaml"))
                                           for label in ("launch", "one job") for c in header_commands(p, label)])
def test_every_experiment_command_composes_and_validates(where, command):
    config_dir, config_name, overrides = split_command(command)
    cfg = compose_job(config_dir, config_name, overrides)
    grid = sweep_lists(cfg.hydra.sweeper.get("params") or {})
    cfg = compose_job(config_dir, config_name, overrides + [f"{key}={values[0]}" for key, values in grid.items()])
    validate_config(cfg)  # what runs before any data or model is touched
    assert cfg.hydra.runtime.choices.experiment == Path(where).stem


def test_paper_budgets_follow_the_protocol():
    fp = compose_job(CONFIG_DIR, "config", ["experiment=table1"]).budget
    # 40k forward passes = MeZO's 20k steps x 2, eval every 4000 MeZO steps, batch 16, 1000/500/1000 (protocol.md §8)
    assert (fp.max_forward_passes, fp.eval_every_forward_passes, fp.batch_size) == (40000, 8000, 16)
    assert (fp.num_train, fp.num_dev, fp.num_test) == (1000, 500, 1000)
    curve = compose_job(CONFIG_DIR, "config", ["experiment=figure3"]).budget
    assert (curve.max_steps, curve.eval_every, curve.batch_size, curve.num_dev, curve.num_test) == (20000, 500, 16, 500, 1000)
    ft = compose_job(str(SWEEPS), "table1-paper-ft", [f"hydra.searchpath=[file://{CONFIG_DIR}]"]).budget
    assert (ft.max_steps, ft.batch_size) == (625, 8)  # FT: 5 epochs at batch 8 (MeZO finetune.sh)
    local = compose_job(CONFIG_DIR, "config", ["experiment=table1-local"]).budget
    assert local.max_forward_passes == 60 and local.max_forward_passes % 30 == 0  # 2, 3 and 10 forward passes per step divide it


# sweep files ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(JOBS))
def test_sweep_file_is_headed_by_its_command(name):
    lines = (SWEEPS / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"  # run as -cn sweeps/<name>, its keys stay at the top level
    assert lines[1].startswith("# ") and "launch:" not in lines[1]
    assert lines[2] == f"# launch: curvzo-run -cn sweeps/{name}"


@pytest.mark.parametrize("path", NEW_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_key_is_commented(path):
    """A comment on the key's line, or a comment block right above it (long grid comments)."""
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if re.match(r"^\s*[\w./@-]+:", line) and line.strip() != "defaults:":
            above = lines[number - 2].strip() if number > 1 else ""
            assert "#" in line or above.startswith("#"), f"{path.name}:{number}: key without a comment: {line.strip()}"


@pytest.mark.parametrize("name", sorted(JOBS))
def test_sweep_grid_size_and_jobs_compose_and_validate(name):
    cfg, lists = compose_sweep(name)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert len(list(itertools.product(*lists.values()))) == JOBS[name]
    target = name.split("-")[0]
    assert cfg.hydra.runtime.choices.experiment == f"{target}-{name.split('-')[1]}".replace("-paper", "")
    # the first job, and one job for each model and each optimizer of the grid (the lr values are checked below)
    first = {key: values[0] for key, values in lists.items()}
    variants = [first] + [{**first, key: value} for key in ("model", "optimizer") for value in lists.get(key, [])[1:]]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        for job in variants:
            job_cfg = compose(name, overrides=[f"hydra.searchpath=[file://{CONFIG_DIR}]"] + [f"{k}={v}" for k, v in job.items()],
                              return_hydra_config=True)
            HydraConfig.instance().set_config(job_cfg)
            validate_config(job_cfg)
            if name.endswith("-local"):
                assert job_cfg.task.name not in GEN | {"record"}  # SQuAD, DROP, ReCoRD have no local files (protocol.md §11)
            if job_cfg.optimizer.get("_target_") and job_cfg.hydra.runtime.choices.optimizer != "fo_adam":
                mode = job_cfg.hydra.runtime.choices.peft  # eps per PEFT mode: 1e-3 full, 1e-2 LoRA
                assert job_cfg.optimizer.eps == OmegaConf.load(Path(CONFIG_DIR, "zo", "peft", f"{mode}.yaml")).eps


def table_jobs(prefix: str) -> set[tuple]:
    return set().union(*(jobs_of(p.stem) for p in sorted(SWEEPS.glob(f"{prefix}-paper-*.yaml"))))


def lrs_by_cell(jobs: set[tuple]) -> dict[tuple[str, str], set]:
    cells: dict[tuple[str, str], set] = {}
    for task, optimizer, _, lr, _ in jobs:
        cells.setdefault((task, optimizer), set()).add(lr)
    return cells


def assert_close_sets(actual: set, expected: set, where):
    if None in expected:
        assert actual == expected, where
    else:
        assert sorted(actual) == pytest.approx(sorted(expected)), where


def test_table1_paper_grids_are_the_specs():
    jobs = table_jobs("table1")
    assert len(jobs) == 470 == sum(JOBS[p.stem] for p in SWEEPS.glob("table1-paper-*.yaml"))  # no job twice
    cells = lrs_by_cell(jobs)
    assert set(cells) == {(t, m) for t in EIGHT for m in TABLE1_METHODS}  # every cell of Table 1
    for (task, method), lrs in cells.items():
        gen = task in GEN
        expected = {
            "none": {None},
            "fo_adam": FT_FULL,
            "curvzo": CURVZO,
            "sparse_mezo": {1e-7, 1e-6, 2e-6, 5e-6} | ({5e-7} if gen else set()),  # MeZO grid and 2-5x above (§8)
        }.get(method, MEZO_FULL_GEN if gen else MEZO_FULL)  # MeZO; DiZO README/dizo.sh; HiZOO, LOREN: no spec grid
        assert_close_sets(lrs, expected, (task, method))
    for task, method, peft, lr, seed in jobs:
        assert peft == "full"
        assert seed in ({0} if method == "none" else {0, 1, 2})
    for task in EIGHT:  # three seeds for every trained grid point
        assert {(m, lr, s) for t, m, _, lr, s in jobs if t == task and m == "mezo"} == {
            (m, lr, s) for m, lr, s in itertools.product(["mezo"], MEZO_FULL_GEN if task in GEN else MEZO_FULL, [0, 1, 2])}


def test_table1_lora_paper_grids_are_the_specs():
    jobs = table_jobs("table1_lora")
    assert len(jobs) == 428 == sum(JOBS[p.stem] for p in SWEEPS.glob("table1_lora-paper-*.yaml"))
    cells = lrs_by_cell(jobs)
    assert set(cells) == {(t, m) for t in EIGHT for m in TABLE1_METHODS}
    for (task, method), lrs in cells.items():
        gen = task in GEN
        expected = {
            "none": {None},
            "fo_adam": MEZO_LORA,  # no FT-LoRA grid in the spec: MeZO's LoRA grid
            "sparse_mezo": {5e-5, 1e-4, 2e-4, 5e-4} | ({1e-5} if gen else set()),
        }.get(method, MEZO_LORA_GEN if gen else MEZO_LORA)  # CurvZO, DiZO, HiZOO, LOREN: no LoRA grid in the spec
        assert_close_sets(lrs, expected, (task, method))
    assert {peft for _, _, peft, *_ in jobs} == {"lora"}
    cfg, _ = compose_sweep("table1_lora-paper-zo", ["optimizer=mezo"])
    assert cfg.optimizer.eps == 1e-2  # MeZO Table 16, LoRA


def test_figure3_ablation_and_memory_paper_grids():
    fig = jobs_of("figure3-paper-mezo") | jobs_of("figure3-paper-curvzo")
    cells = lrs_by_cell(fig)
    assert set(cells) == {(t, m) for t in ("boolq", "rte") for m in ("mezo", "curvzo")}
    for (task, method), lrs in cells.items():
        assert_close_sets(lrs, MEZO_FULL if method == "mezo" else CURVZO, (task, method))
    ablation = lrs_by_cell(jobs_of("ablation-paper"))
    assert set(ablation) == {(t, m) for t in EIGHT for m in ARMS}
    for cell, lrs in ablation.items():
        assert_close_sets(lrs, CURVZO, cell)  # each arm re-tuned over CurvZO's grid (optimizers.md §11.6)
    cfg, lists = compose_sweep("memory-paper")
    assert set(lists["model"]) == {"opt-2.7b", "opt-6.7b"} and set(lists["optimizer"]) == MEMORY_METHODS
    assert (cfg.task.name, cfg.budget.batch_size) == ("multirc", 1)  # MeZO Table 22's setting


def test_local_and_smoke_grids():
    assert {(t, m) for t, m, *_ in jobs_of("table1-local")} == {(t, m) for t in SIX for m in TABLE1_METHODS}
    assert {(t, m) for t, m, *_ in jobs_of("table1_lora-local")} == {(t, m) for t in SIX for m in TABLE1_METHODS}
    assert {(t, m) for t, m, *_ in jobs_of("ablation-local")} == {(t, m) for t in SIX for m in ARMS}
    assert {(t, m) for t, m, *_ in jobs_of("figure3-local")} == {(t, m) for t in ("boolq", "rte") for m in ("mezo", "curvzo")}
    for name in ("table1-smoke", "table1_lora-smoke", "figure3-smoke", "ablation-smoke", "memory-smoke"):
        jobs = jobs_of(name)
        assert len({t for t, *_ in jobs}) <= 2 and len({s for *_, s in jobs}) <= 2 and len({lr for *_, lr, _ in jobs}) == 1


# launchers -----------------------------------------------------------------------------------------------------------
def test_slurm_launcher_composes_with_one_gpu_and_requeue(monkeypatch, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    monkeypatch.delenv("SBATCH_PARTITION", raising=False)
    cfg, _ = compose_sweep("table1-paper-curvzo", ["hydra/launcher=curvzo_slurm"])
    with pytest.raises(InterpolationResolutionError, match="SBATCH_PARTITION"):
        OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # the partition is required
    monkeypatch.setenv("SBATCH_PARTITION", "from-env")
    assert cfg.hydra.launcher.partition == "from-env"
    cfg, _ = compose_sweep("table1-paper-curvzo", ["hydra/launcher=curvzo_slurm", "hydra.launcher.partition=gpu",
                                                  f"hydra.sweep.dir={tmp_path}"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 1
    assert launcher["max_num_timeout"] > 0 and launcher["additional_parameters"]["requeue"] is True
    assert launcher["timeout_min"] >= 60 and launcher["mem_gb"] > 0

    # the sbatch script submitit would write, with the plugin's own split of the parameters (SlurmLauncher.launch)
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = {k: v for k, v in launcher.items() if k != "_target_"}
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: f"/usr/bin/{name}")  # submitit looks for srun
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -c pass", "uid")
    for flag in ("--partition=gpu", "--gpus-per-node=1", "--requeue", f"--time={launcher['timeout_min']}",
                 "--ntasks-per-node=1", "--signal=USR2@120"):
        assert f"#SBATCH {flag}\n" in script
    assert executor._executor.max_num_timeout == launcher["max_num_timeout"]


@pytest.mark.integration
def test_submitit_local_launcher_runs_two_tiny_jobs(tmp_path, shared_data_dir):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "curvzo.run", "-m", "experiment=table1-smoke", "task=sst2",
                           "optimizer=mezo", "seed=0,1", "hydra/launcher=curvzo_submitit_local",
                           f"paths.data_dir={shared_data_dir}", f"hydra.sweep.dir={sweep}"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [(s["seed"], s["status"], s["model"]) for s in summaries] == [(0, "finished", "tiny-opt"), (1, "finished", "tiny-opt")]


# make targets --------------------------------------------------------------------------------------------------------
def make_dry_run(*args: str) -> list[str]:
    """`make -n` in the repository, the install stamp taken as up to date (-o): prints, never runs or installs."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    proc = subprocess.run(["make", "-n", "-o", ".venv/.installed", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [" ".join(line.split()) for line in proc.stdout.splitlines() if line.strip()]


@pytest.mark.integration
@pytest.mark.parametrize("target,scale", list(itertools.product(TARGETS, ("smoke", "local"))))
def test_make_target_prints_its_sweep_and_analysis(target, scale):
    runs = f"multirun/{target}-{scale}"
    lines = make_dry_run(target, f"SCALE={scale}")
    assert lines == [f".venv/bin/curvzo-run -cn sweeps/{target}-{scale} hydra.sweep.dir={runs}/{target}-{scale}",
                     f".venv/bin/curvzo-tables {runs} {runs}/analysis"]
    # the command is the one in the experiment's header, plus where the runs go
    assert f"curvzo-run -cn sweeps/{target}-{scale}" in header_commands(EXPERIMENTS / f"{target}-{scale}.yaml", "launch")


@pytest.mark.integration
def test_make_defaults_to_smoke_and_passes_data_dir_and_args():
    assert make_dry_run("table1") == make_dry_run("table1", "SCALE=smoke")
    lines = make_dry_run("figure3", "SCALE=local", "DATA_DIR=my/data", "RUNS=out/r", "ARGS=seed=0,1")
    assert lines == [".venv/bin/curvzo-run -cn sweeps/figure3-local hydra.sweep.dir=out/r/figure3-local "
                     "paths.data_dir=my/data seed=0,1", ".venv/bin/curvzo-tables out/r out/r/analysis"]


@pytest.mark.integration
@pytest.mark.parametrize("target", TARGETS)
def test_make_paper_target_submits_every_paper_sweep_to_slurm(target):
    lines = make_dry_run(target, "SCALE=paper", "PARTITION=gpu")
    sweeps = sorted(p.stem for p in SWEEPS.glob(f"{target}-paper*.yaml"))
    runs = f"multirun/{target}-paper"
    assert lines[:-1] == [f".venv/bin/curvzo-run -cn sweeps/{s} hydra.sweep.dir={runs}/{s} "
                          "hydra/launcher=curvzo_slurm hydra.launcher.partition=gpu" for s in sweeps]
    assert lines[-1] == f".venv/bin/curvzo-tables {runs} {runs}/analysis"


@pytest.mark.integration
def test_make_rejects_an_unknown_scale():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(["make", "-n", "-o", ".venv/.installed", "table1", "SCALE=huge"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "choose smoke, local or paper" in proc.stderr


# end to end ----------------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_table1_smoke_sweep_runs_end_to_end(tmp_path, shared_data_dir):
    """The sweep `make table1` runs (8 tiny jobs, about a minute on 2 cores)."""
    sweep = tmp_path / "table1-smoke"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "curvzo.run", "-cd", "sweeps", "-cn", "table1-smoke",
                           f"paths.data_dir={shared_data_dir}", f"hydra.sweep.dir={sweep}"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == JOBS["table1-smoke"]
    assert {(s["task"], s["optimizer"], s["seed"]) for s in summaries} == set(
        itertools.product(["sst2", "rte"], ["mezo", "curvzo"], [0, 1]))
    assert all(s["status"] == "finished" and s["model"] == "tiny-opt" and s["steps"] == 4 for s in summaries)


# every file runs the methods it names (issue 17: sweeps/mezo_lr_smoke.yaml, "a MeZO sweep", ran CurvZO) -------------
OPTIMIZERS = {p.stem for p in (REPO_ROOT / "conf" / "optimizer").glob("*.yaml")}
ALIASES = {"ft": "fo_adam", "zeroshot": "none"}  # how file names spell first-order fine-tuning and zero-shot


def named_methods(text: str, aliases: bool = True) -> set[str]:
    """The optimizers a file name or header line names: its words (split at -, _, spaces and commas), longest
    method names first, so sparse_mezo is not also mezo; ``aliases`` also reads ft and zeroshot (file names)."""
    words, names = re.split(r"[-_\s,]+", text.lower()), set()
    for name in sorted(OPTIMIZERS | (set(ALIASES) if aliases else set()), key=lambda n: n.count("_"), reverse=True):
        parts = name.split("_")
        for i in range(len(words) - len(parts) + 1):
            if words[i:i + len(parts)] == parts:
                names.add(ALIASES.get(name, name))
                words[i:i + len(parts)] = [""] * len(parts)
    return names


def test_named_methods_reads_file_names_and_headers():
    assert named_methods("mezo_lr_smoke") == {"mezo"}
    assert named_methods("table1-paper-sparse_mezo") == {"sparse_mezo"}
    assert named_methods("table1-paper-zo_gen") == set()
    assert named_methods("# MeZO vs CurvZO on SmolLM2", aliases=False) == {"mezo", "curvzo"}
    assert named_methods("table1_lora-paper-ft, zeroshot") == {"fo_adam", "none"}
    assert named_methods("MeZO and LOREN on OPT-2.7B, full-FT grid", aliases=False) == {"mezo", "loren"}


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_runs_the_optimizers_it_names(path):
    """The methods a sweep's file name names are exactly those its jobs run; those its first line names run."""
    cfg, lists = compose_sweep(path.stem)
    runs = set(lists.get("optimizer", [cfg.hydra.runtime.choices.optimizer]))
    named = named_methods(path.stem)
    if named:
        assert runs == named, f"{path.name} is named after {sorted(named)} but its jobs run {sorted(runs)}"
    mentioned = named_methods(path.read_text().splitlines()[1], aliases=False)  # [0] is "# @package _global_"
    assert mentioned <= runs, f"{path.name}'s first line names {sorted(mentioned - runs)}, which none of its jobs run"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_runs_the_optimizer_it_names(path):
    """An experiment's own name (sst2_smollm2_mezo) or its `one job:` command names the method it runs."""
    for command in header_commands(path, "one job"):
        config_dir, config_name, overrides = split_command(command)
        named = {o.split("=", 1)[1] for o in overrides if o.startswith("optimizer=")}
        assert compose_job(config_dir, config_name, overrides).hydra.runtime.choices.optimizer in named
    named = named_methods(path.stem)
    if named:
        assert {compose_job(CONFIG_DIR, "config", [f"experiment={path.stem}"]).hydra.runtime.choices.optimizer} == named


# tuning on dev with Optuna (issue 18) ------------------------------------------------------------------------------------
@pytest.mark.integration
def test_the_optuna_sweep_runs_two_trials_and_keeps_the_best_dev_value(tmp_path, shared_data_dir):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "tune"
    done = subprocess.run([sys.executable, "-m", "curvzo.run", "-cn", "sweeps/tune_smoke", f"paths.data_dir={shared_data_dir}",
                           f"hydra.sweep.dir={sweep}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = [json.loads((sweep / job / "summary.json").read_text()) for job in ("0", "1")]
    assert len({t["lr"] for t in trials}) == 2  # Optuna chose two learning rates
    results = (sweep / "optimization_results.yaml").read_text()
    best = max(t["best"]["dev_acc"] for t in trials)  # the value each trial returned: dev, never test
    assert f"best_value: {best}" in results


def test_the_tuning_sweep_composes_with_a_search_space_on_dev():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg, _ = compose_sweep("tune_smollm2_sst2", ["optimizer=hizoo"])
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.select_by == "dev_metric"
    assert cfg.hydra.sweeper.params["optimizer.lr"].startswith("tag(log, interval(")
    assert cfg.hydra.runtime.choices.optimizer == "hizoo" and cfg.model.dtype == "float32"
