"""Side-by-side step times in one process: the comparison a noisy machine allows.

    python -m curvzo.bench.ab --dtype bfloat16 --arms mezo:exact,mezo:inplace
    python -m curvzo.bench.ab --dtype float32 --arms mezo,mezo:exact:directions=rademacher --steps 7

Loads the model and the batch once, builds one optimizer per arm (``method[:probe][:key=value...]``,
extra keys go to ``optimizer.<key>``), and times their steps in turn, arm after arm, so every arm
sees the same machine state; prints the forward time and each arm's median step time and ratio to
the first arm. The weights drift a little between steps (each arm updates them): this measures cost,
not training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from curvzo.bench.measure import compose_config, timed
from curvzo.data import load_splits
from curvzo.job import optimizer_kwargs, prepare_optimizer
from curvzo.peft_modes import parameter_groups
from curvzo.train import training_batches
from curvzo.utils.instantiate import instantiate


def parse_arm(arm: str) -> tuple[str, list[str]]:
    """'mezo:inplace:directions=rademacher' -> ('mezo', ['optimizer.probe=inplace', 'optimizer.directions=rademacher'])."""
    method, *rest = arm.split(":")
    overrides = [f"optimizer.{item}" if "=" in item else f"optimizer.probe={item}" for item in rest]
    return method, overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m curvzo.bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("--arms", required=True, help="comma-separated method[:probe][:key=value]")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--dtype", default=None, help="model.dtype (default: the model config's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per arm (median; default 5)")
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args(argv)
    base = [f"model={args.model}", f"task={args.task}", "peft=full", f"paths.data_dir={args.data_dir}",
            *([f"model.dtype={args.dtype}"] if args.dtype else [])]
    cfg = compose_config([*base, "optimizer=mezo"])
    task = instantiate(cfg.task, "task")
    splits = load_splits(task, cfg.paths.data_dir, cfg.budget.num_train, cfg.budget.num_dev, cfg.budget.num_test,
                         cfg.data_seed)
    loaded = instantiate(cfg.model, "model")
    model = loaded.model.eval()
    batch = task.objective.training_batch(next(training_batches(splits.train, cfg.budget.batch_size, cfg.seed)),
                                          loaded.tokenizer, cfg.model.max_length).to(loaded.device)

    def closure() -> torch.Tensor:
        with torch.inference_mode():
            return task.objective.loss(model, batch)

    forward = statistics.median(timed(closure, 5, loaded.device))
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    optimizers = []
    for arm in arms:
        method, overrides = parse_arm(arm)
        arm_cfg = compose_config([*base, f"optimizer={method}", *overrides])
        if arm_cfg.optimizer.get("lr") is None:
            arm_cfg.optimizer.lr = 1e-6  # a step costs the same at any lr
        opt = instantiate(optimizer_kwargs(arm_cfg), "optimizer")(parameter_groups(model, 0.0))
        prepare_optimizer(opt, model, arm_cfg.direction_workers)
        opt.step(closure)  # warm-up
        optimizers.append(opt)
    times: list[list[float]] = [[] for _ in arms]
    for _ in range(args.steps):
        for i, opt in enumerate(optimizers):
            start = time.perf_counter()
            opt.step(closure)
            times[i].append(time.perf_counter() - start)
    medians = [statistics.median(t) for t in times]
    rows = [{"arm": arm, "step_s": m, "vs_first": m / medians[0], "step_over_passes_forward":
             m / (opt.passes_per_step * forward)} for arm, m, opt in zip(arms, medians, optimizers)]
    print(json.dumps({"model": args.model, "dtype": args.dtype, "forward_s": forward, "rows": rows}))
    for row in rows:
        print(f"{row['arm']:40s} step {row['step_s']:.3f} s  x{row['vs_first']:.3f} vs first  "
              f"{row['step_over_passes_forward']:.2f}x its forward passes (forward {forward:.3f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
