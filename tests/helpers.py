"""Test helpers: tiny models built from the repository's own model configs."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_model(name: str = "tiny-opt", **overrides):
    """Instantiate conf/model/<name>.yaml (a tiny random model) with optional overrides."""
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "model" / f"{name}.yaml")
    cfg.merge_with(overrides)
    return hydra.utils.instantiate(cfg)
