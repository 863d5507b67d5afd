"""Shared fixtures: the official data directory beside the checkout, fresh Hydra state, composed job configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from curvzo.run import CONFIG_DIR
from tests.helpers import BASE

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("CURVZO_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The official GLUE/SuperGLUE files; skipped when absent unless CURVZO_REQUIRE_DATA=1 (CI)."""
    path = _shared_data_dir()
    if not (path / "glue" / "SST-2" / "train.tsv").is_file():
        if os.environ.get("CURVZO_REQUIRE_DATA") == "1":
            pytest.fail(f"CURVZO_REQUIRE_DATA=1 but no official data at {path}")
        pytest.skip(f"official data not found at {path} (set CURVZO_DATA_DIR)")
    return path


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """No network, and a throwaway datasets cache, for tests of the hub path with local stand-ins."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # the libraries read these at import time, so the module constants are patched too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture
def job_cfg(tmp_path):
    """compose(overrides) -> the job's config, as @hydra.main hands it over."""
    def make(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", return_hydra_config=True,
                          overrides=[*BASE, f"paths.output_root={tmp_path / 'outputs'}", *overrides])
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg
    yield make
    GlobalHydra.instance().clear()
