"""Dev-accuracy curves against forward passes, one line per run, one panel per task.

    curvzo-dev-curves outputs/multirun/2026-11-23/12-00-00 --png curves.png

Reads each run's summary.json (task, optimizer, lr, seed) and the evaluation rows of its
metrics.jsonl; prints the curves as a table (dev accuracy in percent at each evaluation point)
and, with ``--png``, draws them. ``curvzo-tables`` draws the per-method curves
(mean and band over seeds at the dev-selected point) against steps, forward passes and wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from curvzo.analysis.collect import method_label


def logged_runs(root: str | Path) -> Iterator[tuple[Path, dict, list[dict]]]:
    """(run directory, summary, metrics rows) of every run below ``root`` that has both files."""
    for summary_path in sorted(Path(root).rglob("summary.json")):
        metrics = summary_path.parent / "metrics.jsonl"
        if metrics.is_file():
            rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines()]
            yield summary_path.parent, json.loads(summary_path.read_text(encoding="utf-8")), rows


def load_curves(root: str | Path) -> pd.DataFrame:
    """One row per (run, evaluation point): task, optimizer, lr, seed, step, forward passes, accuracies."""
    rows = []
    for run_dir, summary, metrics in logged_runs(root):
        passes = 0
        for row in metrics:
            passes = row.get("zo/forward_passes", passes) or passes
            if "eval/dev_acc" in row:
                rows.append({
                    "task": summary.get("task"), "lr": summary.get("lr"),
                    # a run trained on the metric is its own curve ("mezo (metric objective)")
                    "optimizer": method_label(summary.get("optimizer"), summary.get("train_objective") or "loss"),
                    "seed": summary.get("seed"), "step": row["step"], "forward_passes": passes,
                    "dev_acc": 100 * row["eval/dev_acc"],
                    "test_acc": 100 * row["eval/test_acc"] if row.get("eval/test_acc") is not None else None,
                    "run_dir": str(run_dir),
                })
    return pd.DataFrame(rows)


def curve_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Dev accuracy with evaluation steps as columns; one row per (task, optimizer, lr, seed)."""
    return curves.pivot_table(index=["task", "optimizer", "lr", "seed"], columns="step", values="dev_acc").reset_index()


def plot(curves: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(curves["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (optimizer, lr, seed), run in curves[curves["task"] == task].groupby(["optimizer", "lr", "seed"]):
            ax.plot(run["forward_passes"], run["dev_acc"], marker="o", label=f"{optimizer} lr={lr:g} seed={seed}")
        ax.set_title(task)
        ax.set_xlabel("forward passes")
        ax.set_ylabel("dev accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="directory searched recursively for runs (summary.json + metrics.jsonl)")
    parser.add_argument("--png", help="draw the curves into this file")
    args = parser.parse_args(argv)
    curves = load_curves(args.root) if Path(args.root).is_dir() else pd.DataFrame()
    if curves.empty:
        print(f"error: no runs with evaluation rows below {args.root}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.precision", 1):
        print(curve_table(curves).to_string(index=False))
    if args.png:
        plot(curves, args.png)
        print(f"curves drawn in {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
