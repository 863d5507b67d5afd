"""One benchmark measurement, in a process of its own so that its peak memory is its own.

    python -m curvzo.bench.measure '{"method": "mezo", "overrides": ["model=tiny-opt", ...], ...}'
    python -m curvzo.bench.measure '{"plan": [["mezo", "exact"], ...], "overrides": [...], ...}'   # in one process

prints one JSON line (a row, or with ``plan`` the list of rows). ``method`` is ``inference`` (forward passes only: the memory yardstick),
``reference`` (:class:`curvzo.bench.reference.ReferenceMeZO`) or an optimizer config name. The
model, task, batch and optimizer come from the same config tree as ``curvzo-run``; the batch is
the first one the training loop would draw. Times exclude tokenization (the batch is encoded
once) and are medians over repeats, after one warm-up call.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from hydra import compose, initialize_config_dir

from curvzo.bench.reference import ReferenceMeZO, reference_batch, reference_loss
from curvzo.data import load_splits
from curvzo.job import optimizer_kwargs, prepare_optimizer, trains
from curvzo.optim.base import ZerothOrderOptimizer
from curvzo.optim.directions import DirectionSampler, default_workers
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


def draw_everything(model: torch.nn.Module) -> None:
    """One Gaussian z over every weight of ``model``, drawn as a ZO step draws it (pieces on the drawing threads,
    float32, into reused buffers): the floor under every pass over the weights that a step makes."""
    sampler = DirectionSampler("gaussian", default_workers())
    for index, param in enumerate(model.parameters()):
        sampler.for_each_piece(param, 0, index, lambda span, z: None)


@contextlib.contextmanager
def counting_draws() -> Iterator[list[int]]:
    """A list that gets the size of every piece of z drawn (by any :class:`DirectionSampler`) inside the block;
    a list append is atomic across the drawing threads."""
    sizes: list[int] = []
    draw = DirectionSampler._draw

    def counting(sampler: DirectionSampler, piece: torch.Tensor, seed: int) -> None:
        sizes.append(piece.numel())
        draw(sampler, piece, seed)
    DirectionSampler._draw = counting
    try:
        yield sizes
    finally:
        DirectionSampler._draw = draw


class Setup(NamedTuple):
    """What every row of one model and dtype shares: the config, the model and the training batch."""

    cfg: object
    task: object
    examples: list
    model: torch.nn.Module
    tokenizer: object
    device: torch.device


def load(overrides: list[str]) -> Setup:
    """The model, task and first training batch that ``curvzo-run`` would use with these overrides."""
    cfg = compose_config([*overrides, "optimizer=mezo"])
    task = instantiate(cfg.task, "task")
    splits = load_splits(task, cfg.paths.data_dir, cfg.budget.num_train, cfg.budget.num_dev, cfg.budget.num_test,
                         cfg.data_seed)
    examples = next(training_batches(splits.train, cfg.budget.batch_size, cfg.seed))
    loaded = instantiate(cfg.model, "model")
    loaded.model.eval()  # ZO probes run without dropout, as in the training loop
    return Setup(cfg, task, examples, loaded.model, loaded.tokenizer, loaded.device)


def measure(method: str, overrides: list[str], repeats: int = 3, steps: int = 3, probe: str | None = None,
            setup: Setup | None = None) -> dict:
    """Forward time, and for a training method step time and forward passes; peak memory throughout.
    ``probe`` (``exact`` | ``inplace``) overrides the ZO optimizer's probe. ``setup`` reuses a loaded model
    (:func:`measure_plan`); its weights then carry the previous rows' steps, which a step's cost does not see."""
    setup = setup or load(overrides)
    model, tokenizer, device, examples = setup.model, setup.tokenizer, setup.device, setup.examples
    optimizer_name = "mezo" if method in ("inference", "reference") else method
    cfg = compose_config([*overrides, f"optimizer={optimizer_name}"])
    if probe and "probe" in cfg.optimizer:  # first-order optimizers have none: they are refused below
        cfg.optimizer.probe = probe
    if cfg.optimizer.get("lr", 0) is None:
        cfg.optimizer.lr = 1e-6  # no tuned lr for this model (e.g. the ablation arms); a step costs the same at any lr
    max_length = cfg.model.max_length
    ours = setup.task.objective.training_batch(examples, tokenizer, max_length).to(device)
    if method == "reference":
        batch, loss_fn = reference_batch(examples, tokenizer, max_length).to(device), reference_loss
    else:
        batch, loss_fn = ours, setup.task.objective.loss

    def closure() -> torch.Tensor:
        with torch.inference_mode():
            return loss_fn(model, batch)

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
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
    if method == "inference":
        result["draw_s"] = statistics.median(timed(lambda: draw_everything(model), repeats, device))
    else:
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
        with counting_draws() as drawn:
            step_times = timed(lambda: optimizer.step(closure), steps, device)
        if isinstance(optimizer, ZerothOrderOptimizer):  # the reference draws with its own generator: not counted
            numel = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
            # elements of z drawn per step, in whole passes over the trained weights
            result["z_draws_per_step"] = sum(drawn) / (steps + 1) / numel if numel else 0.0
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


def measure_plan(plan: list[tuple[str, str | None]], overrides: list[str], repeats: int = 3,
                 steps: int = 3) -> list[dict]:
    """Every (method, probe) of ``plan`` after an inference row, on one model loaded once: the in-process bench.
    On CUDA each row's peak is its own (the allocator's counter is reset and the last row's memory freed); on the
    CPU the resident-set high-water mark also keeps what the allocator did not give back. A row that fails is
    ``{"method": ..., "error": "<its last line>"}`` and the others still run."""
    setup = load(overrides)
    rows = []
    for method, probe in [("inference", None), *plan]:
        try:
            rows.append(measure(method, overrides, repeats, steps, probe, setup=setup))
        except Exception as err:  # noqa: BLE001 -- one failed method must not hide the others' rows
            rows.append({"method": method, "probe": probe, "error": f"{type(err).__name__}: {err}"})
        gc.collect()  # the row's optimizer and its state go before the next row's window opens
    return rows


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    if "plan" in spec:  # the in-process bench: one JSON line with every row
        print(json.dumps(measure_plan([tuple(step) for step in spec["plan"]], spec["overrides"], spec["repeats"],
                                      spec["steps"])))
    else:
        print(json.dumps(measure(**spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
