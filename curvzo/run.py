"""Entrypoint: ``curvzo-run`` (= ``python -m curvzo.run``), a Hydra app.

    curvzo-run                                            # the default job (SmolLM2-135M, tweets, MeZO)
    curvzo-run model=tiny-opt task=sst2 budget=smoke paths.data_dir=../shared/data
    curvzo-run -m optimizer.lr=1e-6,1e-7 seed=0,1         # a sweep, one job after another
    curvzo-run --cfg job                                  # print the composed config

Outputs go to Hydra's run directory (``hydra.run.dir``): config.yaml, metrics.jsonl,
trajectory.jsonl (ZO methods) and summary.json.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from curvzo.errors import CurvzoError

log = logging.getLogger("curvzo")

# An absolute path: as a console script or `python -m`, a relative one would name a module.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Run one job; a bad config, data file or model gives one line on stderr, not a traceback."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        from curvzo.job import run_job  # heavy imports after Hydra has parsed the command line

        summary = run_job(cfg, output_dir)
    except CurvzoError as err:
        print(f"error: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.RUN:
            sys.exit(2)
        raise  # in a sweep the other jobs go on; Hydra reports the failure at the end
    _report(summary)
    best = summary.get("test_at_best_dev", {}).get("test_acc")
    return best


def _report(summary: dict) -> None:
    zero = summary.get("zero_shot", {}).get("test_acc")
    after = summary.get("test_at_best_dev", {})
    lines = [f"status: {summary['status']}"]
    if zero is not None:
        lines.append(f"zero-shot test accuracy: {100 * zero:.1f}")
    if summary.get("steps"):
        lines.append(
            f"test accuracy after {summary['steps']} steps: {100 * after.get('test_acc', float('nan')):.1f}"
            f" (model selected at step {after.get('step')} by {summary.get('select_by', 'dev')})"
        )
        lines.append(f"wall time {summary['wall_time_s']:.0f} s, {summary['sec_per_step']:.2f} s/step, "
                     f"{summary['forward_passes']} forward passes")
    lines.append(f"outputs: {summary['output_dir']}")
    for line in lines:
        log.info(line)


if __name__ == "__main__":
    main()
