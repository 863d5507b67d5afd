"""The config schema (curvzo/config_schema.py): Hydra checks types and known keys of the top-level,
budget, checkpoint, paths and logger nodes while composing; ranges are declared beside each field."""

from __future__ import annotations

from dataclasses import fields

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf

from curvzo.command_line import command_line_problem
from curvzo.config_schema import _NESTED, CurvzoSchema, check_ranges, schema_problem
from curvzo.errors import ConfigError
from curvzo.run import CONFIG_DIR
from tests.test_configs import compose_cfg

BASE = ["model=tiny-opt", "task=sst2", "optimizer=mezo", "budget=smoke", "logger=jsonl"]


@pytest.mark.parametrize("override,expected", [
    ("budget.max_steps=abc", "budget.max_steps: Value 'abc' of type 'str' could not be converted to Integer"),
    ("budget.batch_size=4.5", "budget.batch_size: Value '4.5' of type 'float' could not be converted to Integer"),
    ("checkpoint.weights=maybe", "checkpoint.weights: Value 'maybe' is not a valid bool (type str)"),
    ("seed=true", "seed: Value 'True' of type 'bool' could not be converted to Integer"),
    ("logger.log_every=[1,2]", "logger.log_every: Value '[1, 2]' of type 'list' could not be converted to Integer"),
    ("paths.output_rot=x", "paths.output_rot: no such key (did you mean paths.output_root?)"),
    ("checkpoint.evry=3", "checkpoint.evry: no such key (did you mean checkpoint.every?)"),
    ("logger.wandb.mdoe=online", "logger.wandb.mdoe: no such key (did you mean logger.wandb.mode?)"),
    ("max_nonfinite=3", "max_nonfinite: no such key (did you mean max_nonfinite_streak?)"),
])
def test_a_wrong_type_or_unknown_key_is_one_line_while_composing(override, expected):
    assert command_line_problem([*BASE, override], CONFIG_DIR) == expected


def test_a_config_file_with_a_wrong_type_is_refused_while_composing(tmp_path):
    # a user's own budget file (added with hydra.searchpath) is checked against the same schema
    (tmp_path / "budget").mkdir()
    (tmp_path / "budget" / "mine.yaml").write_text("max_steps: ten\nbatch_size: 4\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"), pytest.raises(HydraException) as err:
        compose("config", overrides=[f"hydra.searchpath=[file://{tmp_path}]", "budget=mine"])
    GlobalHydra.instance().clear()
    assert schema_problem(err.value) == \
        "budget.max_steps: Value 'ten' of type 'str' could not be converted to Integer (in budget/mine)"


def test_ranges_are_checked_in_one_place_with_the_key_named():
    cases = {"budget.batch_size": (0, ">= 1"), "budget.num_test": (-1, ">= 0"), "checkpoint.every": (0, ">= 1"),
             "seed": (-3, ">= 0"), "max_nonfinite_streak": (0, ">= 1"), "budget.max_forward_passes": (0, ">= 1"),
             "select_by": ("dev_acc", "dev_loss, dev_metric"), "logger.wandb.mode": ("on", "offline, online, disabled")}
    for key, (value, needle) in cases.items():
        cfg = compose_cfg(BASE)
        OmegaConf.update(cfg, key, value)
        with pytest.raises(ConfigError) as err:
            check_ranges(cfg)
        assert str(err.value).startswith(f"{key} must be ") and needle in str(err.value) and repr(value) in str(err.value)
    cfg = compose_cfg(BASE)
    OmegaConf.update(cfg, "budget.max_forward_passes", None)  # Optional: null means off
    check_ranges(cfg)


def test_every_ranged_field_is_a_key_of_the_composed_config():
    cfg = compose_cfg(BASE)

    def keys(schema, prefix=""):
        for spec in fields(schema):
            if spec.name in _NESTED.get(schema, {}):
                yield from keys(_NESTED[schema][spec.name], f"{prefix}{spec.name}.")
            else:
                yield f"{prefix}{spec.name}"

    declared = set(keys(CurvzoSchema))
    assert {"budget.num_train", "checkpoint.weights", "paths.output_root", "logger.wandb.tags", "seed"} <= declared
    for key in declared:
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key
