"""Hyperparameter selection on dev, and the main results table (markdown, LaTeX, CSV).

    from curvzo.analysis.tables import select_on_dev, build_table, to_markdown
    selection = select_on_dev(runs)                  # runs: analysis.collect.collect_runs(...)
    print(to_markdown(build_table(selection)))

Selection follows protocol.md §8 rule 3: for each (task, model, optimizer, peft, budget), the
grid point (lr, eps and every method knob) with the best **mean dev metric** over its finished
seeds wins; test never enters the choice. The table then reports test mean ± sample std (n - 1)
over the seeds at that point, in percent, with the seed count carried along.

Ties (equal mean dev metric, compared after rounding to 12 decimals so the summation order of
floats cannot decide) go to the point with more finished seeds, then to the smaller values of
(lr, eps, knobs) in that order — a smaller step is the conservative choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from curvzo.analysis.collect import knob_columns

SELECT_KEYS = ["task", "model", "optimizer", "peft", "budget"]
# Column order of the tables: the MeZO paper's task order, then any other task alphabetically.
TASK_ORDER = ["sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad", "drop"]
METHOD_ORDER = ["none", "fo_adam", "mezo", "sparse_mezo", "zo_sgd_momentum", "zo_adam", "hizoo", "dizo", "loren",
                "curvzo_uniform", "curvzo_fixed", "curvzo"]
# Row labels that differ from the optimizer's config name.
ROW_LABELS = {"none": "zero-shot"}
# The row made from every run's step-0 evaluation when the slice has no zero-shot (optimizer=none) run.
STEP0 = "step 0 (no training)"
DAGGER = "†"
MISSING = "—"


def grid_columns(runs: pd.DataFrame) -> list[str]:
    """The columns that define a grid point: lr, eps and the method knobs."""
    return ["lr", "eps", *knob_columns(runs)]


def _key(value: Any) -> Any:
    """Hashable, NaN-free form of a grid value (NaN and None are the same: 'not set')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _order(value: Any) -> tuple:
    """Sort key that puts 'not set' first, numbers by value, then strings; never compares across types."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def select_on_dev(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, model, optimizer, peft, budget): the dev-selected grid point and its stats.

    Columns: SELECT_KEYS, metric, the grid columns at the chosen point, ``point`` (a readable
    description of the knobs that vary in the group), dev_mean, dev_std, test_mean, test_std, n
    (finished seeds at the point), n_failed (unfinished runs at the point), n_points (grid points
    compared), n_runs (finished runs compared), zero_shot_mean.
    """
    grid = grid_columns(runs)
    finished = runs[(runs["status"] == "finished") & runs["dev_best"].notna()]
    unfinished = runs[runs["status"] != "finished"]
    rows = []
    for keys, group in finished.groupby(SELECT_KEYS, dropna=False, sort=True):
        varying = [c for c in grid if group[c].map(_key).nunique(dropna=True) > 1]
        points: dict[tuple, list[int]] = {}
        for index, row in group.iterrows():
            points.setdefault(tuple(_key(row[c]) for c in grid), []).append(index)
        stats = [(point, group.loc[indices]) for point, indices in points.items()]
        # best mean dev first; then more seeds; then the smaller (lr, eps, knobs) — see the module docstring
        point, chosen = min(stats, key=lambda s: (-round(s[1]["dev_best"].mean(), 12), -len(s[1]),
                                                  tuple(_order(v) for v in s[0])))
        test = chosen["test_at_best_dev"].dropna()
        same_point = (unfinished[SELECT_KEYS].astype(str) == pd.Series(keys, index=SELECT_KEYS).astype(str)).all(axis=1)
        failed = unfinished[same_point]
        failed = failed[[tuple(_key(r[c]) for c in grid) == point for _, r in failed.iterrows()]]
        rows.append({
            **dict(zip(SELECT_KEYS, keys)),
            "metric": group["metric"].mode().iat[0],
            **dict(zip(grid, point)),
            "point": ", ".join(f"{c}={_fmt(v)}" for c, v in zip(grid, point) if c in varying) or "single point",
            "dev_mean": chosen["dev_best"].mean(),
            "dev_std": chosen["dev_best"].std(ddof=1) if len(chosen) > 1 else math.nan,
            "test_mean": test.mean() if len(test) else math.nan,
            "test_std": test.std(ddof=1) if len(test) > 1 else math.nan,
            "n": len(test),
            "n_failed": len(failed),
            "n_points": len(points),
            "n_runs": len(group),
            "zero_shot_mean": chosen["zero_shot_test"].mean(),
        })
    return pd.DataFrame(rows)


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def ordered(values, order: list[str]) -> list[str]:
    """Unique ``values`` in the given ``order``, unknown ones after it, alphabetically."""
    values = list(dict.fromkeys(values))
    return sorted(values, key=lambda v: (order.index(v) if v in order else len(order), v))


