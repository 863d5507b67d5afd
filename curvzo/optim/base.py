"""Shared machinery of every zeroth-order optimizer: blocks, step seeds, shifts, the NaN guard.

A ZO optimizer is a ``torch.optim.Optimizer`` whose ``step(closure)`` calls ``closure()`` to get the
minibatch loss (computed under ``torch.inference_mode()``, never calling backward) as many times as
its probe needs. Blocks are the trainable tensors in parameter-group order (tied weights count
once, optimizers.md notation). Per step the optimizer records what replays the trajectory.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from curvzo.errors import ConfigError
from curvzo.optim.directions import DirectionSampler, mix64

_STEP_STREAM = 1  # sub-stream tag of the per-step seeds; data order and samplers use other tags


MAX_DIRECTION_WORKERS = 4  # drawing z stops scaling past a few threads (memory bandwidth; `make bench`)


def default_direction_workers() -> int:
    """One worker thread per intra-op thread, capped: z is drawn by a single-threaded kernel."""
    return max(1, min(torch.get_num_threads(), MAX_DIRECTION_WORKERS))


@functools.cache
def _block_executor(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="curvzo-z")


def step_seed(run_seed: int, step: int) -> int:
    """s_t: a pure function of (run seed, step), so any step can be regenerated or resumed."""
    return mix64(run_seed, _STEP_STREAM, step)


@dataclass(frozen=True)
class Block:
    """One trainable tensor with the hyperparameters of its parameter group."""

    index: int
    param: torch.Tensor
    group: dict
    name: str  # from named parameters when given (``param_names``), else ``param<index>``


def check_positive(name: str, value: float) -> float:
    """Return ``value`` if it is a finite number > 0, else raise a one-line ConfigError."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"optimizer.{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: float) -> float:
    """Return ``value`` if it is a finite number >= 0, else raise a one-line ConfigError."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"optimizer.{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_fraction(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Return ``value`` if it lies in (0, 1] (or [0, 1] with ``allow_zero``), else a one-line ConfigError."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not ((value >= 0 if allow_zero else value > 0) and value <= 1):
        raise ConfigError(f"optimizer.{name} must be in {'[0, 1]' if allow_zero else '(0, 1]'}, got {value!r}")
    return float(value)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else a one-line ConfigError listing them."""
    if value not in choices:
        raise ConfigError(f"optimizer.{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


STATE_DTYPES = ("fp32", "param")  # optimizer state in float32 (our default) or in the weights' dtype (official codes)


def state_buffer(param: torch.Tensor, state_dtype: str, fill: float = 0.0) -> torch.Tensor:
    """A state tensor shaped like ``param``: float32 for ``fp32``, the parameter's dtype for ``param``."""
    dtype = torch.float32 if state_dtype == "fp32" else param.dtype
    return torch.full_like(param, fill, dtype=dtype, memory_format=torch.contiguous_format)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in any torch optimizer's per-parameter ``state``."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


class ZerothOrderOptimizer(torch.optim.Optimizer):
    """Base class: seeded directions, in-place shifts, forward-pass accounting, trajectory."""

    #: The training loop gives forward-only closures to optimizers that set this.
    forward_only = True
    #: Forward passes one ``step`` spends (methods whose cost varies override ``forward_passes_next_step``).
    forward_passes_per_step = 2

    def __init__(self, params: Any, defaults: dict, *, seed: int = 0) -> None:
        check_positive("lr", defaults.get("lr"))
        check_nonnegative("weight_decay", defaults.get("weight_decay", 0.0))
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_positive("lr", group["lr"])
            check_nonnegative("weight_decay", group["weight_decay"])
        seen: set[int] = set()
        self.blocks: list[Block] = []
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for name, p in zip(names, group["params"]):
                if id(p) in seen or not p.requires_grad:
                    continue
                seen.add(id(p))
                index = len(self.blocks)
                self.blocks.append(Block(index, p, group, name or f"param{index}"))
        self.seed = int(seed)
        self.directions = DirectionSampler()
        self.direction_workers = default_direction_workers()
        self.steps_taken = 0
        self.forward_passes = 0
        self.skipped_steps = 0
        self.trajectory: list[dict] = []
        self.last_stats: dict[str, float] = {}

    def begin_step(self, closure: Callable[[], torch.Tensor] | None) -> tuple[int, int]:
        """Check the closure and advance the step counter; returns (step index, step seed s_t)."""
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that returns the minibatch loss")
        step = self.steps_taken
        self.steps_taken += 1
        return step, self.step_seed(step)

    def forward_passes_next_step(self) -> int:
        """What the next ``step`` will spend, so a forward-pass budget is never overrun."""
        return self.forward_passes_per_step

    def step_seed(self, step: int) -> int:
        """s_t of this run (:func:`step_seed`)."""
        return step_seed(self.seed, step)

    def direction_chunks(self, block: Block, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(view of θ_b, float32 chunk of z_b) pairs; methods with masked directions override this."""
        return self.directions.chunks(block.param, seed, block.index)

    def for_each_block(self, fn: Callable[[Block], Any], blocks: list[Block] | None = None) -> list[Any]:
        """``[fn(b) for b in blocks]`` (all blocks by default), results in block order.

        On CPU, ``direction_workers`` threads run ``fn`` on different blocks at once: the Gaussian
        kernel that draws z is single-threaded, and it dominates a step's overhead. z_b depends
        only on (seed, b), each thread has its own generator, and ``fn`` must touch only its own
        block's weights and state, so the result is bit-identical for any number of workers.
        """
        blocks = self.blocks if blocks is None else blocks
        workers = min(self.direction_workers, len(blocks))
        if workers <= 1 or blocks[0].param.device.type != "cpu":  # CUDA kernels are asynchronous already
            return [fn(block) for block in blocks]
        return list(_block_executor(workers).map(fn, blocks))

    def shift(self, seed: int, scale: float, blocks: list[Block] | None = None) -> None:
        """theta_b += scale * z_b for the given blocks (all by default), in place."""
        def shift_block(block: Block) -> None:
            for view, z in self.direction_chunks(block, seed):
                view.add_(z, alpha=scale)
        self.for_each_block(shift_block, blocks)

    def two_point_probe(self, closure: Callable[[], torch.Tensor], seed: int, eps: float,
                        blocks: list[Block] | None = None, *, restore: bool = True) -> tuple[float, float]:
        """L(θ+εz) and L(θ−εz) along z(seed), in place (+ε, −2ε). With ``restore`` θ is shifted
        back (+ε); without it θ is left at θ−εz for :meth:`restore_and_update` to finish."""
        self.shift(seed, +eps, blocks)
        loss_plus = self.probe(closure)
        self.shift(seed, -2 * eps, blocks)
        loss_minus = self.probe(closure)
        if restore:
            self.shift(seed, +eps, blocks)
        return loss_plus, loss_minus

    def probe(self, closure: Callable[[], torch.Tensor]) -> float:
        """Evaluate the closure once, counting the forward pass; returns a Python float."""
        self.forward_passes += 1
        with torch.no_grad():
            loss = closure()
        return float(loss)

    def apply_update(self, seed: int, coefficient: float, blocks: list[Block] | None = None) -> None:
        """theta_b <- theta_b - lr_b * (coefficient * z_b + wd_b * theta_b): the SGD step along z."""
        def update_block(block: Block) -> None:
            lr, wd = block.group["lr"], block.group["weight_decay"]
            if wd:
                block.param.data.mul_(1.0 - lr * wd)
            for view, z in self.direction_chunks(block, seed):
                view.add_(z, alpha=-lr * coefficient)
        self.for_each_block(update_block, blocks)

    def restore_and_update(self, seed: int, eps: float, coefficient: float, blocks: list[Block] | None = None) -> None:
        """``shift(seed, +eps)`` then ``apply_update(seed, coefficient)`` with one regeneration of z
        instead of two. Each element sees the same operations in the same order (restore, decay,
        update), so the weights are bit-identical to the two calls: a step draws z three times, not four."""
        def restore_and_update_block(block: Block) -> None:
            lr, wd = block.group["lr"], block.group["weight_decay"]
            for view, z in self.direction_chunks(block, seed):
                view.add_(z, alpha=eps)
                if wd:
                    view.mul_(1.0 - lr * wd)
                view.add_(z, alpha=-lr * coefficient)
        self.for_each_block(restore_and_update_block, blocks)

    def record(self, **entry: Any) -> None:
        """Append one step's replay record (step, seed, scalars, lrs) to the trajectory."""
        self.trajectory.append(entry)

    def skip(self, step: int, seed: int, losses: tuple[float, ...]) -> None:
        """Count a step whose probe loss was not finite; the weights are already restored."""
        self.skipped_steps += 1
        self.record(step=step, seed=seed, projected_grad=None, lr=self.lrs(), losses=list(losses), skipped=True)
        self.last_stats = {
            "train/loss": float("nan"),
            "zo/skipped_steps": self.skipped_steps,
            "zo/forward_passes": self.forward_passes,
            "zo/nonfinite_losses": sum(not math.isfinite(x) for x in losses),
        }

    def probe_stats(self, loss: float, loss_plus: float, projected_grad: float) -> dict[str, float]:
        """The per-step metrics every two-point method logs (methods add their own prefix keys)."""
        return {
            "train/loss": loss,
            "train/loss_plus": loss_plus,
            "zo/projected_grad": projected_grad,
            "zo/forward_passes": self.forward_passes,
            "zo/skipped_steps": self.skipped_steps,
        }

    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.param_groups]

    def state_bytes(self) -> int:
        """Bytes of persistent per-parameter state (``self.state``); methods add what they keep elsewhere."""
        return optimizer_state_bytes(self)

    def describe(self) -> dict[str, Any]:
        """What the run summary records about this optimizer: its state size and, per method, more."""
        return {"state_bytes": self.state_bytes()}

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["zo"] = {
            "seed": self.seed,
            "steps_taken": self.steps_taken,
            "forward_passes": self.forward_passes,
            "skipped_steps": self.skipped_steps,
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo", None)
        # torch casts floating state to the parameter dtype on load; ours stays float32 (optimizers.md §1.4)
        saved = state_dict.get("state", {})
        super().load_state_dict({**state_dict, "state": {}})
        params = [p for g in self.param_groups for p in g["params"]]
        for index, values in saved.items():
            param = params[int(index)]
            self.state[param] = {k: v.to(param.device).clone() if isinstance(v, torch.Tensor) else v
                                 for k, v in values.items()}
        if zo is not None:
            self.seed = zo["seed"]
            self.steps_taken = zo["steps_taken"]
            self.forward_passes = zo["forward_passes"]
            self.skipped_steps = zo["skipped_steps"]


class PseudoGradientOptimizer(ZerothOrderOptimizer):
    """MeZO's two-point probe feeding a stateful per-tensor rule (ZO_STATEFUL_STEP, optimizers.md §6).

    Subclasses set ``self.eps`` and define ``update_block(block, seed, projected_grad)``, which
    regenerates z_b chunk by chunk, so the pseudo-gradient g·z_b exists one chunk at a time. The
    probe leaves θ at θ−εz; each chunk is first restored and decayed (:meth:`restore_chunk`), so a
    step draws z three times and its weights are bit-identical to restoring everything first.
    """

    update_block: Callable[[Block, int, float], None]  # defined by each subclass (ZOSGDMomentum, ZOAdam)

    def restore_chunk(self, view: torch.Tensor, z: torch.Tensor, block: Block) -> None:
        """θ += εz (the probe's restore), then the decoupled decay, on one chunk before its update."""
        view.add_(z, alpha=self.eps)
        lr, wd = block.group["lr"], block.group["weight_decay"]
        if wd:
            view.mul_(1.0 - lr * wd)  # decoupled, as in our MeZO

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> float:  # type: ignore[override]
        """One step (two forward passes); returns the mean probe loss, NaN when the step was skipped."""
        step, seed = self.begin_step(closure)
        loss_plus, loss_minus = self.two_point_probe(closure, seed, self.eps, restore=False)
        if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
            self.shift(seed, +self.eps)  # restore only
            self.skip(step, seed, (loss_plus, loss_minus))
            return float("nan")
        projected_grad = (loss_plus - loss_minus) / (2 * self.eps)
        self.for_each_block(lambda block: self.update_block(block, seed, projected_grad))
        loss = (loss_plus + loss_minus) / 2
        self.record(step=step, seed=seed, projected_grad=projected_grad, lr=self.lrs(), losses=[loss_plus, loss_minus])
        self.last_stats = self.probe_stats(loss, loss_plus, projected_grad)
        return loss
