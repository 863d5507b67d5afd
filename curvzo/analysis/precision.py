"""Half precision, exactly: does a bfloat16 MeZO run learn like the float32 one (issue 16, optimizers.md §1.3-1.4)?

    curvzo-precision --out analysis/results/precision-smollm2-sst2            # ~1.3 h on 2 CPU cores
    curvzo-precision --out outputs/precision --steps 20 --skip-model              # the plain-tensor part only

Two parts, both written to OUT/precision.md and OUT/precision.json:

1. Drift on a plain tensor (seconds): MeZO with lr = 1e-30 (the update is nothing) on 200k weights
   ~ N(0, 0.02²) for ``--drift-steps`` steps; ‖θ_T − θ_0‖ / ‖θ_0‖ and the fraction of weights that
   moved, for the in-place probe and the exact probe, in float32, bfloat16 and float16.
2. SmolLM2-135M on SST-2 (``--data-dir``), MeZO, the same seed, lr and data, ``--steps`` steps, three
   arms: float32; bfloat16 with the in-place probe and round-to-nearest updates (the official codes);
   bfloat16 with the exact probe and stochastic rounding (ours). Each arm runs twice through
   ``curvzo-run``: once to train (dev and test every ``--eval-every`` steps), once at lr = 1e-30 with
   its weights checkpointed at the end, from which the drift of the real model is measured. The dev
   accuracy curves go to OUT/dev_curves.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from curvzo.optim import MeZO

ARMS = {  # name: (dtype, probe, update_rounding)
    "float32": ("float32", "exact", "auto"),
    "bfloat16 in-place, nearest": ("bfloat16", "inplace", "nearest"),
    "bfloat16 exact, stochastic": ("bfloat16", "exact", "auto"),
}
TINY_LR = 1e-30  # "lr -> 0": every update rounds away, so whatever moves the weights is the probe


def plain_tensor_drift(steps: int, numel: int = 200_000) -> list[dict]:
    """The issue's measurement: how far probes alone move the weights, per probe and dtype."""
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for probe in ("inplace", "exact"):
            g = torch.Generator().manual_seed(0)
            start = (torch.randn(numel, generator=g) * 0.02).to(dtype)
            theta = torch.nn.Parameter(start.clone())
            opt = MeZO([theta], lr=TINY_LR, eps=1e-3, seed=0, probe=probe, update_rounding="nearest")
            losses = iter(float(x) for x in torch.rand(2 * steps, generator=g))
            for _ in range(steps):
                opt.step(lambda: torch.tensor(next(losses)))
            moved = theta.detach().double() - start.double()
            rows.append({"dtype": str(dtype).removeprefix("torch."), "probe": probe, "steps": steps,
                         "relative_drift": float(moved.norm() / start.double().norm()),
                         "moved_fraction": float((moved != 0).double().mean())})
    return rows


def curvzo_run(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "curvzo.run", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"curvzo-run failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")


def run_arm(name: str, out: Path, opts: argparse.Namespace) -> dict:
    """Train one arm, then its lr -> 0 twin; return the curve, the test accuracies, s/step and the drift."""
    dtype, probe, rounding = ARMS[name]
    common = [f"model={opts.model}", "task=sst2", "optimizer=mezo", "budget=cpu_local", f"seed={opts.seed}",
              f"paths.data_dir={opts.data_dir}", f"model.dtype={dtype}", f"optimizer.probe={probe}",
              f"optimizer.update_rounding={rounding}", f"budget.max_steps={opts.steps}", "budget.max_forward_passes=null",
              "budget.eval_every_forward_passes=null", f"budget.num_dev={opts.num_dev}",
              f"budget.num_test={opts.num_test}", "logger=jsonl"]
    slug = name.replace(" ", "_").replace(",", "")
    train_dir, still_dir = out / "runs" / slug, out / "runs" / f"{slug}_lr0"
    for directory, extra in ((train_dir, [f"optimizer.lr={opts.lr}", f"budget.eval_every={opts.eval_every}"]),
                             (still_dir, [f"optimizer.lr={TINY_LR}", f"budget.eval_every={opts.steps}",
                                          "checkpoint.weights=true", f"checkpoint.every={opts.steps}"])):
        if not (directory / "summary.json").is_file():
            print(f"running {directory.name} ...", file=sys.stderr, flush=True)
            curvzo_run([*common, *extra, f"hydra.run.dir={directory}"])
    summary = json.loads((train_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["eval/dev_acc"], r["eval/test_acc"]) for r in rows if "eval/dev_acc" in r]
    return {"arm": name, "dtype": dtype, "probe": probe, "update_rounding": rounding, "curve": curve,
            "test_acc_final": curve[-1][2], "dev_acc_final": curve[-1][1],
            "test_acc_at_best_dev": summary["test_at_best_dev"].get("test_acc"),
            "sec_per_step": summary["sec_per_step"], "drift": model_drift(still_dir, opts.model, dtype)}


