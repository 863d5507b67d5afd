"""Collect every run's summary.json under a directory into one table, mean ± std over seeds.

    curvzo-results-table multirun/            # print the table
    curvzo-results-table multirun/ --csv results.csv --runs-csv runs.csv
    curvzo-results-table multirun/ --baseline mezo --markdown table.md   # + each arm minus MeZO, with its standard error
    curvzo-results-table runs/ --at-forward-passes 1000   # each run re-selected from its curve up to 1000 passes
    curvzo-results-table analysis/results/x/runs.csv multirun/   # committed runs together with new ones

One row per configuration (task, model, optimizer, peft, budget, lr, eps); scores are the
task's metric (``metric``: acc, or f1 for SQuAD/DROP) in percent, as the papers report them. Only finished runs enter the aggregate; the others are
counted in the ``failed`` column so a broken sweep cannot look complete.

This table lists every configuration; for the dev-selected paper-style tables, figures and
reports use ``curvzo-tables RUNS OUT`` (``make tables``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

# train_objective keeps runs trained on the loss and on the metric itself apart (task.train_objective)
CONFIG_COLUMNS = ["task", "metric", "model", "optimizer", "train_objective", "peft", "budget", "lr", "eps"]


def load_runs_from(roots: list[str]) -> pd.DataFrame:
    """The runs of every root: a directory (its summary.json files) or a runs.csv written by ``--runs-csv``
    (committed evidence whose run directories are gone); a run directory named twice counts once."""
    frames = []
    for root in roots:
        if Path(root).is_file():
            try:
                frames.append(pd.read_csv(root))
            except (OSError, ValueError) as err:
                raise SystemExit(f"error: {root}: not a runs.csv ({err})") from None
            missing = {"run_dir", "status", "test", *CONFIG_COLUMNS} - set(frames[-1].columns)
            if missing:
                raise SystemExit(f"error: {root}: not a runs.csv written by --runs-csv (no {', '.join(sorted(missing))})")
        else:
            frames.append(load_runs(root))
    runs = pd.concat([f for f in frames if not f.empty], ignore_index=True) if any(not f.empty for f in frames) \
        else pd.DataFrame()
    return runs.drop_duplicates("run_dir", keep="last").reset_index(drop=True) if not runs.empty else runs


def load_runs(root: str | Path) -> pd.DataFrame:
    """One row per summary.json found below ``root`` (recursively)."""
    rows = []
    for path in sorted(Path(root).rglob("summary.json")):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SystemExit(f"error: {path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        metric = summary.get("metric", "acc")  # summaries before the generation tasks had accuracy only
        rows.append({
            **{key: summary.get(key) for key in CONFIG_COLUMNS},
            "metric": metric,
            "train_objective": summary.get("train_objective") or "loss",  # summaries before the key trained on the loss
            "seed": summary.get("seed"),
            "status": summary.get("status"),
            "zero_shot": _percent(summary.get("zero_shot", {}).get(f"test_{metric}")),
            "test": _percent(summary.get("test_at_best_dev", {}).get(f"test_{metric}")),
            "best_dev": _percent(summary.get("best", {}).get(f"dev_{metric}")),
            "selected_step": summary.get("best", {}).get("step"),
            "steps": summary.get("steps"),
            "forward_passes": summary.get("forward_passes"),
            "sec_per_step": summary.get("sec_per_step"),
            "sec_per_forward": _ratio(summary.get("sec_per_step"), summary.get("forward_passes_per_step")),
            "peak_mem_gb": summary.get("peak_mem_gb"),
            "state_mb": _ratio(summary.get("optimizer_info", {}).get("state_bytes"), 2**20),
            "wall_time_s": summary.get("wall_time_s"),
            "select_by": summary.get("select_by", "dev_loss"),
            "run_dir": str(path.parent),
        })
    return pd.DataFrame(rows)


def at_forward_passes(runs: pd.DataFrame, budget: int) -> pd.DataFrame:
    """The runs as if each had stopped at ``budget`` forward passes: dev selection (the run's ``select_by``) and its
    test score re-read from the evaluation points in metrics.jsonl with at most ``budget`` passes. A run whose curve
    reaches ``budget`` counts as finished, whatever ended it later (a deadline, a preemption); one that stopped short
    counts as failed."""
    rows = []
    for _, run in runs.iterrows():
        metric, points, curve = run["metric"], [], Path(run["run_dir"]) / "metrics.jsonl"
        if not curve.is_file():
            raise SystemExit(f"error: {curve}: not found (--at-forward-passes reads every run's curve)")
        with open(curve, encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                if f"eval/dev_{metric}" in record:
                    points.append(record)
        within = [p for p in points if (p.get("zo/forward_passes") or 0) <= budget]
        reached = any((p.get("zo/forward_passes") or 0) >= budget for p in points)
        row = run.to_dict()
        if not within or not reached:
            rows.append({**row, "status": f"stopped before {budget} passes", "test": None, "best_dev": None})
            continue
        select_by = run.get("select_by", "dev_loss")
        if not isinstance(select_by, str):  # a runs.csv from before the column: MeZO's dev loss
            select_by = "dev_loss"
        if select_by == "last":
            best = within[-1]
        elif select_by == "dev_loss":
            best = min(within, key=lambda p: p["eval/dev_loss"])
        else:
            best = max(within, key=lambda p: p[f"eval/dev_{metric}"])
        rows.append({**row, "status": "finished", "test": _percent(best[f"eval/test_{metric}"]),
                     "best_dev": _percent(best[f"eval/dev_{metric}"]), "selected_step": best["step"],
                     "forward_passes": max(p.get("zo/forward_passes") or 0 for p in within)})
    return pd.DataFrame(rows, columns=runs.columns)


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _ratio(value: float | None, by: float | None) -> float | None:
    return None if value is None or not by else value / by


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of the finished runs of each configuration."""
    keys = [c for c in CONFIG_COLUMNS if c in runs]
    grouped = runs.assign(finished=runs["status"] == "finished").groupby(keys, sort=True, dropna=False)
    table = grouped.apply(_summarise, include_groups=False).reset_index()
    return table.astype({"seeds": int, "failed": int})


def _summarise(group: pd.DataFrame) -> pd.Series:
    done = group[group["finished"]]
    return pd.Series({
        "seeds": len(done),
        "failed": int((~group["finished"]).sum()),
        "zero_shot": done["zero_shot"].mean(),
        "test": done["test"].mean(),
        "test_std": done["test"].std(ddof=1) if len(done) > 1 else float("nan"),
        "best_dev": done["best_dev"].mean(),
        "forward_passes": done["forward_passes"].mean(),
        "sec_per_step": done["sec_per_step"].mean(),
        "sec_per_forward": done["sec_per_forward"].mean(),
        "peak_mem_gb": done["peak_mem_gb"].mean(),
        "state_mb": done["state_mb"].mean(),
    })


def best_lr_on_dev(table: pd.DataFrame, runs: pd.DataFrame, seeds: set[int] | None = None) -> tuple[pd.DataFrame,
                                                                                                 pd.DataFrame]:
    """Per arm (task, model, optimizer, objective, PEFT mode, budget, eps) only the lr with the highest mean dev score
    over its finished runs of ``seeds`` (all seeds when None): the table's rows and the runs behind them. A tie goes
    to the lr with more finished seeds (the one already replicated), then to the smaller lr."""
    arm = ["task", "model", "optimizer", "train_objective", "peft", "budget", "eps"]
    keys = arm + ["lr"]
    done = runs[runs["status"] == "finished"]
    deciding = done if seeds is None else done[done["seed"].isin(seeds)]
    dev = deciding.groupby(keys, dropna=False)["best_dev"].mean().rename("deciding_dev").reset_index()
    scored = table[table["seeds"] > 0].merge(dev, on=keys, how="inner")
    scored = scored.sort_values(["deciding_dev", "seeds"], ascending=False, kind="stable")
    kept = scored.drop_duplicates(arm).drop(columns="deciding_dev").sort_values(keys).reset_index(drop=True)
    chosen = runs.merge(kept[keys], on=keys, how="inner")
    return kept, chosen


def differences(table: pd.DataFrame, runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each configuration's test mean minus that of ``baseline`` (trained on the loss) on the same task, model, PEFT
    mode and budget, with the standard error of the difference (Welch: sqrt(s1²/n1 + s2²/n2) over the finished seeds) and |diff| / se."""
    done = runs[runs["status"] == "finished"]
    keys = ["task", "model", "peft", "budget"]
    rows = []
    for _, row in table.iterrows():
        same = (done[keys] == row[keys]).all(axis=1)
        arm = done[same & (done["optimizer"] == row["optimizer"]) & (done["lr"] == row["lr"])
                   & (done["train_objective"] == row["train_objective"])]["test"]
        base = done[same & (done["optimizer"] == baseline) & (done["train_objective"] == "loss")]["test"]
        if (row["optimizer"], row["train_objective"]) == (baseline, "loss") or base.empty or arm.empty:
            continue
        se = (arm.var(ddof=1) / len(arm) + base.var(ddof=1) / len(base)) ** 0.5 if min(len(arm), len(base)) > 1 \
            else float("nan")
        diff = arm.mean() - base.mean()
        rows.append({**{k: row[k] for k in keys}, "optimizer": row["optimizer"],
                     "train_objective": row["train_objective"], "lr": row["lr"], "seeds": len(arm),
                     "baseline_seeds": len(base), "diff": diff, "se": se,
                     "diff_over_se": diff / se if se > 0 else float("nan")})
    return pd.DataFrame(rows)


def _arm(row) -> str:
    """The optimizer, marked when it trained on the metric itself."""
    return row["optimizer"] if row.get("train_objective", "loss") == "loss" else f"{row['optimizer']} ({row['train_objective']} objective)"


def _markdown(table: pd.DataFrame, diffs: pd.DataFrame | None, baseline: str | None) -> str:
    lines = ["| task | optimizer | lr | seeds | zero-shot test | test at best dev, mean ± std | best dev | s / step |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for _, r in table.iterrows():
        std = "" if pd.isna(r["test_std"]) else f" ± {r['test_std']:.1f}"
        lines.append(f"| {r['task']} | {_arm(r)} | {r['lr']:g} | {r['seeds']} | {r['zero_shot']:.1f} | "
                     f"{r['test']:.1f}{std} | {r['best_dev']:.1f} | {r['sec_per_step']:.2f} |")
    if diffs is not None and not diffs.empty:
        lines += ["", f"Difference from {baseline} (test at best dev, points; se: Welch over seeds):", "",
                  "| task | optimizer | diff | se | diff / se | beyond 1 se | beyond 2 se |",
                  "| --- | --- | ---: | ---: | ---: | --- | --- |"]
        for _, r in diffs.iterrows():
            z = r["diff_over_se"]
            if pd.isna(z):  # one seed on either side: no standard error
                lines.append(f"| {r['task']} | {_arm(r)} | {r['diff']:+.1f} | — | — | n/a | n/a |")
                continue
            lines.append(f"| {r['task']} | {_arm(r)} | {r['diff']:+.1f} | {r['se']:.1f} | {z:+.2f} | "
                         f"{'yes' if abs(z) > 1 else 'no'} | {'yes' if abs(z) > 2 else 'no'} |")
    return "\n".join(lines) + "\n"


def seed_set(text: str) -> set[int] | None:
    """``"0,2"`` -> {0, 2}; None when ``text`` is not comma-separated integers."""
    try:
        return {int(seed) for seed in text.split(",")}
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", metavar="root",
                        help="directory searched recursively for summary.json (e.g. multirun/), or a runs.csv that "
                             "--runs-csv wrote (runs whose directories are gone)")
    parser.add_argument("--csv", help="write the aggregated table here")
    parser.add_argument("--runs-csv", help="write the per-run table here")
    parser.add_argument("--baseline", help="an optimizer: also report each other arm's test difference from it")
    parser.add_argument("--markdown", help="write the table (and the differences) here as markdown")
    parser.add_argument("--at-forward-passes", type=int, metavar="N",
                        help="score every run as if it had stopped at N forward passes (re-selected on dev from its "
                             "metrics.jsonl); runs that reached N count, stopped or not")
    parser.add_argument("--seeds", help="comma-separated seeds: only these runs (e.g. 0 for an lr grid run at seed 0)")
    parser.add_argument("--lr-on-dev", nargs="?", const="all", metavar="SEEDS",
                        help="keep, per arm, only the lr with the best mean dev score (the table, the differences); "
                             "with SEEDS (e.g. 0) only those seeds' dev decides, and every seed of the chosen lr counts; a tie "
                             "goes to the lr with more seeds, then the smaller")
    args = parser.parse_args(argv)
    if args.at_forward_passes is not None and args.at_forward_passes < 0:
        print(f"error: --at-forward-passes {args.at_forward_passes}: needs a number of passes >= 0", file=sys.stderr)
        return 2
    for root in args.roots:
        if not Path(root).exists():
            print(f"error: {root}: no such directory or runs.csv", file=sys.stderr)
            return 2
    runs = load_runs_from(args.roots)
    where = " or ".join(args.roots)
    if runs.empty:
        print(f"error: no summary.json below {where}", file=sys.stderr)
        return 2
    if args.seeds:
        seeds = seed_set(args.seeds)
        if seeds is None:
            print(f"error: --seeds {args.seeds}: needs comma-separated integers", file=sys.stderr)
            return 2
        runs = runs[runs["seed"].isin(seeds)].reset_index(drop=True)
        if runs.empty:
            print(f"error: no run of seed {args.seeds} below {where}", file=sys.stderr)
            return 2
    if args.at_forward_passes is not None:
        runs = at_forward_passes(runs, args.at_forward_passes)
    table = aggregate(runs)
    if args.lr_on_dev:
        deciding = None if args.lr_on_dev == "all" else seed_set(args.lr_on_dev)
        if args.lr_on_dev != "all" and deciding is None:
            print(f"error: --lr-on-dev {args.lr_on_dev}: needs comma-separated seeds (or nothing)", file=sys.stderr)
            return 2
        table, runs = best_lr_on_dev(table, runs, deciding)
    if args.baseline and args.baseline not in set(runs["optimizer"]):
        print(f"error: --baseline {args.baseline}: no run of that optimizer below {where}", file=sys.stderr)
        return 2
    diffs = differences(table, runs, args.baseline) if args.baseline else None
    if args.markdown:
        Path(args.markdown).write_text(_markdown(table, diffs, args.baseline), encoding="utf-8")
    if args.runs_csv:
        runs.to_csv(args.runs_csv, index=False)
    if args.csv:
        table.to_csv(args.csv, index=False)
    hyper = {c: (lambda v: "-" if pd.isna(v) else f"{v:g}") for c in ("lr", "eps")}
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.precision", 1):
        print(table.to_string(index=False, formatters=hyper, na_rep="-"))
        if diffs is not None and not diffs.empty:
            print(f"\ndifference from {args.baseline}:")
            print(diffs.to_string(index=False, formatters=hyper, na_rep="-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
