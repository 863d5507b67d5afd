"""Figures (PNG/PDF), the convergence speed-up on hand-made curves, and the memory table."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from curvzo.analysis.collect import collect_runs, load_curves, run_row, tidy
from curvzo.analysis.figures import budget_label, plot_curves
from curvzo.analysis.memory import memory_table
from curvzo.analysis.memory import to_markdown as memory_markdown
from curvzo.analysis.speedup import first_reach, smooth, speedup_table
from curvzo.analysis.speedup import to_markdown as speedup_markdown
from curvzo.analysis.tables import select_on_dev

RUNS_DIR = Path(__file__).resolve().parent / "fixtures" / "analysis_runs"


def _runs_and_curves(dev_curves: dict[str, list[list[float]]], fp_per_step: int = 2):
    """Finished runs with the given dev-accuracy curves (one list per seed), evaluated every 10 steps."""
    rows, points = [], []
    for optimizer, seeds in dev_curves.items():
        for seed, curve in enumerate(seeds):
            run_dir = f"{optimizer}-{seed}"
            rows.append(run_row({"task": "rte", "model": "m", "optimizer": optimizer, "peft": "full", "budget": "b",
                                 "lr": 1e-6, "eps": 1e-3, "seed": seed, "metric": "acc", "status": "finished",
                                 "best": {"dev_acc": max(curve)}, "test_at_best_dev": {"test_acc": 0.5}}, {}, run_dir))
            for i, value in enumerate(curve):
                points.append({"run_dir": run_dir, "step": 10 * i, "forward_passes": 10 * i * fp_per_step,
                               "elapsed_s": float(i), "split": "dev", "metric": "acc", "value": value})
    runs = tidy(rows)
    return runs, pd.DataFrame(points), select_on_dev(runs)


def test_smoothing_rules():
    assert smooth([0.5, 0.6, 0.7, 0.8], "moving_average", 3) == pytest.approx([0.5, 0.55, 0.6, 0.7])
    assert smooth([0.5, 0.8, 0.6, 0.7], "running_max") == [0.5, 0.8, 0.8, 0.8]
    assert smooth([0.5, 0.8], "moving_average", 1) == [0.5, 0.8]
    with pytest.raises(ValueError, match="unknown smoothing"):
        smooth([0.5], "median")
    points = pd.DataFrame({"step": [0, 10, 20], "forward_passes": [0, 20, 40], "value": [0.5, 0.6, 0.7]})
    assert first_reach(points, 0.6, "moving_average", 1)["forward_passes"] == 20
    assert first_reach(points, 0.71, "running_max") is None


def test_speedup_on_hand_made_curves():
    # mezo (two seeds) ends at mean 0.70 after 40 steps = 80 forward passes;
    # curvzo's seed mean is 0.50, 0.60, 0.70, 0.80, 0.80 (seeds +-0.02 around it)
    mezo = [[0.50, 0.55, 0.60, 0.65, 0.69], [0.50, 0.55, 0.60, 0.65, 0.71]]
    curvzo = [[0.48, 0.58, 0.68, 0.78, 0.78], [0.52, 0.62, 0.72, 0.82, 0.82]]
    runs, curves, selection = _runs_and_curves({"mezo": mezo, "curvzo": curvzo})
    # trailing mean over 3 points: 0.5, 0.55, 0.6, 0.7, 0.7667 -> reaches 0.70 at step 30 (60 forward passes)
    row = speedup_table(runs, curves, selection).iloc[0]
    assert row["reached"] and row["target"] == pytest.approx(0.70)
    assert (row["baseline_fp"], row["method_fp"], row["method_step"]) == (80, 60, 30)
    assert row["speedup"] == pytest.approx(80 / 60) and row["step_ratio"] == pytest.approx(40 / 30)
    # running max: 0.5, 0.6, 0.7, ... -> reaches at step 20 (40 forward passes): 2x
    row = speedup_table(runs, curves, selection, smoothing="running_max").iloc[0]
    assert (row["method_fp"], row["speedup"]) == (40, pytest.approx(2.0))
    text = speedup_markdown(speedup_table(runs, curves, selection))
    assert "| rte | m | full | b | 70.0 (acc) | 80 (40 steps) | 60 (30 steps) | 1.33× |" in text


def test_speedup_not_reached():
    mezo = [[0.50, 0.60, 0.70, 0.80, 0.90]]
    curvzo = [[0.50, 0.70, 0.80, 0.85, 0.89]]  # its best is 0.89 < 0.90
    runs, curves, selection = _runs_and_curves({"mezo": mezo, "curvzo": curvzo})
    row = speedup_table(runs, curves, selection, smoothing="running_max").iloc[0]
    assert not row["reached"] and math.isnan(row["method_fp"]) and math.isnan(row["speedup"])
    assert "| not reached | not reached |" in speedup_markdown(speedup_table(runs, curves, selection))
    # a task with only one of the two methods has no row
    runs, curves, selection = _runs_and_curves({"mezo": mezo})
    assert speedup_table(runs, curves, selection).empty


def test_figures_are_written_as_png_and_pdf(tmp_path):
    runs = collect_runs(RUNS_DIR)
    curves = load_curves(runs)
    assert budget_label(runs) == "budget 80"
    paths = plot_curves(runs, curves, select_on_dev(runs), tmp_path / "figures")
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{t}_tiny-opt_full_fixture.{ext}" for t in ("sst2", "rte", "squad") for ext in ("png", "pdf"))
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000
        assert data.startswith(b"\x89PNG\r\n\x1a\n") if path.suffix == ".png" else data.startswith(b"%PDF-")


def test_memory_table_means_over_finished_runs():
    rows = [run_row({"model": "m", "peft": "full", "optimizer": opt, "status": status, "peak_mem_gb": gb,
                     "peak_mem_kind": "cuda_allocated", "optimizer_info": {"state_bytes": state},
                     "sec_per_step": 1.0, "forward_passes_per_step": fps}, {}, f"r{i}")
            for i, (opt, status, gb, state, fps) in enumerate([
                ("mezo", "finished", 2.0, 0, 2.0), ("mezo", "finished", 3.0, 0, 2.0),
                ("mezo", "failed", 99.0, 0, 2.0), ("hizoo", "finished", 4.0, 3 * 2**20, 3.0)])]
    table = memory_table(tidy(rows)).set_index("optimizer")
    assert table.loc["mezo", "n"] == 2 and table.loc["mezo", "peak_mem_gb"] == pytest.approx(2.5)
    assert table.loc["hizoo", "state_mb"] == 3.0 and table.loc["hizoo", "sec_per_forward"] == pytest.approx(1 / 3)
    text = memory_markdown(memory_table(tidy(rows)))
    assert text.startswith("Table: cost per (model, peft, method), means over 3 finished runs")
    assert "| m | full | mezo | 2 | 2.50 | cuda_allocated | 0 | 2 | 0.5 |" in text
