"""Entrypoint: ``curvzo-run`` (= ``python -m curvzo.run``), a Hydra app.

    curvzo-run                                            # the default job (SmolLM2-135M, tweets, MeZO)
    curvzo-run model=tiny-opt task=sst2 budget=smoke paths.data_dir=../shared/data
    curvzo-run -m optimizer.lr=1e-6,1e-7 seed=0,1         # a sweep, one job after another
    curvzo-run --cfg job                                  # print the composed config
    torchrun --standalone --nproc_per_node=2 -m curvzo.run model=tiny-opt task=sst2 budget=smoke \
        paths.data_dir=../shared/data                     # one job over two processes (README: Many GPUs)

Outputs go to Hydra's run directory (``hydra.run.dir``): config.yaml, metrics.jsonl,
trajectory.jsonl (ZO methods), summary.json, status.json and, when checkpointing,
checkpoint.safetensors. A single run that fails on bad input leaves no directory behind; a failed
job of a sweep leaves status.json with its error, and the other jobs go on.

Exit codes: 0 finished; 2 bad input (one line on stderr); 3 stopped after ``max_nonfinite_streak``
non-finite losses in a row (diverged); 75 stopped by a signal after a checkpoint (run the same
command again to continue); 130 stopped at once (Ctrl-C while loading, or a second signal);
1 anything else. Under torchrun every rank exits with the job's code; rank 0 alone writes files.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from curvzo import distributed
from curvzo.command_line import command_line_problem
from curvzo.config_schema import LAUNCH_TIME_VARIABLE
from curvzo.errors import CurvzoError, RunDirectoryError
from curvzo.preemption import HARD_STOP_EXIT_CODE, Preempted, hand_over
from curvzo.sweep_summary import print_sweep_reports

log = logging.getLogger("curvzo")
DIVERGED_EXIT_CODE = 3  # the run stopped after max_nonfinite_streak non-finite losses (status stopped_nonfinite)

# The configs ship inside the package (curvzo/conf; conf/ in a checkout links there), so an installed wheel
# finds them through Hydra's package search path from any directory. CONFIG_DIR is the same tree on disk.
CONFIG_PACKAGE = "pkg://curvzo.conf"
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def main() -> None:
    """Console entry point: check the command line (one line per problem), then hand over to Hydra."""
    problem = command_line_problem(sys.argv[1:], CONFIG_DIR)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    world = distributed.start()  # under torchrun: join the group before Hydra names the run directory
    if world.active:
        os.environ[LAUNCH_TIME_VARIABLE] = distributed.broadcast(datetime.now().isoformat())  # one directory
        if not world.is_main:  # Hydra's own files and run.log come from rank 0
            sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    finished = False
    try:
        hydra_app()
        finished = True
    finally:
        if world.is_main:
            print_sweep_reports()  # a -m sweep's closing summary, also when a job failed
        distributed.stop(finished=finished)


@hydra.main(version_base="1.3", config_path=CONFIG_PACKAGE, config_name="config")
def hydra_app(cfg: DictConfig) -> float | None:
    """Run one job; a bad config, data file or model gives one line on stderr, not a traceback.
    Returns the dev metric of the selected model (``sweep_objective``), the value a sweeper tunes."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    single = hydra_cfg.mode == RunMode.RUN
    main = distributed.start().is_main  # (a SLURM task starts here); the other ranks report through rank 0
    try:
        # heavy imports after Hydra has parsed the command line
        from curvzo.job import run_job

        summary = run_job(cfg, output_dir)
    except Preempted as err:
        log.warning("%s", err)
        hand_over(err)  # submitit's handler requeues the job, or we exit with REQUEUE_EXIT_CODE
        raise
    except KeyboardInterrupt:
        # Ctrl-C before training started, or a second signal during it: no step boundary was waited for
        if main:
            print("error: interrupted at once; run the same command again to continue from the last checkpoint, if "
                  "one was written", file=sys.stderr)
            record_failure(output_dir, None, remove_if_empty=single)
        sys.exit(HARD_STOP_EXIT_CODE)
    except RunDirectoryError as err:  # the directory belongs to another run: leave it as it is
        if main:
            print(f"error: {err}", file=sys.stderr)
            record_failure(output_dir, err, remove_if_empty=single, keep_existing_status=True)
        if single:
            sys.exit(2)
        raise
    except CurvzoError as err:  # checked alike on every rank: rank 0 says it once
        if main:
            print(f"error: {err}", file=sys.stderr)
            record_failure(output_dir, err, remove_if_empty=single)
        if single:
            sys.exit(2)
        raise  # in a sweep the other jobs go on; Hydra reports the failure at the end
    except Exception as err:
        if main:
            record_failure(output_dir, err, remove_if_empty=False)
        elif not isinstance(err, distributed.RankFailure):  # rank 0 records it; say it here too, naming the rank
            print(f"error: rank {distributed.world().rank}: {type(err).__name__}: {err}", file=sys.stderr)
        raise
    if main:
        _report(summary)
    if single and summary.get("status") == "stopped_nonfinite":
        if main:
            print(f"error: the loss was not finite {cfg.max_nonfinite_streak} steps in a row: stopped "
                  f"(status stopped_nonfinite); lower optimizer.lr or optimizer.eps", file=sys.stderr)
        sys.exit(DIVERGED_EXIT_CODE)
    return sweep_objective(summary)


