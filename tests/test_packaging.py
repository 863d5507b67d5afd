"""A built wheel works outside the checkout (issue 18): the configs ship inside the package and are
found through Hydra's package search path; the analysis has console scripts; a user's own config
directory joins through ``hydra.searchpath``.

The wheel goes into a fresh virtualenv that reuses this environment's installed packages (a .pth
line), so nothing is downloaded and the package under test is only the wheel's copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

SMOKE = ["model=tiny-opt", "task=sst2", "optimizer=mezo", "budget=smoke", "logger=jsonl"]


def run(command: list, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env}
    environment.pop("PYTHONPATH", None)  # nothing of the checkout on the path
    return subprocess.run([str(c) for c in command], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ directory of a fresh virtualenv holding only the built wheel of this checkout."""
    root = tmp_path_factory.mktemp("wheel")
    built = run([sys.executable, "-m", "pip", "wheel", REPO_ROOT, "--no-deps", "--no-build-isolation", "-q",
                 "-w", root / "dist"], cwd=root)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (root / "dist").glob("curvzo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "curvzo/conf/config.yaml" in names and "curvzo/conf/sweeps/table1-smoke.yaml" in names
    assert "curvzo/conf/experiment/table1-smoke.yaml" in names and "curvzo/analysis/build.py" in names
    assert not [n for n in names if "/results/" in n]  # committed evidence stays in the repository

    venv = root / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    assert made.returncode == 0, made.stderr
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "reuse_test_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    done = run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "-q", wheel], cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    where = run([venv / "bin" / "python", "-c", "import curvzo; print(curvzo.__file__)"], cwd=root)
    assert where.stdout.strip().startswith(str(site)), where.stdout  # the wheel's copy, not the checkout
    return venv / "bin"


def test_a_wheel_runs_a_job_and_the_tables_from_any_directory(installed, tmp_path, shared_data_dir):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    job = run([installed / "curvzo-run", *SMOKE, f"paths.data_dir={shared_data_dir}", "hydra.run.dir=runs/one"],
              cwd=elsewhere)
    assert job.returncode == 0, job.stderr[-3000:]
    summary = json.loads((elsewhere / "runs" / "one" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 4

    sweep = run([installed / "curvzo-run", "-cn", "sweeps/mezo_lr_smoke", f"paths.data_dir={shared_data_dir}",
                 "hydra.sweep.dir=sweep"], cwd=elsewhere)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "sweep: 4 jobs, 4 finished" in sweep.stdout + sweep.stderr
    tables = run([installed / "curvzo-tables", "sweep", "tables"], cwd=elsewhere)
    assert tables.returncode == 0, tables.stderr[-3000:]
    assert (elsewhere / "tables" / "runs.csv").is_file()


def test_a_user_config_directory_joins_through_hydra_searchpath(installed, tmp_path, shared_data_dir):
    mine = tmp_path / "my_conf"
    (mine / "budget").mkdir(parents=True)
    (mine / "budget" / "three_steps.yaml").write_text(
        "# launch: curvzo-run hydra.searchpath=[file://my_conf] budget=three_steps\n"
        "max_steps: 3\nmax_forward_passes: null\nbatch_size: 2\neval_every: 3\neval_every_forward_passes: null\n"
        "eval_batch_size: 8\nnum_train: 8\nnum_dev: 4\nnum_test: 4\n")
    job = run([installed / "curvzo-run", *SMOKE[:3], "budget=three_steps", "logger=jsonl",
               f"hydra.searchpath=[file://{mine}]", f"paths.data_dir={shared_data_dir}", "hydra.run.dir=run"], cwd=tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["budget"] == "three_steps"