def model_drift(run_dir: Path, model: str, dtype: str) -> dict:
    """‖θ_T − θ_0‖ / ‖θ_0‖ of the lr -> 0 run, from its checkpointed weights and a fresh load of the model."""
    from hydra import compose, initialize_config_dir

    from curvzo.checkpoint import load_checkpoint
    from curvzo.resume import trainable_parameters
    from curvzo.run import CONFIG_DIR
    from curvzo.utils.instantiate import instantiate

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", f"model.dtype={dtype}", "optimizer=none"])
    start = trainable_parameters(instantiate(cfg.model, "model").model)
    tensors = load_checkpoint(run_dir / "checkpoint.safetensors").tensors
    moved_sq = total_sq = moved = count = 0.0
    for i, p0 in enumerate(start):
        delta = tensors[f"param.{i}"].double() - p0.detach().double()
        moved_sq += float(delta.square().sum())
        total_sq += float(p0.detach().double().square().sum())
        moved += float((delta != 0).sum())
        count += p0.numel()
    return {"relative_drift": (moved_sq / total_sq) ** 0.5, "moved_fraction": moved / count}


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in results:
        steps, dev, _ = zip(*row["curve"])
        ax.plot(steps, dev, marker="o", label=row["arm"])
    ax.set_xlabel("step")
    ax.set_ylabel("dev accuracy")
    ax.set_title(f"MeZO, {title}, SST-2: one seed, same lr and data")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_markdown(drift: list[dict], results: list[dict], opts: argparse.Namespace, command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"## Probes alone move the weights (MeZO, lr = {TINY_LR}, 200k weights ~ N(0, 0.02²), "
             f"{opts.drift_steps} steps)", "",
             "| dtype | probe | ‖θ_T − θ_0‖ / ‖θ_0‖ | weights moved |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['dtype']} | {r['probe']} | {100 * r['relative_drift']:.3g} % | {100 * r['moved_fraction']:.3g} % |"
              for r in drift]
    if results:
        lines += ["", f"## {opts.model}, SST-2, MeZO, lr {opts.lr}, seed {opts.seed}, {opts.steps} steps, "
                      f"{opts.num_dev} dev / {opts.num_test} test examples", "",
                  "| arm | dev acc (final) | test acc (final) | test acc at best dev | s/step | "
                  f"drift at lr → 0 after {opts.steps} steps | weights moved at lr → 0 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in results:
            lines.append(f"| {r['arm']} | {100 * r['dev_acc_final']:.1f} | {100 * r['test_acc_final']:.1f} | "
                         f"{100 * (r['test_acc_at_best_dev'] or float('nan')):.1f} | {r['sec_per_step']:.2f} | "
                         f"{100 * r['drift']['relative_drift']:.3g} % | {100 * r['drift']['moved_fraction']:.3g} % |")
        lines += ["", "Dev accuracy by step:", "", "| step | " + " | ".join(r["arm"] for r in results) + " |",
                  "| ---: |" + " ---: |" * len(results)]
        for i, (step, _, _) in enumerate(results[0]["curve"]):
            lines.append(f"| {step} | " + " | ".join(f"{100 * r['curve'][i][1]:.1f}" for r in results) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="curvzo-precision", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (runs/, precision.{md,json}, png)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per arm (default 200)")
    parser.add_argument("--lr", type=float, default=1e-4, help="MeZO lr for every arm (default 1e-4, "
                                                                 "conf/model_optimizer/smollm2-135m_mezo_full.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--eval-every", type=int, default=50, help="dev/test every N steps (default 50)")
    parser.add_argument("--num-dev", type=int, default=200, help="dev examples (default 200)")
    parser.add_argument("--num-test", type=int, default=500, help="test examples (default 500)")
    parser.add_argument("--drift-steps", type=int, default=2000, help="plain-tensor drift steps (default 2000)")
    parser.add_argument("--data-dir", default="../shared/data", help="paths.data_dir (default ../shared/data)")
    parser.add_argument("--model", default="smollm2-135m", help="conf/model/<name>.yaml (default smollm2-135m)")
    parser.add_argument("--skip-model", action="store_true", help="only the plain-tensor part")
    opts = parser.parse_args(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["curvzo-precision", *(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()
    drift = plain_tensor_drift(opts.drift_steps)
    results = [] if opts.skip_model else [run_arm(name, opts.out, opts) for name in ARMS]
    if results:
        plot(results, opts.out / "dev_curves.png", opts.model)
    (opts.out / "precision.json").write_text(json.dumps({"command": command, "drift": drift, "arms": results,
                                                         "wall_s": time.perf_counter() - started}, indent=2) + "\n")
    (opts.out / "precision.md").write_text(to_markdown(drift, results, opts, command))
    print(f"wrote {opts.out / 'precision.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