def sweep_objective(summary: dict) -> float | None:
    """What a Hydra sweeper (Optuna) optimises: the dev metric of the dev-selected model, to maximise.
    Never the test metric: test must not drive any choice (protocol.md)."""
    return summary.get("best", {}).get(f"dev_{summary.get('metric', 'acc')}")


def record_failure(run_dir: Path, err: BaseException | None, *, remove_if_empty: bool,
                   keep_existing_status: bool = False) -> None:
    """A failed job's directory: removed when it holds nothing but Hydra's files (a single run's bad
    input leaves no partial outputs), else given a status.json naming the error (``err`` None: interrupted),
    except that ``keep_existing_status`` (a directory that belongs to another run) keeps one already there."""
    if not run_dir.is_dir():
        return
    own = [p for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if remove_if_empty and not own:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    from curvzo.run_directory import read_status, write_status

    if keep_existing_status and (run_dir / "status.json").exists():  # another run's status stays as it is
        return
    if err is None:
        if read_status(run_dir).get("status") != "interrupted":
            write_status(run_dir, {"status": "interrupted",
                                   "error": "stopped at once (Ctrl-C before training, or a second signal)"})
        return
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    world = distributed.world()
    where = f"rank {world.rank}: " if world.active and not isinstance(err, distributed.RankFailure) else ""
    write_status(run_dir, {"status": "failed", "error": f"{where}{type(err).__name__}: {message}"})


def _report(summary: dict) -> None:
    metric = summary.get("metric", "acc")
    name = {"acc": "accuracy", "f1": "F1"}.get(metric, metric)
    zero = summary.get("zero_shot", {}).get(f"test_{metric}")
    after = summary.get("test_at_best_dev", {})
    lines = [f"status: {summary['status']}"]
    if zero is not None:
        lines.append(f"zero-shot test {name}: {100 * zero:.1f}")
    if summary.get("steps"):
        lines.append(
            f"test {name} after {summary['steps']} steps: {100 * after.get(f'test_{metric}', float('nan')):.1f}"
            f" (model selected at step {after.get('step')} by {summary.get('select_by', 'dev')})"
        )
        lines.append(f"wall time {summary['wall_time_s']:.0f} s, {summary['sec_per_step']:.2f} s/step, "
                     f"{summary['forward_passes']} forward passes")
    lines.append(f"outputs: {summary['output_dir']}")
    for line in lines:
        log.info(line)


if __name__ == "__main__":
    main()
