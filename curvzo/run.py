"""Entrypoint: ``curvzo-run`` (= ``python -m curvzo.run``), a Hydra app.

    curvzo-run                                            # the default job (SmolLM2-135M, tweets, MeZO)
    curvzo-run model=tiny-opt task=sst2 budget=smoke paths.data_dir=../shared/data
    curvzo-run -m optimizer.lr=1e-6,1e-7 seed=0,1         # a sweep, one job after another
    curvzo-run --cfg job                                  # print the composed config

Outputs go to Hydra's run directory (``hydra.run.dir``): config.yaml, metrics.jsonl,
trajectory.jsonl (ZO methods), summary.json, status.json and, when checkpointing,
checkpoint.safetensors. A single run that fails on bad input leaves no directory behind; a failed
job of a sweep leaves status.json with its error, and the other jobs go on.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig

from curvzo.errors import CurvzoError
from curvzo.preemption import Preempted, hand_over

log = logging.getLogger("curvzo")

# An absolute path: as a console script or `python -m`, a relative one would name a module.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def main() -> None:
    """Console entry point: check the chosen group options, then hand over to Hydra."""
    problem = unknown_group_option(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    hydra_app()


def unknown_group_option(argv: list[str]) -> str | None:
    """The first ``group=option`` naming no config file, as one line; Hydra's own report is a page."""
    args, _ = get_args_parser().parse_known_args(argv)  # Hydra's own CLI parser (internal, stable since 1.1)
    search_dirs = [Path(d) for d in (args.config_dir, CONFIG_DIR) if d]
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except Exception:  # malformed override: Hydra reports the syntax error itself
        return None
    for override in overrides:
        group_dirs = [d / override.key_or_group for d in search_dirs if (d / override.key_or_group).is_dir()]
        # hydra/* groups also hold plugin configs (hydra/launcher=submitit_slurm) that live in Hydra's
        # ConfigStore, not in our directories: Hydra checks those itself
        if override.key_or_group.startswith("hydra/"):
            continue
        if not group_dirs or override.is_delete() or override.value() is None:
            continue
        available = sorted({p.stem for d in group_dirs for p in d.glob("*.yaml")})
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]
        for value in values:
            if value not in available:
                return f"{override.key_or_group}={value}: no such option (choose from {', '.join(available)})"
    return None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_app(cfg: DictConfig) -> float | None:
    """Run one job; a bad config, data file or model gives one line on stderr, not a traceback."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    single = hydra_cfg.mode == RunMode.RUN
    try:
        # heavy imports after Hydra has parsed the command line
        from curvzo.job import run_job

        summary = run_job(cfg, output_dir)
    except Preempted as err:
        log.warning("%s", err)
        hand_over(err)  # submitit's handler requeues the job, or we exit with REQUEUE_EXIT_CODE
        raise
    except CurvzoError as err:
        print(f"error: {err}", file=sys.stderr)
        record_failure(output_dir, err, remove_if_empty=single)
        if single:
            sys.exit(2)
        raise  # in a sweep the other jobs go on; Hydra reports the failure at the end
    except Exception as err:
        record_failure(output_dir, err, remove_if_empty=False)
        raise
    _report(summary)
    return summary.get("test_at_best_dev", {}).get(f"test_{summary.get('metric', 'acc')}")


def record_failure(run_dir: Path, err: BaseException, *, remove_if_empty: bool) -> None:
    """A failed job's directory: removed when it holds nothing but Hydra's files (a single run's bad
    input leaves no partial outputs), else given a status.json naming the error."""
    if not run_dir.is_dir():
        return
    own = [p for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if remove_if_empty and not own:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    from curvzo.job import write_status

    write_status(run_dir, {"status": "failed", "error": f"{type(err).__name__}: {message}"})


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
