"""Forward passes to a target loss on a quadratic with heterogeneous block curvature.

    curvzo-synthetic-curvature                     # 4 methods x 4 lrs x 5 seeds, ~10 min on one core
    curvzo-synthetic-curvature --seeds 3 --csv synthetic.csv

The problem is L(theta) = 1/2 sum_b h_b ||theta_b||^2 over ``--blocks`` blocks of ``--block-size``
coordinates, with h_b log-uniform over two decades (the stiff blocks carry most of the loss),
theta_0 ~ N(0, I). Each method (MeZO and the three CurvZO presets, with the hyperparameters of
``conf/optimizer/<name>.yaml``) runs at every learning rate of the grid; the table reports, per
method, the learning rate with the fewest median forward passes to reach ``--target`` x L(theta_0)
and those forward passes over seeds. Runs that do not reach the target within ``--max-steps``
count as infinite.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from curvzo.optim import CurvZO, MeZO
from curvzo.run import CONFIG_DIR

METHODS = ("mezo", "curvzo_uniform", "curvzo_fixed", "curvzo")
NOT_CONSTRUCTOR_KEYS = ("_target_", "lr", "seed")


def preset_kwargs(name: str) -> dict:
    """The constructor keywords of conf/optimizer/<name>.yaml (without lr and seed)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"optimizer={name}", "optimizer.lr=1", "model=tiny-opt"])
    node = OmegaConf.to_container(cfg.optimizer, resolve=True)
    return {k: v for k, v in node.items() if k not in NOT_CONSTRUCTOR_KEYS}


def make_problem(blocks: int, block_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    curvature = torch.logspace(-1, 1, blocks, dtype=torch.float64)[torch.randperm(blocks, generator=g)]
    params = [torch.nn.Parameter(torch.randn(block_size, generator=g)) for _ in range(blocks)]

    def loss() -> torch.Tensor:
        return 0.5 * sum(h * p.double().square().sum() for h, p in zip(curvature.tolist(), params))

    return params, loss


def forward_passes_to_target(method: str, kwargs: dict, lr: float, seed: int, args) -> float:
    params, loss = make_problem(args.blocks, args.block_size, seed)
    optimizer_cls = MeZO if method == "mezo" else CurvZO
    opt = optimizer_cls(params, lr=lr, seed=seed, **kwargs)
    with torch.no_grad():
        target = args.target * float(loss())
    for _ in range(args.max_steps):
        opt.step(loss)
        with torch.no_grad():
            current = float(loss())
        if not math.isfinite(current) or current > 1e6 * target / args.target:
            return math.inf  # diverged
        if current <= target:
            return float(opt.forward_passes)
    return math.inf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--target", type=float, default=0.1, help="fraction of the initial loss to reach")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=6000)
    parser.add_argument("--lrs", type=float, nargs="+", default=[2.5e-4, 5e-4, 1e-3, 2e-3])
    parser.add_argument("--csv", help="write every (method, lr, seed) result here")
    args = parser.parse_args(argv)
    rows = []
    for method in METHODS:
        kwargs = preset_kwargs(method)
        for lr in args.lrs:
            for seed in range(args.seeds):
                passes = forward_passes_to_target(method, kwargs, lr, seed, args)
                rows.append({"method": method, "lr": lr, "seed": seed, "forward_passes": passes})
    runs = pd.DataFrame(rows)
    if args.csv:
        runs.to_csv(args.csv, index=False)
    print(summarise(runs).to_string(index=False))
    return 0


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method: the lr with the lowest median forward passes, and the spread over seeds there."""
    out = []
    for method, group in runs.groupby("method", sort=False):
        medians = group.groupby("lr")["forward_passes"].median()
        best_lr = float(medians.idxmin())
        passes = group[group["lr"] == best_lr]["forward_passes"].tolist()
        finite = [p for p in passes if math.isfinite(p)]
        out.append({
            "method": method,
            "best_lr": best_lr,
            "median_forward_passes": statistics.median(passes),
            "min": min(passes),
            "max": max(passes),
            "reached": f"{len(finite)}/{len(passes)}",
        })
    table = pd.DataFrame(out)
    baseline = table.loc[table["method"] == "mezo", "median_forward_passes"]
    if len(baseline):
        table["vs_mezo"] = table["median_forward_passes"] / float(baseline.iloc[0])
    return table


if __name__ == "__main__":
    sys.exit(main())