@dataclass
class Table:
    """A rendered-format-independent results table: rows are methods, columns are tasks (+ average)."""

    title: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], str] = field(default_factory=dict)  # text without bold/flag marks
    bold: set[tuple[str, str]] = field(default_factory=set)
    flagged: set[tuple[str, str]] = field(default_factory=set)
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    selection: pd.DataFrame | None = None


def cell_text(mean: float, std: float, n: int) -> str:
    """``f"{100*m:.1f} ± {100*s:.1f}"``, or just the mean when there is one seed."""
    if n <= 1 or math.isnan(std):
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def build_table(selection: pd.DataFrame, expected_seeds: int | None = None, title: str | None = None) -> Table:
    """The table of one selection slice (normally one (model, peft, budget)).

    ``expected_seeds`` defaults to the largest seed count of any cell; cells below it get a ``†``.
    The average column covers only the tasks every method has, and is labelled with their number;
    it is left out when fewer than two tasks are common to all methods. The best mean of each
    column (compared as displayed, to one decimal) is bold; ties are all bold. Without a zero-shot
    run, a first row shows the step-0 scores (:func:`_add_step0_row`); it is never bold.
    """
    sel = selection[selection["n"] > 0]
    tasks = ordered(sel["task"], TASK_ORDER)
    methods = ordered(sel["optimizer"], METHOD_ORDER)
    expected = expected_seeds or int(sel["n"].max())
    metrics = sel.groupby("task")["metric"].first().to_dict()
    mixed = len(set(metrics.values())) > 1
    columns = {t: f"{t} ({metrics[t]})" if mixed else t for t in tasks}
    if title is None:
        parts = [f"{'budget ' if k == 'budget' else ''}{sel[k].iat[0]}"
                 for k in ("model", "peft", "budget") if sel[k].nunique() == 1]
        title = ", ".join(parts)
    table = Table(title=title, rows=list(methods), columns=[columns[t] for t in tasks], selection=sel)
    means: dict[tuple[str, str], float] = {}
    for _, r in sel.iterrows():
        cell = (r["optimizer"], columns[r["task"]])
        table.cells[cell] = cell_text(r["test_mean"], r["test_std"], int(r["n"]))
        means[cell] = r["test_mean"]
        if r["n"] < expected:
            table.flagged.add(cell)
    if "none" not in methods:
        _add_step0_row(table, sel, columns, means)
    common = [t for t in tasks if all((m, columns[t]) in means for m in methods)]
    if len(common) >= 2:
        avg = f"avg ({len(common)} tasks)"
        table.columns.append(avg)
        for m in [r for r in table.rows if all((r, columns[t]) in means for t in common)]:
            means[(m, avg)] = sum(means[(m, columns[t])] for t in common) / len(common)
            table.cells[(m, avg)] = f"{100 * means[(m, avg)]:.1f}"
        table.notes.append(f"{avg}: mean of the test means over the tasks every method has ({', '.join(common)}).")
    for column in table.columns:
        shown = {m: round(100 * means[(m, column)], 1) for m in methods if (m, column) in means}
        if shown:
            best = max(shown.values())
            table.bold |= {(m, column) for m, v in shown.items() if v == best}
    metric_text = "/".join(dict.fromkeys(metrics[t] for t in tasks))
    table.caption = (f"{title}: lr/eps (and method knobs) chosen per (task, model, method, peft) by mean dev "
                     f"{metric_text} over seeds; test mean ± std (%) at that point; "
                     f"{int(sel['n_runs'].sum())} runs, {int(sel['n_points'].sum())} grid points.")
    if table.flagged:
        table.notes.append(f"{DAGGER} fewer than {expected} finished seeds at the chosen point.")
    if any((m, c) not in table.cells for m in methods for c in table.columns):
        table.notes.append(f"{MISSING} no finished run.")
    table.notes.append("Bold: best mean in the column.")
    return table


def _add_step0_row(table: Table, sel: pd.DataFrame, columns: dict[str, str], means: dict) -> None:
    """A first row with each task's step-0 test score (every run evaluates before training), so the
    gain over the untrained model is visible without a separate zero-shot sweep. It has no ± (the
    test set depends on data_seed only) and, for prefix tuning, it includes the initial prefix."""
    step0 = sel.dropna(subset=["zero_shot_mean"]).groupby("task")["zero_shot_mean"].mean()
    if step0.empty:
        return
    table.rows.insert(0, STEP0)
    for task, value in step0.items():
        means[(STEP0, columns[task])] = value
        table.cells[(STEP0, columns[task])] = f"{100 * value:.1f}"
    table.notes.append(f"{STEP0}: test score of the runs' evaluation before their first step (the untrained model).")


