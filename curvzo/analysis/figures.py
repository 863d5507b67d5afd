"""Curves: dev metric and train loss against steps, forward passes and wall time (PNG and PDF).

    from curvzo.analysis.figures import plot_curves
    paths = plot_curves(runs, curves, select_on_dev(runs), "out/figures")

One figure per (task, model, peft, budget): two rows (dev metric in %, train loss) by three
columns (x = steps, forward passes, wall time). One line per method at its dev-selected grid
point: the mean over seeds at each logged step, with a min–max band over seeds. Protocol.md §8
asks for forward passes on the x-axis of curves; the two other axes show what a step and a
second cost. The forward-pass axis label states the budget ("forward passes (budget 80)"); a
step budget (no max_forward_passes) is stated on the steps axis too.

Drawn with matplotlib's object API on an Agg canvas: no pyplot global state, no display needed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from curvzo.analysis.speedup import GROUP_KEYS, chosen_runs
from curvzo.analysis.tables import METHOD_ORDER, ordered

X_AXES = [("step", "steps"), ("forward_passes", "forward passes"), ("elapsed_s", "wall time (s)")]


def budget_label(runs: pd.DataFrame) -> str:
    """The budget the runs ran under: "budget 80" (max forward passes) or "budget smoke: 4 steps"."""
    fps = runs["max_forward_passes"].dropna().unique()
    if len(fps) == 1:
        return f"budget {int(fps[0])}"
    names = [str(b) for b in runs["budget"].dropna().unique()]
    steps = runs["max_steps"].dropna().unique()
    name = "/".join(names) or "unknown"
    return f"budget {name}: {int(steps[0])} steps" if len(steps) == 1 else f"budget {name}"


def method_curves(curves: pd.DataFrame, run_dirs: list[str], split: str, metric: str) -> pd.DataFrame:
    """Seed statistics per step of one method: step, forward_passes, elapsed_s (means), mean, lo, hi."""
    part = curves[curves["run_dir"].isin(run_dirs) & (curves["split"] == split) & (curves["metric"] == metric)]
    if part.empty:
        return pd.DataFrame(columns=["step", "forward_passes", "elapsed_s", "mean", "lo", "hi", "n"])
    return (part.groupby("step", as_index=False)
            .agg(forward_passes=("forward_passes", "mean"), elapsed_s=("elapsed_s", "mean"),
                 mean=("value", "mean"), lo=("value", "min"), hi=("value", "max"), n=("value", "count"))
            .sort_values("step"))


def safe_name(text) -> str:
    """A file-name-safe form of a key (letters, digits, ``._-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def plot_group(runs: pd.DataFrame, curves: pd.DataFrame, selection: pd.DataFrame, stem: str | Path,
               formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Draw one (task, model, peft, budget) selection slice into ``stem.<format>``; returns the files."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = selection["metric"].iat[0]
    first = selection.iloc[0]
    fig = Figure(figsize=(13, 6.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3, squeeze=False)
    methods = ordered(selection["optimizer"], METHOD_ORDER)
    scope = runs[runs["run_dir"].isin(sum((chosen_runs(runs, r) for _, r in selection.iterrows()), []))]
    budget = budget_label(scope)
    for method in methods:
        choice = selection[selection["optimizer"] == method].iloc[0]
        run_dirs = chosen_runs(runs, choice)
        label = f"{method} ({choice['point']}, n={int(choice['n'])})" if choice["point"] != "single point" \
            else f"{method} (n={int(choice['n'])})"
        for row, (split, name, scale) in enumerate([("dev", metric, 100.0), ("train", "loss", 1.0)]):
            stats = method_curves(curves, run_dirs, split, name)
            for col, (x, _) in enumerate(X_AXES):
                ax = axes[row][col]
                data = stats.dropna(subset=[x])
                if data.empty:
                    continue
                line, = ax.plot(data[x], scale * data["mean"], marker="o" if split == "dev" else None,
                                markersize=3, label=label)
                if (data["n"] > 1).any():
                    ax.fill_between(data[x], scale * data["lo"], scale * data["hi"], alpha=0.2,
                                    color=line.get_color(), linewidth=0)
    for col, (_, xlabel) in enumerate(X_AXES):
        # the budget goes on the axis it is counted in: forward passes, or steps as well for step budgets
        suffix = f" ({budget})" if col == 1 or (col == 0 and budget.endswith(" steps")) else ""
        for row, ylabel in enumerate([f"dev {metric} (%)", "train loss"]):
            ax = axes[row][col]
            ax.set_xlabel(xlabel + suffix)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    fig.suptitle(f"{first['task']} — {first['model']}, {first['peft']}, budget {first['budget']} "
                 f"(mean over seeds, band = min–max)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    written = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, format=fmt)
        written.append(path)
    return written


def plot_curves(runs: pd.DataFrame, curves: pd.DataFrame, selection: pd.DataFrame, out_dir: str | Path,
                formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """One figure per (task, model, peft, budget) with curves; files named ``<task>_<model>_<peft>_<budget>``."""
    written: list[Path] = []
    have = set(curves["run_dir"])
    for keys, group in selection.groupby(GROUP_KEYS, dropna=False, sort=True):
        group = group[[bool(set(chosen_runs(runs, r)) & have) for _, r in group.iterrows()]]
        if group.empty:
            continue
        stem = Path(out_dir) / "_".join(safe_name(k) for k in keys if not (isinstance(k, float) and math.isnan(k)))
        written += plot_group(runs, curves, group, stem, formats)
    return written
