"""The results table: mean ± std over seeds of finished runs, failures counted, not averaged."""

from __future__ import annotations

import json
import math

import pytest

from curvzo.analysis.results_table import aggregate, load_runs, main


def write_summary(root, name, *, optimizer, lr, seed, test_acc, status="finished", **extra):
    run = root / name
    run.mkdir(parents=True)
    summary = {"task": "sst2", "model": "opt-125m", "optimizer": optimizer, "peft": "full", "budget": "mezo",
               "lr": lr, "eps": 1e-3, "seed": seed, "status": status, "steps": 10, "forward_passes": 20,
               "zero_shot": {"test_acc": 0.5}, "best": {"step": 5, "dev_acc": 0.6},
               "test_at_best_dev": {"test_acc": test_acc}, "sec_per_step": 0.5, "wall_time_s": 9.0,
               "forward_passes_per_step": 2, "peak_mem_gb": 1.5, "optimizer_info": {"state_bytes": 2**21}, **extra}
    (run / "summary.json").write_text(json.dumps(summary))


def test_seeds_are_averaged_and_failures_counted(tmp_path):
    write_summary(tmp_path, "0", optimizer="mezo", lr=1e-6, seed=0, test_acc=0.80)
    write_summary(tmp_path, "1", optimizer="mezo", lr=1e-6, seed=1, test_acc=0.90)
    write_summary(tmp_path, "2", optimizer="mezo", lr=1e-6, seed=2, test_acc=0.10, status="stopped_nonfinite")
    write_summary(tmp_path, "sub/3", optimizer="mezo", lr=1e-7, seed=0, test_acc=0.70)
    runs = load_runs(tmp_path)
    assert len(runs) == 4
    table = aggregate(runs).set_index("lr")
    assert table.loc[1e-6, "seeds"] == 2 and table.loc[1e-6, "failed"] == 1
    assert table.loc[1e-6, "test"] == pytest.approx(85.0) and table.loc[1e-6, "metric"] == "acc"
    assert table.loc[1e-6, "test_std"] == pytest.approx(math.sqrt(50.0))  # sample std of 80, 90
    assert table.loc[1e-7, "test"] == pytest.approx(70.0) and math.isnan(table.loc[1e-7, "test_std"])
    assert table.loc[1e-6, "zero_shot"] == pytest.approx(50.0)
    # cost columns for equal-budget comparisons: time per forward pass, peak memory, optimizer state
    assert table.loc[1e-6, ["sec_per_forward", "peak_mem_gb", "state_mb"]].tolist() == [0.25, 1.5, 2.0]


def test_generation_runs_are_read_by_their_metric(tmp_path):
    write_summary(tmp_path, "0", optimizer="mezo", lr=1e-6, seed=0, test_acc=None, metric="f1", task="squad",
                  zero_shot={"test_f1": 0.25}, best={"step": 5, "dev_f1": 0.4}, test_at_best_dev={"test_f1": 0.35})
    row = aggregate(load_runs(tmp_path)).iloc[0]
    assert (row["task"], row["metric"]) == ("squad", "f1")
    assert [row["zero_shot"], row["best_dev"], row["test"]] == pytest.approx([25.0, 40.0, 35.0])


def test_cli_writes_csv_and_refuses_an_empty_directory(tmp_path, capsys):
    write_summary(tmp_path / "runs", "0", optimizer="mezo", lr=1e-6, seed=0, test_acc=0.8)
    assert main([str(tmp_path / "runs"), "--csv", str(tmp_path / "t.csv")]) == 0
    assert "80.0" in capsys.readouterr().out and (tmp_path / "t.csv").read_text().startswith("task,metric,model")
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no summary.json below {tmp_path / 'empty'}"


def test_a_committed_runs_csv_counts_with_new_run_directories(tmp_path, capsys):
    write_summary(tmp_path / "old", "0", optimizer="mezo", lr=1e-6, seed=0, test_acc=0.80)
    write_summary(tmp_path / "old", "1", optimizer="mezo", lr=1e-6, seed=1, test_acc=0.60)
    assert main([str(tmp_path / "old"), "--runs-csv", str(tmp_path / "runs.csv")]) == 0
    write_summary(tmp_path / "new", "2", optimizer="mezo", lr=1e-6, seed=2, test_acc=0.70)
    out = tmp_path / "t.md"
    # the old directories are gone; their rows come from the csv, and a directory named twice counts once
    for path in (tmp_path / "old").rglob("summary.json"):
        path.unlink()
    assert main([str(tmp_path / "runs.csv"), str(tmp_path / "new"), str(tmp_path / "new"), "--markdown", str(out)]) == 0
    assert "| sst2 | mezo | 1e-06 | 3 | 50.0 | 70.0 ± 10.0 |" in out.read_text()
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="not a runs.csv written by --runs-csv"):
        main([str(tmp_path / "bad.csv")])
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip().endswith("nowhere: no such directory or runs.csv")
    assert main([str(tmp_path / "runs.csv"), str(tmp_path / "new"), "--seeds", "0,2", "--markdown", str(out)]) == 0
    assert "| sst2 | mezo | 1e-06 | 2 | 50.0 | 75.0 ± 7.1 |" in out.read_text()  # seeds 0 and 2: 80 and 70
    assert main([str(tmp_path / "new"), "--seeds", "x"]) == 2
    assert capsys.readouterr().err.strip() == "error: --seeds x: needs comma-separated integers"


