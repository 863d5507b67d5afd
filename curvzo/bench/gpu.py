"""The one-command GPU bench: ``make bench-gpu`` (issue 21).

    python -m curvzo.bench.gpu --out outputs/bench-gpu [--data-dir ../shared/data] [--models opt-1.3b-random,...]

On a CUDA machine: the bench (:mod:`curvzo.bench`) in bfloat16 on OPT-1.3B- and OPT-2.7B-sized random models for
every ZO method (3 timed steps each, each model's rows in one process: a process start costs 15-25 s on the
H200 machine, and one per row took 400 s for OPT-1.3B alone), then the exactness tests marked ``cuda`` (the files in ``CUDA_TEST_FILES``,
on the GPU), all written to ``OUT/bench-gpu.md``. Without CUDA it says so in one line and exits 2, measuring nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from curvzo.bench.__main__ import ZO_METHODS
from curvzo.bench.__main__ import main as bench_main

MODELS = ("opt-1.3b-random", "opt-2.7b-random")  # random weights at OPT-1.3B / 2.7B sizes: no download
REPO_ROOT = Path(__file__).resolve().parents[2]
# the test files parametrized over tests.helpers.DEVICES: only their `cuda` cases run here (tests/test_bench.py keeps
# this list equal to the files that use DEVICES); naming them spares collecting the whole suite on the GPU machine
CUDA_TEST_FILES = ("tests/test_exact_probe.py", "tests/test_rounding.py")


def cuda_tests(out: Path) -> tuple[int, str]:
    """Run the tests marked ``cuda`` (they need a repository checkout); their exit code and last line."""
    missing = [name for name in CUDA_TEST_FILES if not (REPO_ROOT / name).is_file()]
    if missing:
        return 2, f"{', '.join(missing)} not found under {REPO_ROOT}: the CUDA tests run from a repository checkout"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                           *CUDA_TEST_FILES], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    (out / "cuda-tests.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else "no output"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m curvzo.bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for bench-gpu.md and one folder per model")
    parser.add_argument("--data-dir", default="../shared/data", help="paths.data_dir (default ../shared/data)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated conf/model names")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method (median; default 3)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"error: bench-gpu needs a CUDA device, and torch {torch.__version__} sees none here "
              f"(torch.cuda.is_available() is False); nothing was measured", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    parts, failed = [f"# GPU bench: {torch.cuda.get_device_name(0)}", ""], False
    for model in (m.strip() for m in args.models.split(",") if m.strip()):
        code = bench_main(["--out", str(args.out / model), "--model", model, "--dtypes", "bfloat16",
                           "--methods", ",".join(ZO_METHODS), "--repeats", "3", "--steps", str(args.steps),
                           "--data-dir", args.data_dir, "--in-process"])
        failed |= code != 0
        parts += [f"## {model}", "", (args.out / model / "bench.md").read_text(encoding="utf-8")]
    code, summary = cuda_tests(args.out)
    failed |= code != 0
    parts += ["## CUDA exactness tests", "", f"`pytest -m cuda {' '.join(CUDA_TEST_FILES)}`: {summary}", ""]
    (args.out / "bench-gpu.md").write_text("\n".join(parts), encoding="utf-8")
    print(f"wrote {args.out / 'bench-gpu.md'}", file=sys.stderr)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
