"""One job, start to finish: validate, load data, load the model, train, write the summary.

Everything cheap that can reject the job (config values, data files) runs before the model
loads, so bad input costs a second, not a model load.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from curvzo import distributed
from curvzo.checkpoint import (
    CheckpointError,
    json_fingerprint,
    load_checkpoint,
    run_identity,
    save_checkpoint,
    tensor_fingerprint,
)
from curvzo.config_schema import check_ranges
from curvzo.data import load_splits
from curvzo.errors import ConfigError, CurvzoError, RunDirectoryError
from curvzo.loggers import JsonlLogger, LoggerGroup, MetricLogger, WandbLogger
from curvzo.metric_objective import check_train_objective, training_objective
from curvzo.models.common import parse_dtype, resolve_device
from curvzo.optim.base import ZerothOrderOptimizer
from curvzo.optim.checks import optimizer_state_bytes
from curvzo.optim.directions import default_workers
from curvzo.peft_modes import parameter_groups
from curvzo.preemption import Preempted, StopRequest
from curvzo.resume import build_checkpoint, restore, resume_mode, trainable_parameters
from curvzo.run_directory import (
    DirectoryPlan,
    plan_directory,
    truncate_metrics,
    write_status,
    write_summary,
)
from curvzo.train import LoopSettings, TrainingLoop
from curvzo.utils.instantiate import check_targets, instantiate
from curvzo.utils.runinfo import (
    git_commit,
    package_versions,
    peak_memory,
    reset_peak_memory,
)
from curvzo.wandb_run import new_run_id, wandb_run

log = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "linear")
STOP_REPEAT_WINDOW_S = 5.0  # a stop signal repeated this soon under torchrun is the launcher's forwarded copy


def _int_at_least(cfg: DictConfig, key: str, minimum: int) -> int:
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> str:
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def train_objective(cfg: DictConfig) -> str:
    """``task.train_objective`` (``loss`` when a task config has no such key), checked before anything loads."""
    return check_train_objective(cfg.task.get("train_objective", "loss"))


def prepare_optimizer(optimizer, model: torch.nn.Module, workers: Any) -> None:
    """A ZO optimizer learns which modules own its tensors (the exact probe) and gets the config's
    ``direction_workers`` (0: one per intra-op thread, at most 4); a torch optimizer needs neither."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ConfigError(f"direction_workers must be an integer >= 0, got {workers!r}")
    if isinstance(optimizer, ZerothOrderOptimizer):
        optimizer.bind_model(model)
        optimizer.direction_workers = workers or default_workers()


def trains(cfg: DictConfig) -> bool:
    """``optimizer=none`` (no ``_target_``) means zero-shot evaluation only."""
    return cfg.optimizer.get("_target_") is not None


def optimizer_kwargs(cfg: DictConfig) -> DictConfig:
    """The optimizer node as a partial: the parameters come at build time."""
    return OmegaConf.create({**OmegaConf.to_container(cfg.optimizer, resolve=True), "_partial_": True})


