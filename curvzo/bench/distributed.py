"""Steps per second of one job over one process and over several (``make bench`` runs it after the step bench).

    python -m curvzo.bench.distributed --out outputs/bench --data-dir ../shared/data
    python -m curvzo.bench.distributed --out outputs/bench-quick --model tiny-opt --steps 4

Runs the same MeZO job three ways, each a real ``curvzo-run`` (so the plumbing is measured with the job):
one process with all the threads, ``torchrun`` data parallelism and ``torchrun`` query parallelism with one
thread per process, and reports the optimizer's seconds per step (``sec_per_step`` of the summary, without
loading or evaluation) and the speed-up over one process. On a 2-core CPU two processes mostly prove the
plumbing: each gets one core instead of two threads. Writes OUT/distributed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from curvzo.bench.report import machine_info


def arms(processes: int, threads: int) -> list[tuple[str, list[str], dict]]:
    """(label, command prefix, environment) of each way to run the job."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m",
                "curvzo.run"]
    one = [sys.executable, "-m", "curvzo.run"]
    return [
        (f"1 process x {threads} threads", one, {"OMP_NUM_THREADS": str(threads)}),
        (f"{processes} processes x {max(1, threads // processes)} thread (data)", [*launcher, "distributed.mode=data"],
         {"OMP_NUM_THREADS": str(max(1, threads // processes))}),
        (f"{processes} processes x {max(1, threads // processes)} thread (query)", [*launcher, "distributed.mode=query"],
         {"OMP_NUM_THREADS": str(max(1, threads // processes))}),
    ]


def measure(command: list[str], env: dict, overrides: list[str], run_dir: Path) -> dict:
    proc = subprocess.run([*command, *overrides, f"hydra.run.dir={run_dir}"], env={**os.environ, **env},
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[-3:])} failed: {proc.stderr.strip().splitlines()[-1:]}")
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return {"sec_per_step": summary["sec_per_step"], "steps": summary["steps"],
            "fingerprint": summary["final_weights_fingerprint"]}


def to_markdown(result: dict) -> str:
    lines = [(f"# One job over several processes ({result['model']}, {result['task']}, batch {result['batch_size']}, "
             f"MeZO, {result['steps']} steps)"), "", f"Command: `{result['command']}`", "",
             "| run | s/step | steps/s | speed-up |", "| --- | ---: | ---: | ---: |"]
    base = result["rows"][0]["sec_per_step"]
    for row in result["rows"]:
        lines.append(f"| {row['label']} | {row['sec_per_step']:.3f} | {1 / row['sec_per_step']:.2f} | "
                     f"{base / row['sec_per_step']:.2f}x |")
    lines += ["", ("s/step: optimizer steps only (forward passes, perturbations, update, the exchange of losses); "
                   "loading and evaluation excluded. Data parallelism differs from one process only by the batch "
                   "shapes its kernels see (same trajectory to float rounding); query parallelism is bit-identical."),
              "", "Machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items() if v is not None), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m curvzo.bench.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for distributed.json and distributed.md")
    parser.add_argument("--model", default="smollm2-135m", help="conf/model/<name>.yaml (default smollm2-135m)")
    parser.add_argument("--task", default="sst2", help="conf/task/<name>.yaml (default sst2)")
    parser.add_argument("--batch-size", type=int, default=16, help="training examples per step (default 16, MeZO)")
    parser.add_argument("--steps", type=int, default=8, help="steps per run (default 8)")
    parser.add_argument("--processes", type=int, default=2, help="processes of the parallel runs (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads in all (default: the cores)")
    parser.add_argument("--data-dir", default="../shared/data", help="paths.data_dir (default ../shared/data)")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.steps, args.processes, args.threads) < 1:
        parser.error("--batch-size, --steps, --processes and --threads must be positive integers")
    overrides = [f"model={args.model}", f"task={args.task}", "optimizer=mezo", "budget=smoke", "logger=jsonl",
                 f"paths.data_dir={args.data_dir}", f"budget.batch_size={args.batch_size}",
                 f"budget.max_steps={args.steps}", f"budget.eval_every={args.steps}",
                 f"budget.num_train={4 * args.batch_size}", "budget.num_dev=8", "budget.num_test=8"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="curvzo-bench-") as scratch:
        for i, (label, command, env) in enumerate(arms(args.processes, args.threads)):
            print(f"measuring {label} ...", file=sys.stderr, flush=True)
            try:
                rows.append({"label": label, **measure(command, env, overrides, Path(scratch) / str(i))})
            except RuntimeError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
    command = " ".join(["python -m curvzo.bench.distributed", *(argv if argv is not None else sys.argv[1:])])
    result = {"machine": machine_info(), "command": command, "model": args.model, "task": args.task,
              "batch_size": args.batch_size, "steps": args.steps, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "distributed.md").write_text(to_markdown(result), encoding="utf-8")
    print(f"wrote {args.out / 'distributed.json'} and {args.out / 'distributed.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
