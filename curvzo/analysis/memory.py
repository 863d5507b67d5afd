"""Cost table per (model, peft, method): peak memory, optimizer state, forward passes and time.

    from curvzo.analysis.memory import memory_table, to_markdown
    print(to_markdown(memory_table(runs)))

Means over the finished runs (every grid point and seed: the cost of a method does not depend
on which lr won). ``peak_mem_kind`` says what was measured — ``cuda_allocated`` (torch's peak
allocation on the GPU) or ``cpu_peak_rss`` (the process's peak resident set on CPU, which
includes Python and the libraries) — and numbers of different kinds are never averaged together.
"""

from __future__ import annotations

import math

import pandas as pd

from curvzo.analysis.tables import METHOD_ORDER, markdown_table, ordered

KEYS = ["model", "peft", "optimizer", "peak_mem_kind"]


def memory_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, peft, optimizer, peak_mem_kind): n, peak_mem_gb, state_mb,
    forward_passes_per_step, sec_per_forward (means over the finished runs)."""
    done = runs[runs["status"] == "finished"].copy()
    done["peak_mem_kind"] = done["peak_mem_kind"].fillna("unknown")
    if done.empty:
        return pd.DataFrame(columns=KEYS + ["n", "peak_mem_gb", "state_mb", "forward_passes_per_step",
                                            "sec_per_forward"])
    table = (done.groupby(KEYS, dropna=False)
             .agg(n=("run_dir", "count"), peak_mem_gb=("peak_mem_gb", "mean"), state_mb=("state_mb", "mean"),
                  forward_passes_per_step=("forward_passes_per_step", "mean"),
                  sec_per_forward=("sec_per_forward", "mean"))
             .reset_index())
    rank = {m: i for i, m in enumerate(ordered(table["optimizer"], METHOD_ORDER))}
    return (table.assign(_rank=table["optimizer"].map(rank))
            .sort_values(["model", "peft", "_rank", "peak_mem_kind"]).drop(columns="_rank").reset_index(drop=True))


def _num(value, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def to_markdown(table: pd.DataFrame) -> str:
    """The cost table as markdown, after a caption line."""
    caption = (f"Table: cost per (model, peft, method), means over {int(table['n'].sum())} finished runs; "
               "peak memory as measured (kind: cuda_allocated = torch peak GPU allocation, "
               "cpu_peak_rss = process peak resident set); optimizer state in MiB.")
    rows = [[r["model"], r["peft"], r["optimizer"], str(int(r["n"])), _num(r["peak_mem_gb"], ".2f"),
             r["peak_mem_kind"], _num(r["state_mb"], ".3g"), _num(r["forward_passes_per_step"], ".3g"),
             _num(r["sec_per_forward"], ".3g")] for _, r in table.iterrows()]
    header = ["model", "peft", "method", "runs", "peak memory (GB)", "kind", "optimizer state (MiB)",
              "forward passes / step", "s / forward pass"]
    return f"{caption}\n\n{markdown_table(header, rows, 'lllrrlrrr')}\n"
