"""How a job appears in W&B: its name, group, job type, tags, mode and run id.

The conventions W&B users expect: a run is named after what its command line changed
(``mezo-sst2-lr1e-06-seed0``), the runs of one sweep or experiment share a group, a resumed job
continues the same W&B run, and the ``WANDB_*`` environment variables win over the config's
defaults. An online run without credentials is kept offline, with one line saying how to upload it.
"""

from __future__ import annotations

import logging
import netrc
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# WANDB_MODE values W&B itself accepts, in our terms
ENV_MODES = {"offline": "offline", "dryrun": "offline", "online": "online", "run": "online", "disabled": "disabled"}
# keys left out of a run's name: where things live, how it is logged or checkpointed, the seed (always last)
NAME_EXCLUDED = ("paths.", "hydra.", "logger.", "checkpoint.", "resume", "direction_workers", "seed", "experiment")
NAMED_GROUPS_FIRST = ("optimizer", "task")  # the name starts with the method and the task


@dataclass
class WandbRun:
    """The arguments of ``wandb.init`` for one job."""

    mode: str
    project: str
    entity: str | None
    name: str
    group: str | None
    job_type: str
    tags: list[str] = field(default_factory=list)
    run_id: str = ""


def new_run_id() -> str:
    """A fresh W&B run id (8 lowercase hex characters, as W&B's own)."""
    return secrets.token_hex(4)


def run_name(cfg: DictConfig, choices: dict[str, str], overrides: list[str]) -> str:
    """``<method>-<task>[-<each other override>]-seed<n>``: what this job's command line changed."""
    parts = [choices.get(group, "") for group in NAMED_GROUPS_FIRST]
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in NAMED_GROUPS_FIRST or key.startswith(NAME_EXCLUDED) or not value:
            continue
        if "." not in key and key in choices:  # a group choice, e.g. peft=lora
            parts.append(choices[key])
            continue
        resolved = OmegaConf.select(cfg, key, default=value)
        shown = f"{resolved:g}" if isinstance(resolved, float) else str(resolved)
        parts.append(f"{key.rsplit('.', 1)[-1]}{shown}")
    parts.append(f"seed{cfg.seed}")
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", "-".join(p for p in parts if p))[:128]


def group_name(configured: str | None, choices: dict[str, str], config_name: str | None,
               sweep_dir: str | None) -> str | None:
    """The config's group, else the sweep file's name, else the experiment, else the sweep directory."""
    if configured:
        return configured
    if config_name and config_name != "config":
        return config_name.rsplit("/", 1)[-1]
    if choices.get("experiment"):
        return choices["experiment"]
    return Path(sweep_dir).name if sweep_dir else None


def has_credentials() -> bool:
    """Whether W&B could log in without asking: an API key in the environment or in the netrc file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc")).expanduser()
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_mode(configured: str, output_dir: Path) -> str:
    """WANDB_MODE wins over the config; online without credentials becomes offline, said once."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    mode = ENV_MODES.get(env, configured)
    if env and env not in ENV_MODES:
        log.warning("WANDB_MODE=%s is not a W&B mode (offline, online, disabled): using %s", env, configured)
    if mode == "online" and not has_credentials():
        log.warning("W&B: no credentials (WANDB_API_KEY or `wandb login`), so this run logs offline; upload it "
                    "later with `wandb sync %s/wandb/offline-run-*`", output_dir)
        mode = "offline"
    return mode


def wandb_run(cfg: DictConfig, output_dir: Path, *, choices: dict[str, str], overrides: list[str],
              config_name: str | None, sweep_dir: str | None, trains: bool, run_id: str) -> WandbRun:
    """Everything ``wandb.init`` needs for this job (environment variables applied)."""
    wb = cfg.logger.wandb
    tags = [f"{g}/{choices[g]}" for g in ("optimizer", "task", "model", "peft", "budget") if g in choices]
    return WandbRun(
        mode=resolve_mode(wb.mode, output_dir),
        project=os.environ.get("WANDB_PROJECT") or wb.project,
        entity=os.environ.get("WANDB_ENTITY") or wb.entity,
        name=wb.name or os.environ.get("WANDB_NAME") or run_name(cfg, choices, overrides),
        group=os.environ.get("WANDB_RUN_GROUP") or group_name(wb.group, choices, config_name, sweep_dir),
        job_type=os.environ.get("WANDB_JOB_TYPE") or (wb.job_type if trains else "eval"),
        tags=list(wb.tags) + tags,
        run_id=run_id,
    )
