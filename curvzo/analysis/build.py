"""Build every table, figure and report the runs under a directory support.

    curvzo-tables RUNS OUT [--expect optimizer=mezo,curvzo --expect seed=0,1,2]
                                      [--expected-seeds 3] [--smoothing moving_average --window 3]
    make tables RUNS=multirun/2026-11-23/12-00-00            # OUT defaults to RUNS/analysis

Writes, saying in one line per output what it wrote:
  OUT/runs.csv (+ runs.parquet)     the tidy frame, one row per run (analysis.collect)
  OUT/curves.csv                    every logged curve point (long frame)
  OUT/selection.csv                 the dev-selected grid point per (task, model, method, peft, budget)
  OUT/tables/main_<model>_<peft>.{md,tex,csv}   the main table per model x peft (analysis.tables)
  OUT/missing.md                    expected grid (multirun.yaml / --expect) minus finished runs; failed runs
  OUT/figures/<task>_<model>_<peft>_<budget>.{png,pdf}   curves (analysis.figures)
  OUT/speedup.md                    when both mezo and curvzo have curves (analysis.speedup)
  OUT/memory.md                     cost per (model, peft, method) (analysis.memory)

Bad input (RUNS missing, no runs below it, an unreadable summary.json) gives one line on stderr
and exit code 2, before anything is written to OUT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curvzo.analysis import figures, memory, missing, speedup, tables
from curvzo.analysis.collect import CollectError, collect_runs, load_curves, write_runs


def expected_seed_count(grids: list[tuple[str, dict]]) -> int | None:
    """The number of seeds a sweep asked for (largest over the grids), or None when none sweeps seed."""
    counts = [len(g["seed"]) for _, g in grids if "seed" in g]
    return max(counts) if counts else None


def build(runs_dir: Path, out: Path, expect: list[str] | None = None, expected_seeds: int | None = None,
          smoothing: str = "moving_average", window: int = 3, say=print) -> list[Path]:
    """Collect ``runs_dir`` and write everything into ``out``; returns the files written.

    Raises CollectError (nothing written) when the runs cannot be read or there are none.
    """
    runs = collect_runs(runs_dir)
    if runs.empty:
        raise CollectError(f"no runs below {runs_dir} (no summary.json or config.yaml)")
    try:
        curves = load_curves(runs)
    except OSError as err:
        raise CollectError(f"{err.filename}: cannot be read ({err.strerror})") from None
    grids = [(str(p), g) for p, g in missing.find_grids(runs_dir)]
    if expect:
        grids.append(("--expect " + " ".join(expect), missing.parse_overrides(expect)))
    expected_seeds = expected_seeds or expected_seed_count(grids)

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def wrote(paths: list[Path], what: str) -> None:
        written.extend(paths)
        say(f"wrote {', '.join(str(p) for p in paths)}: {what}")

    finished = int((runs["status"] == "finished").sum())
    wrote(write_runs(runs, out), f"{len(runs)} runs ({finished} finished, {len(runs) - finished} not)")
    curves.to_csv(out / "curves.csv", index=False)
    wrote([out / "curves.csv"], f"{len(curves)} curve points from {curves['run_dir'].nunique()} runs")

    selection = tables.select_on_dev(runs)
    if selection.empty:
        say("skipped tables, figures and speed-up: no finished run with a dev metric")
    else:
        selection.dropna(axis=1, how="all").to_csv(out / "selection.csv", index=False)
        wrote([out / "selection.csv"], f"{len(selection)} dev-selected grid points")
        several_budgets = selection["budget"].nunique(dropna=False) > 1
        for keys, part in selection.groupby(["model", "peft", "budget"], dropna=False, sort=True):
            name = "_".join(figures.safe_name(k) for k in (keys if several_budgets else keys[:2]))
            table = tables.build_table(part, expected_seeds)
            base = out / "tables" / f"main_{name}"
            base.parent.mkdir(parents=True, exist_ok=True)
            base.with_suffix(".md").write_text(tables.to_markdown(table), encoding="utf-8")
            base.with_suffix(".tex").write_text(tables.to_latex(table), encoding="utf-8")
            tables.to_csv(table, base.with_suffix(".csv"))
            wrote([base.with_suffix(s) for s in (".md", ".tex", ".csv")],
                  f"{len(table.rows)} methods x {len(table.columns)} columns ({table.title})")

    (out / "missing.md").write_text(missing.missing_report(runs, grids), encoding="utf-8")
    absent = sum(len(missing.missing_runs(runs, g)[0]) for _, g in grids)
    wrote([out / "missing.md"], f"{absent} expected combinations without a finished run, "
                                f"{len(runs) - finished} unfinished runs, from {len(grids)} expected grid(s)")

    if not selection.empty and not curves.empty:
        paths = figures.plot_curves(runs, curves, selection, out / "figures")
        if paths:
            wrote(paths, f"{len(paths) // 2} figures (dev metric and train loss vs steps, forward passes, wall time)")
        table = speedup.speedup_table(runs, curves, selection, smoothing=smoothing, window=window)
        if len(table):
            (out / "speedup.md").write_text(speedup.to_markdown(table, smoothing=smoothing, window=window),
                                            encoding="utf-8")
            wrote([out / "speedup.md"], f"{int(table['reached'].sum())} of {len(table)} tasks reach mezo's final dev")
        else:
            say("skipped speedup.md: needs finished mezo and curvzo runs with curves on the same task")

    costs = memory.memory_table(runs)
    if len(costs):
        (out / "memory.md").write_text(memory.to_markdown(costs), encoding="utf-8")
        wrote([out / "memory.md"], f"{len(costs)} (model, peft, method) rows")
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 done, 2 bad input)."""
    parser = argparse.ArgumentParser(prog="curvzo-tables", description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="directory searched recursively for runs (e.g. a Hydra sweep dir)")
    parser.add_argument("out", type=Path, nargs="?", help="output directory (default RUNS/analysis)")
    parser.add_argument("--expect", action="append", default=[], metavar="KEY=V1,V2",
                        help="an expected grid axis in Hydra override syntax (repeatable), added to any multirun.yaml")
    parser.add_argument("--expected-seeds", type=int, help="seeds each cell should have (default: the sweep's seed list)")
    parser.add_argument("--smoothing", choices=["moving_average", "running_max"], default="moving_average")
    parser.add_argument("--window", type=int, default=3, help="moving-average window in evaluation points")
    args = parser.parse_args(argv)
    out = args.out or args.runs / "analysis"
    if out.exists() and not out.is_dir():
        print(f"error: {out}: exists and is not a directory", file=sys.stderr)
        return 2
    try:
        build(args.runs, out, args.expect, args.expected_seeds, args.smoothing, args.window)
    except CollectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