def test_differences_from_a_baseline_carry_their_welch_standard_error(tmp_path, capsys):
    for seed, (m, c) in enumerate(((0.60, 0.70), (0.70, 0.80), (0.80, 0.75))):
        write_summary(tmp_path, f"m{seed}", optimizer="mezo", lr=1e-4, seed=seed, test_acc=m)
        write_summary(tmp_path, f"c{seed}", optimizer="curvzo", lr=5e-5, seed=seed, test_acc=c)
    out = tmp_path / "t.md"
    assert main([str(tmp_path), "--baseline", "mezo", "--markdown", str(out)]) == 0
    # means 70 and 75; sample variances 100 and 25 over 3 seeds: se = sqrt(100/3 + 25/3) = 6.45
    assert "| sst2 | curvzo | +5.0 | 6.5 | +0.77 | no | no |" in out.read_text()
    assert "| sst2 | mezo | 0.0001 | 3 | 50.0 | 70.0 ± 10.0 | 60.0 | 0.50 |" in out.read_text()
    assert main([str(tmp_path), "--baseline", "hizoo"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --baseline hizoo: no run of that optimizer below {tmp_path}"


def _write_curve(root, name, points, **summary):
    """A run whose metrics.jsonl holds evaluation points (forward passes, dev loss, dev acc, test acc)."""
    write_summary(root, name, test_acc=0.0, **{"select_by": "dev_loss", **summary})
    lines = [{"step": fp // 2, "zo/forward_passes": fp, "eval/dev_loss": loss, "eval/dev_acc": dev,
              "eval/test_loss": 0.5, "eval/test_acc": test} for fp, loss, dev, test in points]
    lines.insert(1, {"step": 1, "train/loss": 0.7, "zo/forward_passes": 2})  # training lines carry no evaluation
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_runs_are_rescored_at_a_forward_pass_budget_from_their_curves(tmp_path, capsys):
    # dev loss is lowest at 200 passes within a budget of 400, at 600 beyond it
    _write_curve(tmp_path, "a", [(0, 0.9, 0.5, 0.50), (200, 0.6, 0.6, 0.61), (400, 0.7, 0.7, 0.72),
                                 (600, 0.5, 0.8, 0.83)], optimizer="mezo", lr=1e-5, seed=0, status="preempted")
    _write_curve(tmp_path, "b", [(0, 0.9, 0.5, 0.50), (200, 0.8, 0.6, 0.65)], optimizer="mezo", lr=1e-5, seed=1)
    _write_curve(tmp_path, "c", [(0, 0.9, 0.5, 0.50), (400, 0.4, 0.9, 0.90)], optimizer="mezo", lr=1e-5, seed=2,
                 select_by="dev_metric")
    out = tmp_path / "t.md"
    assert main([str(tmp_path), "--at-forward-passes", "400", "--markdown", str(out)]) == 0
    # a (preempted later) counts with its 200-pass point; b stopped at 200: failed; c selects its best dev acc
    assert "| sst2 | mezo | 1e-05 | 2 | 50.0 | 75.5 ± 20.5 | 75.0 | 0.50 |" in out.read_text()
    assert main([str(tmp_path), "--at-forward-passes", "-1"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --at-forward-passes -1:")


def test_each_arm_keeps_the_lr_with_the_best_mean_dev(tmp_path):
    for seed, (low, high) in enumerate(((0.6, 0.7), (0.7, 0.9))):
        write_summary(tmp_path, f"m1{seed}", optimizer="mezo", lr=1e-5, seed=seed, test_acc=0.7, best={"dev_acc": low})
        write_summary(tmp_path, f"m3{seed}", optimizer="mezo", lr=3e-5, seed=seed, test_acc=0.8, best={"dev_acc": high})
        write_summary(tmp_path, f"c1{seed}", optimizer="curvzo", lr=1e-5, seed=seed, test_acc=0.6, best={"dev_acc": high})
        write_summary(tmp_path, f"c3{seed}", optimizer="curvzo", lr=3e-5, seed=seed, test_acc=0.9, best={"dev_acc": low})
    write_summary(tmp_path, "c3x", optimizer="curvzo", lr=3e-5, seed=9, test_acc=0.9, status="failed",
                  best={"dev_acc": 1.0})  # a failed run's dev never chooses
    out = tmp_path / "t.md"
    assert main([str(tmp_path), "--lr-on-dev", "--baseline", "mezo", "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "| sst2 | mezo | 3e-05 | 2 |" in text and "| sst2 | curvzo | 1e-05 | 2 |" in text
    assert "| sst2 | mezo | 1e-05 |" not in text and "| sst2 | curvzo | 3e-05 |" not in text
    assert "| sst2 | curvzo | -20.0 |" in text  # against MeZO at its own dev-chosen lr only
    # seed 0 decides, and every seed of the chosen lr counts: a new lr that ties MeZO's 3e-5 at seed 0 (70) loses to
    # the lr with more seeds; a new lr better at seed 0 than curvzo's 1e-5 (70) wins with its one seed
    write_summary(tmp_path, "m2-0", optimizer="mezo", lr=2e-5, seed=0, test_acc=0.5, best={"dev_acc": 0.7})
    write_summary(tmp_path, "c2-0", optimizer="curvzo", lr=2e-5, seed=0, test_acc=0.5, best={"dev_acc": 0.75})
    assert main([str(tmp_path), "--lr-on-dev", "0", "--markdown", str(out)]) == 0
    text = out.read_text()
    assert "| sst2 | mezo | 3e-05 | 2 |" in text and "| sst2 | curvzo | 2e-05 | 1 |" in text
    assert main([str(tmp_path), "--lr-on-dev", "zero"]) == 2


def test_curvzo_diagnostics_average_each_runs_steps_then_the_runs(tmp_path, capsys):
    from curvzo.analysis.curvzo_diagnostics import main as diagnostics_main

    for name, optimizer, seed, ratios in (("a", "curvzo", 0, [2.0] * 10 + [1.0] * 10),
                                          ("b", "curvzo", 1, [1.0] * 20), ("m", "mezo", 0, None)):
        write_summary(tmp_path, name, optimizer=optimizer, lr=1e-4, seed=seed, test_acc=0.7)
        rows = [{"step": 0, "eval/dev_acc": 0.5}]
        for step in range(1, 21):
            row = {"step": step, "train/loss": 1.0, "zo/forward_passes": 2 * step}
            if ratios:
                row.update({"curvzo/budget_f": 0.4, "curvzo/predicted_variance_ratio_vs_mezo": ratios[step - 1],
                            "curvzo/score_size_log_corr": 0.5, "curvzo/ht_factor_mean": 2.0,
                            "curvzo/ht_factor_max": float(step), "curvzo/selected_numel_frac": 0.25,
                            "zo/empty_steps": step // 10})
            rows.append(row)
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert diagnostics_main([str(tmp_path), "--markdown", str(tmp_path / "d.md")]) == 0
    # run a: mean ratio 1.5, last tenth 1.0; run b: 1.0 and 1.0 -> 1.25 / 1.0; the largest factor of each run is 20
    assert (tmp_path / "d.md").read_text().splitlines()[2] == \
        "| sst2 | curvzo | 2 | 1.250 / 1.000 | +0.50 | 2.00 / 20.0 | 25 % | 2 |"
    assert "mezo" not in capsys.readouterr().out  # no CurvZO keys: left out
    assert diagnostics_main([str(tmp_path / "nothing")]) == 2


def test_dev_curves_follow_forward_passes_and_draw(tmp_path, capsys):
    from curvzo.analysis.dev_curves import curve_table, load_curves
    from curvzo.analysis.dev_curves import main as curves_main

    for name, optimizer, accs in (("a", "mezo", [0.5, 0.6, 0.7]), ("b", "curvzo", [0.5, 0.65, 0.6])):
        write_summary(tmp_path, name, optimizer=optimizer, lr=1e-4, seed=0, test_acc=0.7)
        rows = [{"step": 0, "eval/dev_acc": accs[0], "eval/test_acc": 0.5}]
        for step in (1, 2, 3, 4):
            rows.append({"step": step, "train/loss": 1.0, "zo/forward_passes": 2 * step})
            if step % 2 == 0:
                rows.append({"step": step, "eval/dev_acc": accs[step // 2], "eval/test_acc": 0.6})
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    curves = load_curves(tmp_path)
    mezo = curves[curves["optimizer"] == "mezo"]
    assert mezo["forward_passes"].tolist() == [0, 4, 8]
    assert mezo["dev_acc"].tolist() == pytest.approx([50.0, 60.0, 70.0])
    table = curve_table(curves).set_index("optimizer")
    assert table.loc["curvzo", 2] == pytest.approx(65.0)
    assert curves_main([str(tmp_path), "--png", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_the_precision_study_measures_drift_only_for_in_place_probes():
    from curvzo.analysis.precision import plain_tensor_drift

    rows = {(r["dtype"], r["probe"]): r for r in plain_tensor_drift(steps=20, numel=20_000)}
    for dtype in ("float32", "bfloat16", "float16"):
        assert rows[(dtype, "exact")]["relative_drift"] == 0 == rows[(dtype, "exact")]["moved_fraction"]
        assert rows[(dtype, "inplace")]["moved_fraction"] > 0.5
    # half precision rounds far coarser: bfloat16 (8 bits) > float16 (11 bits) > float32 (24 bits)
    assert rows[("bfloat16", "inplace")]["relative_drift"] > rows[("float16", "inplace")]["relative_drift"] \
        > rows[("float32", "inplace")]["relative_drift"] > 0
