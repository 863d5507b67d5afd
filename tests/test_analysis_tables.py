"""Run collection, selection on dev, the main table (golden markdown), missing runs, the W&B collector.

The fixture runs (tests/fixtures/analysis_runs/, made by tests/fixtures/make_analysis_runs.py) carry
hand-chosen numbers; the expected values below are computed by hand from that script's RUNS list.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from curvzo.analysis.collect import (
    CORE_COLUMNS,
    CollectError,
    collect_runs,
    collect_wandb,
    load_curves,
    run_row,
    tidy,
)
from curvzo.analysis.missing import (
    grid_from_multirun,
    missing_report,
    missing_runs,
    parse_overrides,
)
from curvzo.analysis.tables import (
    STEP0,
    build_table,
    cell_text,
    select_on_dev,
    to_csv,
    to_latex,
    to_markdown,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RUNS_DIR = FIXTURES / "analysis_runs"
GOLDEN = FIXTURES / "analysis_golden" / "table.md"


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return collect_runs(RUNS_DIR)


_COUNTER = itertools.count()


def _row(**overrides) -> dict:
    """A tidy row with defaults: finished sst2 MeZO run on tiny-opt."""
    summary = {"task": "sst2", "model": "tiny-opt", "optimizer": "mezo", "peft": "full", "budget": "b",
               "lr": 1e-6, "eps": 1e-3, "seed": 0, "metric": "acc", "status": "finished"}
    dev, test = overrides.pop("dev"), overrides.pop("test")
    summary.update(overrides)
    summary["best"] = {"step": 4, "dev_acc": dev}
    summary["test_at_best_dev"] = {"step": 4, "test_acc": test}
    return run_row(summary, {}, f"run-{next(_COUNTER)}")


def test_collect_keeps_failed_and_dead_runs_with_their_status(runs):
    assert list(runs.columns[:len(CORE_COLUMNS)]) == CORE_COLUMNS
    assert {"budget_mode", "sampling"} <= set(runs.columns)  # knobs read from config.yaml's optimizer node
    assert len(runs) == 18
    statuses = runs.set_index(runs["run_dir"].map(lambda d: Path(d).name))["status"]
    assert statuses["curvzo_rte_s1"] == "stopped_nonfinite"
    assert statuses["curvzo_squad_s0"] == "no_summary"  # only .hydra/: names from hydra.yaml's choices
    dead = runs[runs["status"] == "no_summary"].iloc[0]
    assert (dead["task"], dead["optimizer"], dead["seed"], dead["lr"]) == ("squad", "curvzo", 0, 1e-6)
    squad = runs[(runs["task"] == "squad") & (runs["status"] == "finished")]
    assert set(squad["metric"]) == {"f1"} and sorted(squad["test_at_best_dev"]) == [0.5, 0.55, 0.6]
    one = runs[runs["run_dir"].str.endswith("curvzo_sst2_s0")].iloc[0]
    assert one["state_mb"] == 1.0 and one["sec_per_forward"] == pytest.approx(0.275)
    assert one["max_forward_passes"] == 80


def test_collect_refuses_unreadable_summary_and_missing_dir(tmp_path):
    with pytest.raises(CollectError, match="no such directory"):
        collect_runs(tmp_path / "nope")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "summary.json").write_text("{not json")
    with pytest.raises(CollectError, match=r"summary.json: not valid JSON"):
        collect_runs(tmp_path)


def test_curves_long_frame(runs):
    curves = load_curves(runs)
    assert list(curves.columns) == ["run_dir", "step", "forward_passes", "elapsed_s", "split", "metric", "value"]
    one = curves[curves["run_dir"].str.endswith("mezo_sst2_lr1e-6_s1")]
    dev = one[(one["split"] == "dev") & (one["metric"] == "acc")]
    assert dev["forward_passes"].tolist() == [0, 20, 40, 60, 80]
    assert dev["value"].tolist() == pytest.approx([0.5, 0.6, 0.7, 0.76, 0.82])
    assert set(one["split"]) == {"train", "dev", "test"}
    squad = curves[curves["run_dir"].str.endswith("mezo_squad_s0")]
    assert {"f1", "em", "loss"} <= set(squad["metric"])


def test_selection_uses_dev_even_when_test_disagrees(runs):
    sel = select_on_dev(runs).set_index(["task", "optimizer"])
    mezo = sel.loc[("sst2", "mezo")]
    # lr 1e-7 has the better test mean (0.9067) but the worse dev mean (0.72 < 0.82): 1e-6 must win
    assert mezo["lr"] == 1e-6 and mezo["point"] == "lr=1e-06"
    assert mezo["dev_mean"] == pytest.approx(0.82)
    assert mezo["test_mean"] == pytest.approx(0.72) and mezo["test_std"] == pytest.approx(0.02)
    assert (mezo["n"], mezo["n_points"], mezo["n_runs"]) == (3, 2, 6)
    curvzo = sel.loc[("sst2", "curvzo")]
    # the fixed-budget seed has the best test (0.95) but a lower dev (0.80 < 0.86): knobs are grid points
    assert curvzo["budget_mode"] == "adaptive" and curvzo["test_mean"] == pytest.approx(0.84)
    rte = sel.loc[("rte", "curvzo")]
    assert (rte["n"], rte["n_failed"]) == (1, 1) and math.isnan(rte["test_std"])


def test_mean_std_count_ties_and_bold_on_hand_numbers():
    rows = [_row(lr=1e-6, seed=0, dev=0.70, test=0.80), _row(lr=1e-6, seed=1, dev=0.70, test=0.90),
            # same dev mean: the tie goes to the point with more seeds, then to the smaller lr
            _row(lr=1e-5, seed=0, dev=0.70, test=0.99),
            _row(lr=1e-7, seed=0, dev=0.69, test=0.50), _row(lr=1e-7, seed=1, dev=0.71, test=0.50),
            _row(optimizer="curvzo", seed=0, dev=0.6, test=0.50), _row(optimizer="curvzo", seed=1, dev=0.6, test=0.70),
            _row(optimizer="curvzo", seed=2, dev=0.6, test=0.60)]
    sel = select_on_dev(tidy(rows)).set_index("optimizer")
    mezo = sel.loc["mezo"]
    assert mezo["lr"] == 1e-7  # 1e-7 and 1e-6 tie at 0.70 with two seeds each: the smaller lr
    assert (mezo["test_mean"], mezo["n"]) == (pytest.approx(0.5), 2)
    rows[3]["dev_best"] = 0.68  # now 1e-6 is strictly best (0.70 > 0.695)
    sel = select_on_dev(tidy(rows)).set_index("optimizer")
    mezo = sel.loc["mezo"]
    assert mezo["lr"] == 1e-6 and mezo["test_mean"] == pytest.approx(0.85)
    assert mezo["test_std"] == pytest.approx(math.sqrt(0.005))  # sample std of 0.80, 0.90
    assert cell_text(mezo["test_mean"], mezo["test_std"], 2) == "85.0 ± 7.1"
    assert cell_text(0.66, math.nan, 1) == "66.0"
    table = build_table(sel.reset_index())
    assert table.cells[("mezo", "sst2")] == "85.0 ± 7.1" and table.cells[("curvzo", "sst2")] == "60.0 ± 10.0"
    assert table.bold == {("mezo", "sst2")}
    assert table.flagged == {("mezo", "sst2")}  # 2 seeds where curvzo has 3 (the default expectation)
    assert "| mezo | **85.0 ± 7.1**† |" in to_markdown(table)


def test_zero_shot_run_is_a_labelled_row_and_step0_row_only_without_it():
    base = [_row(seed=0, dev=0.7, test=0.8, zero_shot={"test_acc": 0.52}),
            _row(optimizer="curvzo", seed=0, dev=0.6, test=0.9, zero_shot={"test_acc": 0.52}),
            _row(task="rte", seed=0, dev=0.6, test=0.6, zero_shot={"test_acc": 0.47}),
            _row(task="rte", optimizer="curvzo", seed=0, dev=0.6, test=0.4, zero_shot={"test_acc": 0.47})]
    table = build_table(select_on_dev(tidy(base)))
    assert table.rows[0] == STEP0 and table.cells[(STEP0, "sst2")] == "52.0" and table.cells[(STEP0, "rte")] == "47.0"
    assert table.cells[(STEP0, "avg (2 tasks)")] == "49.5"
    # a reference row is never bold, even where it beats every method (rte: 47 > 40 is not, 60 is best)
    assert (STEP0, "rte") not in table.bold and ("mezo", "rte") in table.bold
    text = to_markdown(table)
    assert f"| {STEP0} | 52.0 | 47.0 | 49.5 |" in text
    zero_shot = [_row(optimizer="none", seed=0, dev=0.55, test=0.52, lr=None, eps=None, zero_shot={"test_acc": 0.52})]
    table = build_table(select_on_dev(tidy(base[:2] + zero_shot)))
    assert table.rows == ["none", "mezo", "curvzo"] and STEP0 not in table.rows
    assert "| zero-shot | 52.0 |" in to_markdown(table) and "zero-shot" in to_latex(table)


def test_golden_markdown_table(runs):
    table = build_table(select_on_dev(runs), expected_seeds=3)
    text = to_markdown(table)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")
    assert text.startswith("Table: tiny-opt, full, budget fixture: lr/eps (and method knobs) chosen per "
                           "(task, model, method, peft) by mean dev acc/f1 over seeds")
    assert "16 runs, 7 grid points" in text.splitlines()[0]
    assert "| mezo | 72.0 ± 2.0 | 61.0 ± 1.4† | **55.0 ± 5.0** | 66.5 |" in text
    assert "| curvzo | **84.0 ± 4.0** | **66.0**† | — | **75.0** |" in text
    assert "avg (2 tasks)" in text


def test_latex_and_csv_renderings(runs, tmp_path):
    table = build_table(select_on_dev(runs), expected_seeds=3)
    tex = to_latex(table)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\textbf{84.0 $\pm$ 4.0}" in tex and r"61.0 $\pm$ 1.4$^\dagger$" in tex
    assert r"\caption{tiny-opt, full, budget fixture: lr/eps" in tex and r"(\%)" in tex
    path = to_csv(table, tmp_path / "t.csv")
    assert path.read_text().startswith("# tiny-opt, full, budget fixture: lr/eps")
    frame = pd.read_csv(path, comment="#").set_index(["task", "optimizer"])
    assert frame.loc[("sst2", "mezo"), "lr"] == 1e-6 and frame.loc[("sst2", "mezo"), "cell"] == "72.0 ± 2.0"
    assert bool(frame.loc[("rte", "mezo"), "flagged"]) and bool(frame.loc[("sst2", "curvzo"), "bold"])


def test_missing_report_lists_absent_combinations_and_failed_runs(runs, tmp_path):
    grid = grid_from_multirun(RUNS_DIR / "multirun.yaml")
    assert grid["seed"] == ["0", "1", "2"] and grid["optimizer"] == ["mezo", "curvzo"] and grid["model"] == ["tiny-opt"]
    missing, unchecked = missing_runs(runs, grid)
    assert unchecked == []
    got = {(r.task, r.optimizer, r.seed): r.status for r in missing.itertuples()}
    assert got == {("rte", "mezo", "2"): "absent", ("rte", "curvzo", "1"): "stopped_nonfinite",
                   ("rte", "curvzo", "2"): "absent", ("squad", "curvzo", "0"): "no_summary",
                   ("squad", "curvzo", "1"): "absent", ("squad", "curvzo", "2"): "absent"}
    report = missing_report(runs, [(str(RUNS_DIR / "multirun.yaml"), grid)])
    assert "18 combinations" in report and "6 without a finished run" in report
    assert "| rte | mezo | 2 | tiny-opt | fixture | absent |" in report
    assert "## Unfinished runs (2)" in report and "curvzo_rte_s1 |" in report
    # a given grid (Hydra override syntax): a learning rate nobody ran is missing everywhere
    extra, unchecked = missing_runs(runs, parse_overrides(["task=sst2", "optimizer=mezo", "optimizer.lr=1e-6,1e-5",
                                                           "seed=range(0,2)", "budget.max_steps=1,2"]))
    assert unchecked == ["budget.max_steps"]
    assert sorted(map(tuple, extra[["lr", "seed"]].values.tolist())) == [("1e-05", "0"), ("1e-05", "1")]


class FakeRun:
    """What collect_wandb reads from a wandb.apis.public.Run."""

    def __init__(self, name, config, summary, state="finished"):
        self.name, self.id, self.config, self.summary, self.state = name, f"id-{name}", config, summary, state


class FakeApi:
    def __init__(self, runs):
        self._runs, self.paths = runs, []

    def runs(self, path, filters=None):
        self.paths.append(path)
        return list(self._runs)


def _wandb_summary(summary: dict) -> dict:
    """As curvzo.job._flat_summary logs it: nested sections flattened to "section/key"."""
    flat = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    for key in ("zero_shot", "best", "test_at_best_dev"):
        flat.update({f"{key}/{k}": v for k, v in summary.get(key, {}).items()})
    flat["optimizer_info"] = summary["optimizer_info"]
    flat["eval/dev_acc"] = 0.99  # W&B's own metric summaries must not be mistaken for ours
    return flat


def test_wandb_collector_matches_the_local_schema(runs):
    fakes = []
    for run_dir in sorted(RUNS_DIR.glob("*/summary.json")):
        summary = json.loads(run_dir.read_text())
        config = yaml.safe_load((run_dir.parent / "config.yaml").read_text())
        config["optimizer"] = {k: {"value": v, "desc": None} for k, v in config["optimizer"].items()}
        fakes.append(FakeRun(run_dir.parent.name, config, _wandb_summary(summary)))
    fakes.append(FakeRun("crashed", {}, {"task": "sst2", "optimizer": "mezo"}, state="crashed"))
    api = FakeApi(fakes)
    online = collect_wandb("me", "curvzo", api=api)
    assert api.paths == ["me/curvzo"]
    assert list(online.columns) == list(runs.columns)
    assert online["run_dir"].iat[0].startswith("wandb:me/curvzo/id-")
    assert online["status"].iat[-1] == "crashed"
    local = runs[runs["status"] != "no_summary"]
    local = local.set_index(local["run_dir"].map(lambda d: Path(d).name)).sort_index()
    same = online.iloc[:-1].set_index(pd.Index([f.name for f in fakes[:-1]], name="run_dir")).sort_index()
    columns = ["task", "optimizer", "lr", "seed", "dev_best", "test_at_best_dev", "state_mb", "budget_mode", "status"]
    pd.testing.assert_frame_equal(local[columns], same[columns])
    table = build_table(select_on_dev(online), expected_seeds=3)
    assert to_markdown(table) == GOLDEN.read_text(encoding="utf-8")
