"""Every config option composes, resolves and instantiates; presets compose (LHT test_configs)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from curvzo.errors import ConfigError
from curvzo.job import optimizer_kwargs, validate_config
from curvzo.run import CONFIG_DIR
from curvzo.utils.instantiate import instantiate
from tests.helpers import REPO_ROOT, split_command

GROUPS = ("model", "task", "optimizer", "peft", "budget", "logger", "paths", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO_ROOT / "conf" / group).glob("*.yaml"))


def compose_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = compose_cfg([f"{group}={option}", "paths.data_dir=/data"])
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    container = OmegaConf.to_container(job, resolve=True)  # every interpolation resolves
    assert container[group if group != "experiment" else "task"]


def test_group_options_exist():
    assert {"smollm2-135m", "opt-125m", "opt-1.3b", "opt-2.7b", "opt-6.7b", "opt-13b", "llama2-7b", "llama2-13b",
            "tiny-opt", "tiny-llama"} <= set(options("model"))
    assert {"sst2", "rte", "cb", "boolq", "tweets", "wsc", "wic", "multirc", "copa", "record", "squad",
            "drop"} <= set(options("task"))
    assert {"mezo", "fo_adam", "none", "curvzo", "curvzo_uniform", "curvzo_fixed"} <= set(options("optimizer"))
    assert {"smoke", "quickstart", "mezo", "ft"} <= set(options("budget"))


# each CurvZO preset is the full method with exactly these switches changed: the ablation arm (Table 4) or the
# variant (ours, issue 20) it names, and nothing else
CURVZO_PRESET_SWITCHES = {
    "curvzo_uniform": {"sampling": "uniform"},
    "curvzo_fixed": {"budget_mode": "fixed"},  # fixed_fraction 0.4 is also curvzo.yaml's value
    "curvzo_sparse": {"score": "regression", "sampling_power": 1.0, "ht_correction": False},
    "curvzo_variance_optimal": {"score": "regression", "sampling": "variance_optimal", "score_beta": 0.02,
                                "budget_mode": "fixed"},
}


@pytest.mark.parametrize("preset", sorted(CURVZO_PRESET_SWITCHES))
def test_each_curvzo_preset_is_the_full_method_with_only_its_switches(preset):
    assert {o for o in options("optimizer") if o.startswith("curvzo_")} == set(CURVZO_PRESET_SWITCHES)
    base = compose_cfg(["optimizer=curvzo", "model=tiny-opt"]).optimizer
    arm = compose_cfg([f"optimizer={preset}", "model=tiny-opt"]).optimizer
    assert set(arm) == set(base)
    assert {k: arm[k] for k in arm if arm[k] != base[k]} == CURVZO_PRESET_SWITCHES[preset]


@pytest.mark.parametrize("option", [o for o in options("optimizer") if o != "none"])
def test_every_optimizer_instantiates_on_plain_parameters(option):
    cfg = compose_cfg([f"optimizer={option}", "optimizer.lr=1e-3"])
    opt = instantiate(optimizer_kwargs(cfg), "optimizer")([torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("option", options("task"))
def test_every_task_instantiates_without_io(option):
    cfg = compose_cfg([f"task={option}"])
    task = instantiate(cfg.task, "task")
    assert task.name == option


def test_default_job_is_smollm2_tweets_curvzo_with_a_tuned_lr():
    cfg = compose_cfg([])
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.task, choices.optimizer, choices.peft) == ("smollm2-135m", "tweets", "curvzo", "full")
    assert cfg.optimizer.lr > 0  # from conf/model_optimizer/smollm2-135m_curvzo.yaml
    validate_config(cfg)


@pytest.mark.parametrize("override,needle", [
    ("optimizer.lr=-1", "optimizer.lr"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.eps=0", "optimizer.eps"),
    ("budget.max_steps=0", "budget.max_steps"),
    ("budget.batch_size=0", "budget.batch_size"),
    ("select_by=test_acc", "select_by"),
    ("logger.wandb.mode=sometimes", "logger.wandb.mode"),
    ("optimizer.lr=abc", "optimizer.lr"),
])
def test_invalid_values_are_one_line_config_errors(override, needle):
    cfg = compose_cfg([override])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_lr_names_the_key():
    cfg = compose_cfg(["model=opt-125m"])  # no model_optimizer file for opt-125m: lr stays ???
    with pytest.raises(ConfigError, match="optimizer.lr is required"):
        validate_config(cfg)


@pytest.mark.parametrize("override", [
    "+task.evil._target_=os.system", "+logger.evil._target_=builtins.eval", "model.config._target_=transformers.pipeline",
    "+peft.evil._target_=peft.utils.save_and_load.torch_load", "+optimizer.evil._target_=torch.load",
    "+budget.evil._target_=curvzo_evil.module",
])
def test_disallowed_target_is_refused(override):
    cfg = compose_cfg(["model=tiny-opt", override])
    with pytest.raises(ConfigError, match="not an allowed target"):
        validate_config(cfg)


def launch_commands() -> list[tuple[str, str]]:
    """(file, command) for every '# launch: curvzo-run ...' line in conf/, experiments/, sweeps/."""
    found = []
    for folder in ("conf",):  # experiments/ and sweeps/ live inside it (curvzo/conf)
        for path in sorted((REPO_ROOT / folder).rglob("*.yaml")):
            for line in path.read_text().splitlines():
                if line.lstrip("# ").startswith("launch: curvzo-run"):
                    command = line.split("launch:", 1)[1].split("  (")[0].strip()  # drop a trailing note
                    found.append((str(path.relative_to(REPO_ROOT)), command))
    return found


def first_value(key: str, values) -> str:
    """``key=<its first value>`` for a grid entry: a list's first item, an (Optuna) interval's start."""
    override = OverridesParser.create().parse_overrides([f"{key}={values}"])[0]
    if override.is_interval_sweep():
        return f"{key}={override.value().start}"
    return f"{key}={str(values).split(',')[0]}"


@pytest.mark.parametrize("where,command", launch_commands())
def test_every_documented_launch_command_composes_and_validates(where, command):
    config_dir, config_name, overrides = split_command(command)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        # a sweep file's grid: check its first job
        grid = cfg.hydra.sweeper.get("params") or {}
        first_job = [first_value(key, values) for key, values in grid.items()]
        cfg = compose(config_name, overrides=overrides + first_job, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    validate_config(cfg)  # what runs before any data or model is touched


def test_the_lr_schedule_is_its_own_group_and_first_order_selects_linear():
    """The schedule is a config group (conf/schedule/), not a key the job pops from the optimizer node."""
    assert compose_cfg(["optimizer=mezo"]).schedule.name == "constant"
    assert compose_cfg(["optimizer=fo_adam"]).schedule.name == "linear"  # HF Trainer default (MeZO finetune.sh)
    assert compose_cfg(["optimizer=fo_adam", "schedule=constant"]).schedule.name == "constant"  # the command wins
    assert compose_cfg(["optimizer=mezo", "schedule=linear"]).schedule.name == "linear"
    for name in ("mezo", "curvzo", "fo_adam", "zo_adam"):
        assert "lr_schedule" not in compose_cfg([f"optimizer={name}"]).optimizer


# where optimizer values live (issue 17: eps and lr came from keys of conf/peft/, 20 one-line tiny-model files) ------
ZO_METHODS = [o for o in options("optimizer") if o not in ("none", "fo_adam")]


@pytest.mark.parametrize("method", ZO_METHODS)
def test_zo_eps_and_lr_follow_the_peft_mode_and_one_rule_for_test_models(method):
    expected = {("tiny-opt", "full"): (1e-3, 1e-3), ("tiny-llama", "full"): (1e-3, 1e-3), ("opt-125m", "full"): (1e-3, None),
                ("tiny-llama", "lora"): (1e-2, 1e-4), ("tiny-llama", "prefix"): (1e-1, 1e-2)}
    for (model, mode), (eps, lr) in expected.items():
        cfg = compose_cfg([f"model={model}", f"optimizer={method}", f"peft={mode}"])
        assert (cfg.optimizer.eps, cfg.optimizer.lr) == (eps, lr), (model, mode)
        assert set(cfg.peft) == {"adapter"}  # the PEFT node holds no optimizer values


def test_first_order_lr_follows_the_peft_mode_and_tuned_files_still_win():
    assert [compose_cfg(["model=tiny-opt", "optimizer=fo_adam", f"peft={m}"]).optimizer.lr
            for m in ("full", "lora", "prefix")] == [1e-5, 1e-4, 1e-2]
    assert compose_cfg(["optimizer=fo_adam"]).optimizer.eps == 1e-8  # Adam's own eps, not the ZO perturbation
    assert compose_cfg(["optimizer=mezo"]).optimizer.lr == 1e-4  # conf/model_optimizer/smollm2-135m_mezo_full.yaml
    assert not list((REPO_ROOT / "conf" / "model_optimizer").glob("tiny-*"))
