"""Convergence speed-up (protocol.md §9.4): forward passes CurvZO needs to reach MeZO's final dev metric.

    from curvzo.analysis.speedup import speedup_table, to_markdown
    print(to_markdown(speedup_table(runs, curves, select_on_dev(runs))))

For each (task, model, peft, budget), both methods are taken at their dev-selected grid point
(``analysis.tables.select_on_dev``) and their dev-metric curves are averaged over seeds at each
evaluation point (matched by step). The **target** is MeZO's final dev metric: the seed mean at
its last evaluation point, unsmoothed. CurvZO's seed-mean curve is **smoothed** before the
comparison, because one lucky evaluation on a small dev set should not count as reaching a level:

- ``moving_average`` (default, ``window=3``): the trailing mean of the last ``window`` evaluation
  points (fewer at the start of the curve);
- ``running_max``: the best value so far (optimistic; the paper's "reaches MeZO's level" reading);
- ``window=1`` with ``moving_average`` is the raw curve.

The reported point is the first evaluation whose smoothed value is >= the target (within 1e-12,
so equal values written in a different float order still count), in forward passes and steps;
the speed-up is MeZO's forward passes at its final point divided by that count (∞ when the
target is met at 0 forward passes, i.e. by the zero-shot model). "not reached" when it never is.
"""

from __future__ import annotations

import math

import pandas as pd

from curvzo.analysis.tables import SELECT_KEYS, grid_columns, markdown_table

GROUP_KEYS = [k for k in SELECT_KEYS if k != "optimizer"]


def smooth(values: list[float], method: str = "moving_average", window: int = 3) -> list[float]:
    """The smoothed curve (see the module docstring); same length as ``values``."""
    if method == "running_max":
        out, best = [], -math.inf
        for v in values:
            best = max(best, v)
            out.append(best)
        return out
    if method == "moving_average":
        return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                for i in range(len(values))]
    raise ValueError(f"unknown smoothing {method!r} (moving_average or running_max)")


def first_reach(points: pd.DataFrame, target: float, method: str = "moving_average", window: int = 3):
    """The first row of ``points`` (sorted by step, column ``value``) whose smoothed value reaches ``target``."""
    points = points.sort_values("step").reset_index(drop=True)
    smoothed = smooth(points["value"].tolist(), method, window)
    for i, value in enumerate(smoothed):
        if value >= target - 1e-12:
            return points.iloc[i]
    return None


def mean_curve(curves: pd.DataFrame, run_dirs: list[str], metric: str) -> pd.DataFrame:
    """The seed-mean dev curve of ``run_dirs``: columns step, forward_passes, value (sorted by step)."""
    dev = curves[curves["run_dir"].isin(run_dirs) & (curves["split"] == "dev") & (curves["metric"] == metric)]
    return (dev.groupby("step", as_index=False)
            .agg(forward_passes=("forward_passes", "mean"), value=("value", "mean"))
            .sort_values("step").reset_index(drop=True))


def chosen_runs(runs: pd.DataFrame, choice: pd.Series) -> list[str]:
    """The run directories of the finished runs at a selected grid point (one ``select_on_dev`` row)."""
    mask = runs["status"] == "finished"
    for column in SELECT_KEYS + grid_columns(runs):
        wanted = choice.get(column)
        if wanted is None or (isinstance(wanted, float) and math.isnan(wanted)):
            mask &= runs[column].isna()
        else:
            mask &= runs[column] == wanted
    return runs.loc[mask, "run_dir"].tolist()


def speedup_table(runs: pd.DataFrame, curves: pd.DataFrame, selection: pd.DataFrame,
                  method: str = "curvzo", baseline: str = "mezo",
                  smoothing: str = "moving_average", window: int = 3) -> pd.DataFrame:
    """One row per (task, model, peft, budget) where both methods have curves.

    Columns: GROUP_KEYS, metric, target (baseline's final dev metric), baseline_fp, baseline_step,
    method_fp, method_step (NaN when not reached), reached, speedup (baseline_fp / method_fp),
    step_ratio (baseline_step / method_step).
    """
    rows = []
    for keys, group in selection.groupby(GROUP_KEYS, dropna=False, sort=True):
        by_method = {r["optimizer"]: r for _, r in group.iterrows()}
        if method not in by_method or baseline not in by_method:
            continue
        metric = by_method[baseline]["metric"]
        base = mean_curve(curves, chosen_runs(runs, by_method[baseline]), metric)
        ours = mean_curve(curves, chosen_runs(runs, by_method[method]), metric)
        if base.empty or ours.empty:
            continue
        final = base.iloc[-1]
        hit = first_reach(ours, final["value"], smoothing, window)
        row = {**dict(zip(GROUP_KEYS, keys)), "metric": metric, "target": final["value"],
               "baseline_fp": final["forward_passes"], "baseline_step": final["step"],
               "method_fp": math.nan, "method_step": math.nan, "reached": hit is not None,
               "speedup": math.nan, "step_ratio": math.nan}
        if hit is not None:
            row.update(method_fp=hit["forward_passes"], method_step=hit["step"],
                       speedup=final["forward_passes"] / hit["forward_passes"] if hit["forward_passes"] else math.inf,
                       step_ratio=final["step"] / hit["step"] if hit["step"] else math.inf)
        rows.append(row)
    columns = GROUP_KEYS + ["metric", "target", "baseline_fp", "baseline_step", "method_fp", "method_step",
                            "reached", "speedup", "step_ratio"]
    return pd.DataFrame(rows, columns=columns)


def _num(value: float, spec: str = "g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return "∞" if math.isinf(value) else format(value, spec)


def _ratio_text(row: pd.Series) -> str:
    if math.isinf(row["speedup"]):
        return "∞ (the zero-shot model is already at the target)"
    return f"{row['speedup']:.2f}×"


def to_markdown(table: pd.DataFrame, method: str = "curvzo", baseline: str = "mezo",
                smoothing: str = "moving_average", window: int = 3) -> str:
    """The speed-up table as markdown, with a caption line stating the target and the smoothing."""
    how = f"trailing mean over {window} evaluation points" if smoothing == "moving_average" else "running max"
    caption = (f"Table: forward passes {method} needs for its seed-mean dev metric ({how}) to reach "
               f"{baseline}'s final seed-mean dev metric, both at their dev-selected grid point; "
               f"speed-up = {baseline} forward passes / {method} forward passes.")
    rows = []
    for _, r in table.iterrows():
        reached = r["reached"]
        rows.append([r["task"], r["model"], r["peft"], r["budget"], f"{100 * r['target']:.1f} ({r['metric']})",
                     f"{_num(r['baseline_fp'])} ({_num(r['baseline_step'])} steps)",
                     f"{_num(r['method_fp'])} ({_num(r['method_step'])} steps)" if reached else "not reached",
                     _ratio_text(r) if reached else "not reached"])
    header = ["task", "model", "peft", "budget", f"target ({baseline} final dev, %)",
              f"{baseline} forward passes", f"{method} forward passes to target", "speed-up"]
    return f"{caption}\n\n{markdown_table(header, rows, 'llllrrrr')}\n"