def validate_config(cfg: DictConfig) -> LoopSettings:
    """Reject invalid values with one line, before any data or model is touched.

    Types and unknown keys of the config's own nodes were checked by Hydra against the schema while
    composing; this adds their declared ranges (``check_ranges``), what depends on other keys (a
    training job needs steps, examples and an lr) and the optimizer's own argument checks."""
    try:
        for group in cfg:  # every node, not only those we instantiate: a _target_ anywhere is refused early
            if group != "hydra" and isinstance(cfg[group], DictConfig):
                check_targets(cfg[group], str(group))
        check_ranges(cfg)
        train_objective(cfg)
        if trains(cfg):  # training needs steps, examples to draw batches from and a dev set to select on (protocol.md §8)
            for key in ("budget.max_steps", "budget.num_train", "budget.num_dev"):
                _int_at_least(cfg, key, 1)
        budget = cfg.budget
        settings = LoopSettings(
            max_steps=budget.max_steps, batch_size=budget.batch_size, eval_every=budget.eval_every,
            eval_batch_size=budget.eval_batch_size, max_length=_int_at_least(cfg, "model.max_length", 8),
            select_by=cfg.select_by, max_nonfinite_streak=cfg.max_nonfinite_streak, log_every=cfg.logger.log_every,
            max_forward_passes=budget.max_forward_passes, eval_every_forward_passes=budget.eval_every_forward_passes,
            micro_batch_size=budget.micro_batch_size,
        )
        world = distributed.set_mode(cfg.distributed.mode)
        check_model_placement(cfg)
        resume_mode(OmegaConf.select(cfg, "resume"))
        if trains(cfg):
            _choice(cfg, "schedule.name", LR_SCHEDULES)
            lr = OmegaConf.select(cfg, "optimizer.lr", throw_on_missing=True)
            if lr is None:
                raise ConfigError("optimizer.lr is required but not set (e.g. add optimizer.lr=<value>; full fine-tuning "
                                  "has no default lr unless conf/zo/full_ft_lr/ or conf/model_optimizer/ holds one "
                                  "for this model)")
            if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
                raise ConfigError(f"optimizer.lr must be a finite number > 0, got {lr!r}")
            # a dry construction on a dummy tensor runs the optimizer's own argument checks
            dummy = torch.nn.Parameter(torch.zeros(1))
            dry = instantiate(optimizer_kwargs(cfg), "optimizer")([dummy])
            check_parallelism(world, dry)
            if train_objective(cfg) != "loss" and not isinstance(dry, ZerothOrderOptimizer):
                raise ConfigError(f"task.train_objective={train_objective(cfg)} needs a zeroth-order optimizer: "
                                  f"{config_choices().get('optimizer') or type(dry).__name__} backpropagates, and no "
                                  f"gradient flows through a metric")
            first_step = dry.forward_passes_next_step() if isinstance(dry, ZerothOrderOptimizer) else 1
            if settings.max_forward_passes is not None and settings.max_forward_passes < first_step:
                raise ConfigError(f"budget.max_forward_passes={settings.max_forward_passes} does not cover one step "
                                  f"({first_step} forward passes): raise it, or set it to null")
    except MissingMandatoryValue as err:
        key = err.full_key or "a value"
        raise ConfigError(f"{key} is required but not set (e.g. add {key}=<value> to the command line)") from None
    except ValueError as err:  # torch.optim's own checks, e.g. 'Invalid beta parameter'
        raise ConfigError(f"optimizer: {err}") from None
    return settings


def check_parallelism(world: distributed.World, optimizer) -> None:
    """What a job over several processes can run: ZO methods only, and query parallelism needs exact probes."""
    if not world.active:
        return
    if not isinstance(optimizer, ZerothOrderOptimizer):
        raise ConfigError(f"{type(optimizer).__name__} (first-order) runs in one process; launch it without torchrun "
                          f"(a ZO step exchanges a few scalars, a first-order step would need DDP's gradients)")
    if world.query_parallel and optimizer.probe_mode != "exact":
        raise ConfigError("distributed.mode=query needs optimizer.probe=exact (in-place probes of one step are "
                          "sequential; use distributed.mode=data)")


def check_model_placement(cfg: DictConfig) -> None:
    """model.dtype and model.device, checked before anything loads (the loader checks them again)."""
    model = cfg.model
    if "dtype" in model:
        parse_dtype(model.dtype)
    if "device" in model and model.get("device_map") is None:
        resolve_device(model.device)


