"""Shared fixtures: the official data directory beside the checkout, and fresh Hydra state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
