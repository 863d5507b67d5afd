"""One benchmark measurement, in a process of its own so that its peak memory is its own.

    python -m curvzo.bench.measure '{"method": "mezo", "overrides": ["model=tiny-opt", ...], ...}'

prints one JSON line. ``method`` is ``inference`` (forward passes only: the memory yardstick),
``reference`` (:class:`curvzo.bench.reference.ReferenceMeZO`) or an optimizer config name. The
model, task, batch and optimizer come from the same config tree as ``curvzo-run``; the batch is
the first one the training loop would draw. Times exclude tokenization (the batch is encoded
once) and are medians over repeats, after one warm-up call.
"""

from __future__ import annotations

import gc
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
from hydra import compose, initialize_config_dir

from curvzo.bench.reference import ReferenceMeZO, reference_batch, reference_loss
from curvzo.data import load_splits
from curvzo.job import optimizer_kwargs, prepare_optimizer, trains
from curvzo.optim.base import ZerothOrderOptimizer
from curvzo.peft_modes import parameter_groups
from curvzo.run import CONFIG_DIR
from curvzo.train import training_batches
from curvzo.utils.instantiate import instantiate
from curvzo.utils.runinfo import peak_memory, reset_peak_memory


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn`` after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def compose_config(overrides: list[str]):
    """The job config ``curvzo-run`` would build from these overrides (no Hydra run directory)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def measure(method: str, overrides: list[str], repeats: int = 3, steps: int = 3, probe: str | None = None) -> dict:
    """Forward time, and for a training method step time and forward passes; peak memory throughout.
    ``probe`` (``exact`` | ``inplace``) overrides the ZO optimizer's probe."""
    optimizer_name = "mezo" if method in ("inference", "reference") else method
    cfg = compose_config([*overrides, f"optimizer={optimizer_name}"])
    if probe and "probe" in cfg.optimizer:  # first-order optimizers have none: they are refused below
        cfg.optimizer.probe = probe
    if cfg.optimizer.get("lr", 0) is None:
        cfg.optimizer.lr = 1e-6  # no tuned lr for this model (e.g. the ablation arms); a step costs the same at any lr
    task = instantiate(cfg.task, "task")
    splits = load_splits(task, cfg.paths.data_dir, cfg.budget.num_train, cfg.budget.num_dev, cfg.budget.num_test,
                         cfg.data_seed)
    examples = next(training_batches(splits.train, cfg.budget.batch_size, cfg.seed))
    loaded = instantiate(cfg.model, "model")
    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    model.eval()  # ZO probes run without dropout, as in the training loop
    max_length = cfg.model.max_length
    ours = task.objective.training_batch(examples, tokenizer, max_length).to(device)
    if method == "reference":
        batch, loss_fn = reference_batch(examples, tokenizer, max_length).to(device), reference_loss
    else:
        batch, loss_fn = ours, task.objective.loss

    def closure() -> torch.Tensor:
        with torch.inference_mode():
            return loss_fn(model, batch)

    gc.collect()
    reset_peak_memory()  # the window starts after loading: only forwards and steps count
    forward_times = timed(closure, repeats, device)
    result = {
        "method": method,
        "probe": cfg.optimizer.get("probe") if method not in ("inference", "reference") else None,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "batch_size": len(examples),
        "sequences": int(batch.input_ids.shape[0]),
        "width": int(batch.input_ids.shape[1]),
        "tokens": int(ours.attention_mask.sum()),  # our encoding's non-pad tokens: the same for every method
        "forward_s": statistics.median(forward_times),
        "forward_times_s": forward_times,
    }
    if method != "inference":
        if method == "reference":
            lr = float(cfg.optimizer.lr)
            optimizer = ReferenceMeZO(model.parameters(), lr=lr, eps=float(cfg.optimizer.eps), seed=cfg.seed)
        else:
            if not trains(cfg):
                raise ValueError(f"optimizer={method} trains nothing: benchmark a training method")
            weight_decay = float(cfg.optimizer.get("weight_decay", 0.0) or 0.0)
            optimizer = instantiate(optimizer_kwargs(cfg), "optimizer")(parameter_groups(model, weight_decay))
            if not isinstance(optimizer, ZerothOrderOptimizer):
                raise ValueError(f"optimizer={method} needs gradients; the benchmark measures forward-only steps")
            prepare_optimizer(optimizer, model, cfg.direction_workers)
            if optimizer.uses_extra_batches:
                optimizer.set_extra_batches(itertools.repeat(closure))  # DiZO's projection batches: the same batch
        passes_before = optimizer.forward_passes
        step_times = timed(lambda: optimizer.step(closure), steps, device)
        result.update({
            # the method's declared state (float32 whatever the model dtype): what its peak may add to inference
            "state_bytes": optimizer.state_bytes() if isinstance(optimizer, ZerothOrderOptimizer) else 0,
            "step_s": statistics.median(step_times),
            "step_times_s": step_times,
            "forward_passes_per_step": (optimizer.forward_passes - passes_before) / (steps + 1),
        })
    _sync(device)
    result.update(peak_memory())
    return result


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    print(json.dumps(measure(**spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
