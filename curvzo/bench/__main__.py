"""The speed and memory benchmark: ``make bench`` / ``make bench-quick OUT=<dir>``.

    python -m curvzo.bench --out outputs/bench                  # SmolLM2-135M, SST-2, batch 16, every ZO method
    python -m curvzo.bench --out outputs/bench --dtypes float32,bfloat16 --probes exact,inplace --methods mezo,curvzo
    python -m curvzo.bench --out outputs/bench-quick --model tiny-opt --methods reference,mezo,curvzo --repeats 2 --steps 2
    python -m curvzo.bench --out outputs/bench-new --compare outputs/bench/bench.json   # + the change against a run
    python -m curvzo.bench --out outputs/bench-gpu --model opt-1.3b-random --in-process   # one process per dtype

Every measurement (inference, the reference MeZO step, each optimizer) runs in a fresh process,
one after another, on the same model and batch (:mod:`curvzo.bench.measure`); ``--in-process`` runs
each dtype's rows in one process instead, loading the model once (exact peaks on CUDA, where the
allocator's counter resets per row; a start costs a GPU machine 15-25 s). The results go to
``OUT/bench.json`` and ``OUT/bench.md`` (and with ``--compare BASE.json``, ``OUT/compare.md``, also printed).
A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from curvzo.bench.report import compare, machine_info, to_markdown, with_ratios
from curvzo.optim.probe import PROBES

# Every forward-only method; fo_adam (backpropagation) is not a ZO step and is left out.
ZO_METHODS = ("mezo", "curvzo", "curvzo_uniform", "curvzo_fixed", "curvzo_sparse", "curvzo_variance_optimal",
              "sparse_mezo", "hizoo", "dizo", "loren", "zo_sgd_momentum", "zo_adam")
DEFAULT_METHODS = ("reference", *ZO_METHODS)


class BenchError(Exception):
    """A measurement process failed; the message is its last line of output."""


def _child(spec: dict, what: str):
    """Run :mod:`curvzo.bench.measure` on ``spec`` in a child process and return its JSON line."""
    proc = subprocess.run([sys.executable, "-m", "curvzo.bench.measure", json.dumps(spec)], capture_output=True,
                          text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("{", "["))]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        # the child speaks in config keys; the user of this command sets them through its flags
        raise BenchError(f"{what}: {last.replace('set paths.data_dir', 'pass --data-dir')}")
    return json.loads(lines[-1])


def run_measurement(method: str, overrides: list[str], repeats: int, steps: int, probe: str | None = None) -> dict:
    """Run :func:`curvzo.bench.measure.measure` in a child process and return its row."""
    return _child({"method": method, "overrides": overrides, "repeats": repeats, "steps": steps, "probe": probe},
                  method)


def run_plan(plan: list[tuple[str, str | None]], overrides: list[str], repeats: int, steps: int) -> list[dict]:
    """Run :func:`curvzo.bench.measure.measure_plan` (inference, then ``plan``) in one child process."""
    return _child({"plan": plan, "overrides": overrides, "repeats": repeats, "steps": steps}, "inference")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m curvzo.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for bench.json and bench.md")
    parser.add_argument("--model", default="smollm2-135m", help="conf/model/<name>.yaml (default smollm2-135m)")
    parser.add_argument("--task", default="sst2", help="conf/task/<name>.yaml (default sst2)")
    parser.add_argument("--batch-size", type=int, default=16, help="training examples per step (default 16, MeZO)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated: reference and/or optimizer config names, each optionally with its probe "
                             "(mezo:inplace); default: all ZO methods")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes (median; default 5)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (median; default 5)")
    parser.add_argument("--data-dir", default="../shared/data", help="paths.data_dir (default ../shared/data)")
    parser.add_argument("--dtypes", default="",
                        help="comma-separated model dtypes, each measured in full (e.g. float32,bfloat16; default: the "
                             "model config's)")
    parser.add_argument("--probes", default="exact",
                        help="comma-separated ZO probes for the methods named without one: exact and/or inplace "
                             "(default exact)")
    parser.add_argument("--compare", type=Path, metavar="BASE.json",
                        help="an earlier bench.json: also write OUT/compare.md (and print it) with each row's change")
    parser.add_argument("--in-process", action="store_true",
                        help="measure each dtype's rows in one process, loading the model once (the GPU bench)")
    parser.add_argument("overrides", nargs="*", help="further config overrides, e.g. model.dtype=bfloat16")
    args = parser.parse_args(argv)
    if args.compare is not None:
        try:
            args.base = json.loads(args.compare.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            parser.error(f"--compare {args.compare}: not a bench.json ({err})")
        if not isinstance(args.base, dict) or not isinstance(args.base.get("rows"), list):
            parser.error(f"--compare {args.compare}: not a bench.json (no list of rows)")
    if args.batch_size < 1 or args.repeats < 1 or args.steps < 1:
        parser.error("--batch-size, --repeats and --steps must be positive integers")
    args.probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    if not args.probes or any(p not in PROBES for p in args.probes):
        parser.error(f"--probes takes {' and/or '.join(PROBES)}, got {','.join(args.probes) or 'nothing'}")
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()] or [None]
    args.plan = []  # (method, probe): the rows after each dtype's inference row
    for token in (t.strip() for t in args.methods.split(",") if t.strip()):
        method, _, probe = token.partition(":")
        if probe and probe not in PROBES:
            parser.error(f"--methods: {token!r} names probe {probe!r}; choose {' or '.join(PROBES)}")
        probes = [None] if method == "reference" else [probe] if probe else args.probes
        args.plan += [(method, p) for p in probes]
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure, then write OUT/bench.json and OUT/bench.md; exit code 2 when a measurement failed
    (the others are still measured and written, the failures listed)."""
    args = parse_args(argv)
    overrides = [f"model={args.model}", f"task={args.task}", "peft=full", f"paths.data_dir={args.data_dir}",
                 f"budget.batch_size={args.batch_size}", *args.overrides]
    rows, failed = [], []
    for dtype in args.dtypes:  # each dtype is a full set of rows: its own inference yardstick
        these = [*overrides, f"model.dtype={dtype}"] if dtype else overrides
        if args.in_process:
            print(f"measuring {len(args.plan) + 1} rows in one process{f' [{dtype}]' if dtype else ''} ...",
                  file=sys.stderr, flush=True)
            try:
                measured = run_plan(args.plan, these, args.repeats, args.steps)
            except BenchError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            if "error" in measured[0]:  # every ratio needs the inference row
                print(f"error: inference: {measured[0]['error']}", file=sys.stderr)
                return 2
            for row in measured:
                if "error" in row:
                    failed.append(f"{row['method']}: {row['error']}")
                    print(f"error: {failed[-1]}", file=sys.stderr)
                else:
                    rows.append(row)
            continue
        for method, probe in [("inference", None), *args.plan]:
            label = method + (f" ({probe})" if probe else "") + (f" [{dtype}]" if dtype else "")
            print(f"measuring {label} ...", file=sys.stderr, flush=True)
            try:
                rows.append(run_measurement(method, these, args.repeats, args.steps, probe))
            except BenchError as err:
                if method == "inference":  # every ratio needs it
                    print(f"error: {err}", file=sys.stderr)
                    return 2
                failed.append(str(err))
                print(f"error: {err}", file=sys.stderr)  # the other methods are still measured
    command = " ".join(["python -m curvzo.bench", *(argv if argv is not None else sys.argv[1:])])
    result = {"machine": machine_info(), "command": command, "model": args.model, "task": args.task,
              "batch_size": args.batch_size, "repeats": args.repeats, "steps": args.steps, "in_process": args.in_process,
              "overrides": overrides, "rows": with_ratios(rows), "failed": failed}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "bench.md").write_text(to_markdown(result), encoding="utf-8")
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}", file=sys.stderr)
    if args.compare is not None:
        text = compare(result, args.base)
        (args.out / "compare.md").write_text(text, encoding="utf-8")
        print(text)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