def build_loggers(cfg: DictConfig, output_dir: Path, wandb_run_id: str) -> MetricLogger:
    """metrics.jsonl always; the W&B mirror unless disabled (by the config or WANDB_MODE), named after the job."""
    loggers: list[MetricLogger] = [JsonlLogger(output_dir)]
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    multirun = hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN
    settings = wandb_run(cfg, output_dir, choices=config_choices(),
                         overrides=list(hydra_cfg.overrides.task) if hydra_cfg is not None else [],
                         config_name=hydra_cfg.job.config_name if hydra_cfg is not None else None,
                         sweep_dir=hydra_cfg.sweep.dir if multirun else None, trains=trains(cfg), run_id=wandb_run_id)
    if settings.mode != "disabled":
        loggers.append(WandbLogger(output_dir, settings))
    return LoggerGroup(loggers)


def build_scheduler(cfg: DictConfig, optimizer, max_steps: int):
    if optimizer is None or cfg.schedule.name == "constant":
        return None
    # linear decay to 0 without warm-up, as the Hugging Face Trainer default used for FT (§4)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / max_steps))


def config_choices() -> dict[str, str]:
    """The option picked in each config group (model, task, ...), when running under Hydra."""
    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


@dataclass
class JobParts:
    """Everything a job builds before it writes anything: data, model, optimizer, schedule, checkpoint."""

    task: Any
    splits: Any
    data_fingerprint: str
    loaded: Any
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    start_fingerprint: str
    optimizer: Any
    scheduler: Any
    checkpoint: Any = None


