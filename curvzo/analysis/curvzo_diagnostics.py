"""What CurvZO's per-step diagnostics say over whole runs: does the sampling help, and what does S follow?

    curvzo-diagnostics outputs/multirun/equal-cost-local --markdown diagnostics.md

Reads each run's summary.json (task, optimizer, seed) and the training rows of its metrics.jsonl, and reports per
task and optimizer, averaged over its runs: the predicted M(π)/M(MeZO) from the selection-contrast estimate (mean over
steps, and over the last tenth of the steps, when the estimate has had time), the correlation of log S with
log block size, the HT factors applied (mean, and the largest of the run), the share of coordinates selected,
and the steps whose draw was empty. Runs without CurvZO keys (MeZO, ...) are left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from curvzo.analysis.dev_curves import logged_runs

# column -> (metrics key, how one run's steps reduce to a number)
COLUMNS = {
    "predicted_ratio": ("curvzo/predicted_variance_ratio_vs_mezo", "mean"),
    "predicted_ratio_last10pct": ("curvzo/predicted_variance_ratio_vs_mezo", "tail"),
    "score_size_corr": ("curvzo/score_size_log_corr", "mean"),
    "ht_factor_mean": ("curvzo/ht_factor_mean", "mean"),
    "ht_factor_max": ("curvzo/ht_factor_max", "max"),
    "selected_numel_frac": ("curvzo/selected_numel_frac", "mean"),
    "empty_steps": ("zo/empty_steps", "last"),
}


def run_diagnostics(root: str | Path) -> pd.DataFrame:
    """One row per CurvZO run below ``root``: task, optimizer, seed and each column of ``COLUMNS``."""
    rows = []
    for _, summary, metrics in logged_runs(root):
        steps = [r for r in metrics if "curvzo/budget_f" in r]
        if not steps:
            continue
        row = {"task": summary.get("task"), "optimizer": summary.get("optimizer"), "seed": summary.get("seed"),
               "steps": len(steps)}
        for column, (key, how) in COLUMNS.items():
            values = [r[key] for r in steps if key in r]
            if not values:
                row[column] = float("nan")
            elif how == "mean":
                row[column] = sum(values) / len(values)
            elif how == "tail":
                tail = values[-max(1, len(values) // 10):]
                row[column] = sum(tail) / len(tail)
            elif how == "max":
                row[column] = max(values)
            else:
                row[column] = values[-1]
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean over each (task, optimizer)'s runs of every column, and the number of runs."""
    keys = ["task", "optimizer"]
    table = runs.groupby(keys, sort=True, dropna=False)[list(COLUMNS)].mean()
    table.insert(0, "runs", runs.groupby(keys, sort=True, dropna=False).size())
    return table.reset_index()


def to_markdown(table: pd.DataFrame) -> str:
    lines = [("| task | optimizer | runs | predicted M(π)/M(MeZO), mean / last 10 % of steps | corr(log S, log d_b) | "
              "HT factor mean / max | coordinates selected | empty steps |"),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def fmt(value: float, spec: str) -> str:
        return "—" if pd.isna(value) else format(value, spec)

    for _, r in table.iterrows():
        lines.append(f"| {r['task']} | {r['optimizer']} | {r['runs']} | {fmt(r['predicted_ratio'], '.3f')} / "
                     f"{fmt(r['predicted_ratio_last10pct'], '.3f')} | {fmt(r['score_size_corr'], '+.2f')} | "
                     f"{fmt(r['ht_factor_mean'], '.2f')} / {fmt(r['ht_factor_max'], '.1f')} | "
                     f"{fmt(100 * r['selected_numel_frac'], '.0f')} % | {fmt(r['empty_steps'], '.0f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="curvzo-diagnostics", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="directory searched recursively for runs (summary.json + metrics.jsonl)")
    parser.add_argument("--markdown", help="also write the table here")
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        print(f"error: {args.root}: no such directory", file=sys.stderr)
        return 2
    runs = run_diagnostics(args.root)
    if runs.empty:
        print(f"error: no CurvZO run (metrics with curvzo/ keys) below {args.root}", file=sys.stderr)
        return 2
    text = to_markdown(summarise(runs))
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
