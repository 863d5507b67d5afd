"""``curvzo-tables`` end to end: on the fixture runs, on bad input, and on a real tiny sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # every test here runs curvzo subprocesses

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
BIN = Path(sys.executable).parent


def build(*args, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curvzo.analysis.build", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_build_on_fixture_runs_writes_every_output(tmp_path):
    out = tmp_path / "out"
    done = build(FIXTURES / "analysis_runs", out)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(line.startswith(("wrote ", "skipped ")) for line in lines)
    assert any("runs.csv" in line and "18 runs (16 finished, 2 not)" in line for line in lines)
    for name in ("runs.csv", "runs.parquet", "curves.csv", "selection.csv", "missing.md", "speedup.md", "memory.md",
                 "tables/main_tiny-opt_full.md", "tables/main_tiny-opt_full.tex", "tables/main_tiny-opt_full.csv",
                 "figures/sst2_tiny-opt_full_fixture.png", "figures/sst2_tiny-opt_full_fixture.pdf"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    golden = (FIXTURES / "analysis_golden" / "table.md").read_text(encoding="utf-8")
    assert (out / "tables" / "main_tiny-opt_full.md").read_text(encoding="utf-8") == golden
    assert "| rte | curvzo | 2 | tiny-opt | fixture | absent |" in (out / "missing.md").read_text()
    speed = (out / "speedup.md").read_text()
    assert "| sst2 | tiny-opt | full | fixture | 82.0 (acc) | 80 (40 steps) | 60 (30 steps) | 1.33× |" in speed
    assert "| rte | tiny-opt | full | fixture | 61.0 (acc) | 80 (40 steps) | not reached | not reached |" in speed


@pytest.mark.parametrize("case", ["missing", "empty", "bad_json"])
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, case):
    runs = tmp_path / "runs"
    if case != "missing":
        runs.mkdir()
    if case == "bad_json":
        (runs / "0").mkdir()
        (runs / "0" / "summary.json").write_text('{"status": "finished",')
    out = tmp_path / "out"
    done = build(runs, out)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr and not out.exists()
    expected = {"missing": "no such directory", "empty": "no runs below", "bad_json": "not valid JSON"}[case]
    assert expected in done.stderr


def test_make_tables_runs_the_module_with_out_defaulting_under_runs():
    dry = subprocess.run(["make", "-n", "tables", "RUNS=some/sweep"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert dry.returncode == 0 and ".venv/bin/curvzo-tables some/sweep some/sweep/analysis" in dry.stdout
    dry = subprocess.run(["make", "-n", "tables", "RUNS=a", "OUT=b"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert "curvzo-tables a b" in dry.stdout


def test_smoke_real_tiny_sweep_to_tables(tmp_path, shared_data_dir):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    run = subprocess.run([str(BIN / "curvzo-run"), "-m", "model=tiny-opt", "task=sst2", "optimizer=mezo,curvzo",
                          "seed=0,1", "budget=smoke", f"paths.data_dir={shared_data_dir}",
                          f"hydra.sweep.dir={sweep}", "logger=jsonl"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    done = build(sweep, sweep / "analysis")
    assert done.returncode == 0, done.stderr
    table = (sweep / "analysis" / "tables" / "main_tiny-opt_full.md").read_text(encoding="utf-8")
    assert "±" in table and "| mezo |" in table and "| curvzo |" in table
    assert "4 runs" in table.splitlines()[0]
    assert list((sweep / "analysis" / "figures").glob("*.png"))
    missing = (sweep / "analysis" / "missing.md").read_text()
    assert "4 combinations" in missing and "0 without a finished run" in missing