def row_label(method: str) -> str:
    """The label of a table row: the optimizer's config name, or its ROW_LABELS entry."""
    return ROW_LABELS.get(method, method)


def _cells(table: Table, bold: tuple[str, str], dagger: str) -> list[list[str]]:
    rows = []
    for method in table.rows:
        line = [row_label(method)]
        for column in table.columns:
            text = table.cells.get((method, column), MISSING)
            if (method, column) in table.bold:
                text = f"{bold[0]}{text}{bold[1]}"
            if (method, column) in table.flagged:
                text += dagger
            line.append(text)
        rows.append(line)
    return rows


def markdown_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table (plain Python: no tabulate needed).

    ``align`` gives one character per column, ``l`` or ``r``; default: first left, others right.
    """
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |" for line in lines)


def to_markdown(table: Table, points: bool = True) -> str:
    """The table as markdown: a ``Table:`` caption line, the table, one line per note and,
    with ``points``, the grid point chosen for each cell with its dev mean."""
    body = markdown_table(["method", *table.columns], _cells(table, ("**", "**"), DAGGER))
    parts = [f"Table: {table.caption}", body, "\n".join(table.notes)]
    if points and table.selection is not None:
        parts.append(points_markdown(table.selection))
    return "\n\n".join(parts) + "\n"


def points_markdown(selection: pd.DataFrame) -> str:
    """The chosen grid point of each (method, task), with its dev mean ± std, seeds and the grid size."""
    rows = []
    for _, r in selection.iterrows():
        rows.append([r["optimizer"], r["task"], r["point"], f"{cell_text(r['dev_mean'], r['dev_std'], r['n'])}",
                     str(int(r["n"])), str(int(r["n_failed"])), str(int(r["n_points"]))])
    order = {m: i for i, m in enumerate(ordered(selection["optimizer"], METHOD_ORDER))}
    tasks = {t: i for i, t in enumerate(ordered(selection["task"], TASK_ORDER))}
    rows.sort(key=lambda row: (order[row[0]], tasks[row[1]]))
    header = ["method", "task", "chosen point", "dev mean ± std", "seeds", "failed there", "grid points"]
    return "Selected points (by mean dev metric):\n\n" + markdown_table(header, rows, "lllrrrr")


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials, and write ± † — as math/text commands."""
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$").replace(DAGGER, r"$^\dagger$").replace(MISSING, "---")


def to_latex(table: Table) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``), best per column in ``\\textbf``.

    Written in plain Python rather than ``Styler.to_latex`` so no jinja2 is needed.
    """
    rows = []
    for method in table.rows:
        cells = [latex_escape(row_label(method))]
        for column in table.columns:
            text = latex_escape(table.cells.get((method, column), MISSING))
            if (method, column) in table.bold:
                text = rf"\textbf{{{text}}}"
            if (method, column) in table.flagged:
                text += r"$^\dagger$"
            cells.append(text)
        rows.append(" & ".join(cells) + r" \\")
    header = " & ".join(latex_escape(c) for c in ["Method", *table.columns]) + r" \\"
    notes = " ".join(latex_escape(n) for n in table.notes)
    return "\n".join([
        f"% {table.caption}",
        r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.caption)}}}",
        r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule", header, r"\midrule", *rows,
        r"\bottomrule", r"\end{tabular}", rf"\par\smallskip{{\footnotesize {notes}}}", r"\end{table}", "",
    ])


def to_csv(table: Table, path: str | Path) -> Path:
    """The numbers behind the table, one row per cell (selection columns), after a ``# caption`` line.

    Read it back with ``pd.read_csv(path, comment="#")``.
    """
    path = Path(path)
    frame = table.selection.copy()
    frame["cell"] = [table.cells.get((r.optimizer, c), "") for r, c in
                     zip(frame.itertuples(), _column_names(table, frame))]
    frame["flagged"] = [(r.optimizer, c) in table.flagged for r, c in zip(frame.itertuples(), _column_names(table, frame))]
    frame["bold"] = [(r.optimizer, c) in table.bold for r, c in zip(frame.itertuples(), _column_names(table, frame))]
    frame = frame.dropna(axis=1, how="all")  # knob columns of methods outside this table
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(f"# {table.caption}\n")
        frame.to_csv(handle, index=False)
    return path


def _column_names(table: Table, frame: pd.DataFrame) -> list[str]:
    tasks = [c.split(" (")[0] for c in table.columns]
    lookup = dict(zip(tasks, table.columns))
    return [lookup.get(t, t) for t in frame["task"]]
