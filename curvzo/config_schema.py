"""Structured schemas of the config's own nodes: the top-level keys, ``budget``, ``checkpoint``, ``paths``
and ``logger``.

The primary config (conf/config.yaml) starts from ``curvzo_schema``, so Hydra checks each key's type
and refuses unknown keys while it composes, naming the key, before any job code runs. Ranges and
choices, which OmegaConf does not check, are declared beside each field and checked in one place,
``check_ranges``. The groups that configure code (model, task, optimizer, peft, schedule) are checked
by the classes they instantiate.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from curvzo.errors import ConfigError

SCHEMA_NAME = "curvzo_schema"  # the ConfigStore entry conf/config.yaml starts from


def at_least(minimum: int, default: Any = MISSING, below: int | None = None) -> Any:
    """An integer field that must be >= ``minimum`` (and < ``below``; null allowed when the field is Optional)."""
    return field(default=default, metadata={"min": minimum, "below": below})


def one_of(*choices: str, default: Any = MISSING) -> Any:
    """A string field limited to ``choices``."""
    return field(default=default, metadata={"choices": choices})


@dataclass
class BudgetSchema:
    """conf/budget/: how long a job trains and how much data it sees."""

    max_steps: int = at_least(0)  # a training job needs >= 1: checked by the job, which knows the optimizer
    max_forward_passes: int | None = at_least(1, None)
    batch_size: int = at_least(1)
    eval_every: int = at_least(1)
    eval_every_forward_passes: int | None = at_least(1, None)
    eval_batch_size: int = at_least(1)
    micro_batch_size: int | None = at_least(1, None)
    num_train: int = at_least(0)  # training needs >= 1 (and num_dev >= 1): checked by the job
    num_dev: int = at_least(0)
    num_test: int = at_least(0)


@dataclass
class CheckpointSchema:
    """``checkpoint:`` in conf/config.yaml."""

    every: int | None = at_least(1, None)
    weights: bool = False


@dataclass
class PathsSchema:
    """conf/paths/: where data, caches and outputs live."""

    data_dir: str | None = None
    cache_dir: str = MISSING
    output_root: str = MISSING


@dataclass
class WandbSchema:
    """conf/logger/ ``wandb:``: the W&B mirror of metrics.jsonl."""

    mode: str = one_of("offline", "online", "disabled")
    project: str = "curvzo"
    entity: str | None = None
    group: str | None = None
    job_type: str = "train"
    name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class DistributedSchema:
    """``distributed:`` in conf/config.yaml: how one job uses the processes torchrun starts."""

    mode: str = one_of("data", "query", default="data")


@dataclass
class LoggerSchema:
    """conf/logger/: metric rows and their mirrors."""

    log_every: int = at_least(1)
    wandb: WandbSchema = field(default_factory=WandbSchema)


@dataclass
class CurvzoSchema:
    """The primary config's keys; the code-configuring groups are free-form here."""

    seed: int = at_least(0)
    data_seed: int = at_least(0, below=2**32)  # numpy's RandomState seeds the sample (curvzo/data/sampling.py)
    select_by: str = one_of("dev_loss", "dev_metric", "last")
    max_nonfinite_streak: int = at_least(1)
    direction_workers: int = at_least(0)
    resume: Any = "auto"  # auto | true | false | a run directory: checked by curvzo.resume.resume_mode
    checkpoint: CheckpointSchema = field(default_factory=CheckpointSchema)
    budget: BudgetSchema = field(default_factory=BudgetSchema)
    paths: PathsSchema = field(default_factory=PathsSchema)
    logger: LoggerSchema = field(default_factory=LoggerSchema)
    distributed: DistributedSchema = field(default_factory=DistributedSchema)
    task: Any = MISSING
    schedule: Any = MISSING
    optimizer: Any = MISSING
    model: Any = MISSING
    peft: Any = MISSING


def register_schemas() -> None:
    """Put the schema in Hydra's ConfigStore (idempotent); conf/config.yaml lists it first; register
    ``${launch_time:<strftime pattern>}``, the run directory's time stamp."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=CurvzoSchema)
    OmegaConf.register_new_resolver("launch_time", launch_time, use_cache=True, replace=True)


LAUNCH_TIME_VARIABLE = "CURVZO_LAUNCH_TIME"  # ISO time; set on every rank of a distributed job from rank 0's clock


def launch_time(pattern: str) -> str:
    """Hydra's ``${now:...}``, except that the ranks of one distributed job share rank 0's time (the
    processes start seconds apart, and must all write to one run directory)."""
    shared = os.environ.get(LAUNCH_TIME_VARIABLE)
    return (datetime.fromisoformat(shared) if shared else datetime.now()).strftime(pattern)


def check_ranges(cfg: DictConfig, schema: type = CurvzoSchema, prefix: str = "") -> None:
    """Each schema field's declared range or choices, as one line naming the key."""
    nested = _NESTED.get(schema, {})
    for spec in fields(schema):
        key = f"{prefix}{spec.name}"
        if spec.name in nested:
            check_ranges(cfg, nested[spec.name], f"{key}.")
            continue
        if not spec.metadata:
            continue
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        if "min" in spec.metadata and value is not None:
            low, below = spec.metadata["min"], spec.metadata["below"]
            if not isinstance(value, int) or isinstance(value, bool) or value < low or below is not None and value >= below:
                bound = f">= {low}" if below is None else f"in [{low}, {below})"
                raise ConfigError(f"{key} must be an integer {bound}, got {value!r}")
        elif "choices" in spec.metadata and value not in spec.metadata["choices"]:
            raise ConfigError(f"{key} must be one of {', '.join(spec.metadata['choices'])}, got {value!r}")


# nested schemas by field (``from __future__ import annotations`` leaves field types as strings)
_NESTED: dict[type, dict[str, type]] = {
    CurvzoSchema: {"checkpoint": CheckpointSchema, "budget": BudgetSchema, "paths": PathsSchema,
                   "logger": LoggerSchema, "distributed": DistributedSchema},
    LoggerSchema: {"wandb": WandbSchema},
}


def schema_problem(err: BaseException) -> str | None:
    """One line for a value the schema refused while composing (wrong type, unknown key), or None.

    An override's error carries OmegaConf's exception as its cause; a config file's (``In 'budget/mine':
    ValidationError raised while composing config: ...``) only its text, which names the file."""
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {str(cause).splitlines()[0].strip()}"
    found = _FILE_ERROR.search(str(err))
    if found is None:
        return None
    return f"{found['key']}: {found['message'].strip()} (in {found['file']})"


_FILE_ERROR = re.compile(r"In '(?P<file>[^']+)': \w+ raised while composing config:\n(?P<message>[^\n]+)\n"
                         r"\s+full_key: (?P<key>\S+)")