def run_job(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Run one configured job in ``output_dir``; returns the summary (also written to disk).

    The lifecycle, top to bottom: validate (nothing loaded), plan the directory (fresh, resume or
    finished), build data, model and optimizer (nothing written), restore a checkpoint, write the
    config, train, finish (summary, status, loggers) also when training raised."""
    started = time.perf_counter()
    settings = validate_config(cfg)
    identity = run_identity(cfg)
    plan = agreed_plan(cfg, output_dir, identity)
    main = distributed.world().is_main  # rank 0 alone writes the run's files, checkpoints and W&B
    if plan.finished is not None:
        log.info("%s already holds this finished run (status.json): nothing to do", plan.run_dir)
        return plan.finished
    parts = setup(cfg, plan)
    output_dir = plan.run_dir
    summary = initial_summary(cfg, output_dir, parts)
    previous_wall = 0.0
    wandb_run_id = new_run_id()  # a resumed job continues its W&B run: the id travels in the checkpoint
    if parts.checkpoint is not None:
        wandb_run_id = parts.checkpoint.loop.get("wandb_run_id") or wandb_run_id
        how = restore(parts.checkpoint, parts.params, parts.optimizer, parts.scheduler)
        log.info("resuming %s after step %d (weights %s, fingerprint verified)", output_dir, parts.checkpoint.step, how)
        summary["resumed_from_step"] = parts.checkpoint.step
        previous_wall = float(parts.checkpoint.loop.get("wall_time_s", 0.0))
        if main:
            truncate_metrics(output_dir / "metrics.jsonl", parts.checkpoint.step)
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    def wall_time() -> float:
        return previous_wall + time.perf_counter() - started

    zeroth_order = isinstance(parts.optimizer, ZerothOrderOptimizer)

    def write_checkpoint(step: int, loop_state: dict) -> None:
        if not main:
            return
        saved = build_checkpoint(step, {**loop_state, "wall_time_s": wall_time(), "wandb_run_id": wandb_run_id},
                                 identity=identity,
                                 data_fingerprint=parts.data_fingerprint, start_fingerprint=parts.start_fingerprint,
                                 params=parts.params, optimizer=parts.optimizer,
                                 store_weights=cfg.checkpoint.weights or not zeroth_order)
        log.info("checkpoint after step %d: %s", step, save_checkpoint(output_dir, saved))

    summary["wandb_run_id"] = wandb_run_id
    logger = build_loggers(cfg, output_dir, wandb_run_id) if main else LoggerGroup([])
    logger.log_config(OmegaConf.to_container(cfg, resolve=True))
    trajectory = open(output_dir / "trajectory.jsonl", "w", encoding="utf-8") if zeroth_order and main else None
    if trajectory is not None and parts.checkpoint is not None:
        trajectory.writelines(json.dumps(record) + "\n" for record in parts.checkpoint.trajectory)
    status = "failed"
    # under torchrun each stop signal arrives twice (to the group, then forwarded by the launcher): one request
    with StopRequest(repeat_window_s=STOP_REPEAT_WINDOW_S if distributed.world().active else 0.0) as stop:
        loop = TrainingLoop(parts.model, parts.loaded.tokenizer, parts.loaded.device, parts.optimizer, parts.scheduler,
                            parts.splits, settings, logger, seed=cfg.seed, trajectory_file=trajectory,
                            objective=parts.task.objective, checkpoint_every=cfg.checkpoint.every,
                            save_checkpoint=write_checkpoint, stop=stop,
                            resume_state=parts.checkpoint.loop if parts.checkpoint is not None else None)
        try:
            status = loop.run().status
        except Preempted as err:
            status = err.status
            raise
        except KeyboardInterrupt:  # a second signal: stopped at once, the last checkpoint (if any) still holds
            status = "interrupted"
            raise
        finally:
            if trajectory is not None:
                trajectory.close()
            summary["wall_time_s"] = wall_time()
            if main:
                summary["final_weights_fingerprint"] = tensor_fingerprint(parts.params)  # compare runs across machines
                finish(loop.result, summary, status, parts.optimizer, output_dir, logger, identity)
    return summary


def agreed_plan(cfg: DictConfig, output_dir: Path, identity: dict) -> DirectoryPlan:
    """The run directory's plan, made by rank 0 (which may move logs or refuse the directory) and shared with
    every rank, so no rank reads a directory another is writing."""
    world = distributed.world()
    if not world.active:
        return plan_directory(cfg, output_dir, identity)
    outcome: dict = {}
    if world.is_main:
        try:
            plan = plan_directory(cfg, output_dir, identity)
            outcome = {"run_dir": str(plan.run_dir), "header": plan.header, "finished": plan.finished,
                       "checkpoint_path": str(plan.checkpoint_path) if plan.checkpoint_path is not None else None}
        except RunDirectoryError as err:
            outcome = {"refused": str(err)}
        except CurvzoError as err:
            outcome = {"error": str(err)}
    outcome = distributed.broadcast(outcome)
    if "refused" in outcome:
        raise RunDirectoryError(outcome["refused"])
    if "error" in outcome:
        raise ConfigError(outcome["error"])
    checkpoint = outcome["checkpoint_path"]
    return DirectoryPlan(Path(outcome["run_dir"]), Path(checkpoint) if checkpoint else None, outcome["header"],
                         outcome["finished"])


def setup(cfg: DictConfig, plan: DirectoryPlan) -> JobParts:
    """Data, model, optimizer and schedule, each built once, checked against a checkpoint; writes nothing."""
    task = instantiate(cfg.task, "task")
    task.objective = training_objective(task.objective, task.train_objective)
    splits = load_splits(task, cfg.paths.data_dir, cfg.budget.num_train, cfg.budget.num_dev,
                         cfg.budget.num_test, cfg.data_seed)
    data_fingerprint = json_fingerprint([[repr(e) for e in split] for split in (splits.train, splits.dev, splits.test)])
    if plan.header is not None and plan.header["data_fingerprint"] != data_fingerprint:
        raise CheckpointError(f"checkpoint {plan.checkpoint_path} was trained on another data sample (data files changed?)")
    log.info("data: %s (train %d, dev %d, test %d)", splits.source, len(splits.train), len(splits.dev), len(splits.test))

    reset_peak_memory()
    loaded = instantiate(cfg.model, "model")
    model = instantiate(cfg.peft.adapter, "peft.adapter")(loaded.model)
    params = trainable_parameters(model)
    start_fingerprint = tensor_fingerprint(params) if trains(cfg) else ""
    checkpoint = None
    if plan.header is not None:
        if plan.header["start_fingerprint"] != start_fingerprint:
            raise CheckpointError(f"checkpoint {plan.checkpoint_path} started from other weights than this model's "
                                  f"(model files or PEFT init changed?)")
        checkpoint = load_checkpoint(plan.checkpoint_path)
    optimizer = None
    if trains(cfg):
        weight_decay = float(cfg.optimizer.get("weight_decay", 0.0) or 0.0)
        optimizer = instantiate(optimizer_kwargs(cfg), "optimizer")(parameter_groups(model, weight_decay))
        prepare_optimizer(optimizer, model, cfg.direction_workers)
    scheduler = build_scheduler(cfg, optimizer, cfg.budget.max_steps)
    torch.manual_seed(cfg.seed)  # dropout in first-order steps (ZO probes run in eval mode); a resume restores it
    return JobParts(task, splits, data_fingerprint, loaded, model, params, start_fingerprint, optimizer, scheduler,
                    checkpoint)


def initial_summary(cfg: DictConfig, output_dir: Path, parts: JobParts) -> dict[str, Any]:
    """What the summary says before training: the job's choices, data and model (status ``failed`` until set)."""
    choices = config_choices()
    splits = parts.splits
    return {
        "status": "failed",
        "task": cfg.task.name,
        "model": choices.get("model") or cfg.model.get("name_or_path"),
        "optimizer": choices.get("optimizer"),
        "peft": choices.get("peft"),
        "budget": choices.get("budget"),
        "seed": cfg.seed,
        "data_seed": cfg.data_seed,
        "lr": cfg.optimizer.get("lr"),
        "eps": cfg.optimizer.get("eps"),
        "select_by": cfg.select_by,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "output_dir": str(output_dir),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "metric": parts.task.objective.metric,
        "train_objective": parts.task.objective.train_objective,
        "objective": repr(parts.task.objective),
        "data": {"source": splits.source, "train": len(splits.train), "dev": len(splits.dev), "test": len(splits.test)},
        "model_source": parts.loaded.source,
        "trainable_params": sum(p.numel() for p in parts.model.parameters() if p.requires_grad),
        "distributed": {"world_size": distributed.world().size,
                        "mode": distributed.world().mode if distributed.world().active else None},
    }


def finish(result, summary: dict, status: str, optimizer, output_dir: Path, logger: MetricLogger,
           identity: dict) -> None:
    """Write summary.json and status.json and close the loggers, also when the loop raised."""
    summary.update({
        "status": status,
        "steps": result.steps,
        "forward_passes": result.forward_passes,
        "skipped_steps": result.skipped_steps,
        "flat_steps": result.flat_steps,
        "zero_shot": result.zero_shot,
        "best": {k: v for k, v in result.best.items() if k != "key"},
        "test_at_best_dev": result.test_at_best,
        "last_dev": result.last_dev,
        "train_time_s": result.train_time_s,
        "sec_per_step": (result.step_time_s / result.steps) if result.steps else None,
        "forward_passes_per_step": (result.forward_passes / result.steps) if result.steps else None,
        "optimizer_info": describe_optimizer(optimizer),
        **peak_memory(),
    })
    write_summary(output_dir, summary)
    write_status(output_dir, {"status": status, "steps": result.steps, "identity": json_fingerprint(identity)})
    logger.log_summary(_flat_summary(summary))
    logger.close(status)


def describe_optimizer(optimizer) -> dict[str, Any]:
    """The optimizer's own description (ZO methods), or the bytes of a torch optimizer's state."""
    if optimizer is None:
        return {}
    if isinstance(optimizer, ZerothOrderOptimizer):
        return optimizer.describe()
    return {"state_bytes": optimizer_state_bytes(optimizer)}


def _flat_summary(summary: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    for key in ("zero_shot", "best", "test_at_best_dev"):
        for sub, value in summary.get(key, {}).items():
            flat[f"{key}/{sub}"] = value
    return flat
