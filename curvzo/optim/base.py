"""The zeroth-order optimizer contract and the one step skeleton every method shares.

A ZO optimizer is a ``torch.optim.Optimizer`` whose ``step(closure)`` calls ``closure()`` (the
minibatch loss under ``torch.inference_mode()``, never backward) as often as its probe needs.
Blocks are the trainable tensors in parameter-group order (tied weights once, optimizers.md
notation). Per-coordinate hyperparameters (``lr``, ``eps``, ``weight_decay`` and each method's own)
live in the parameter groups, as in ``torch.optim``; settings of the whole method live on the object.

What the training loop relies on, and nothing else (no attribute probing):

- ``step(closure) -> float``: one step; the reported loss, NaN when none was measured.
- ``last_outcome``: ``"updated"``, ``"skipped"`` (a non-finite probe loss: weights untouched) or
  ``"empty"`` (a sparse method drew no block: no forward pass, no update).
- ``forward_passes``, ``skipped_steps``, ``last_stats`` (this step's metrics), ``trajectory`` (replay records).
- ``flat_steps``: updated steps whose probe losses were all equal (a zero estimate: common when training on
  a metric, ``task.train_objective=metric``).
- ``forward_passes_next_step()``: what the next step may spend, so a budget is never overrun.
- ``bind_model(model)``: which modules own which tensors (the exact probe's hooks).
- ``uses_extra_batches`` and ``set_extra_batches(closures)``: closures over fresh minibatches.
- ``describe()``, ``state_dict()``, ``load_state_dict()``, ``direction_workers``.
- ``probe_mode`` (``exact`` or ``inplace``): query parallelism needs exact probes.
- ``evaluate_queries(closures)``: a step's independent forward passes, dealt over the ranks under
  ``distributed.mode=query`` (:mod:`curvzo.distributed`).

A method fills in the hooks of :meth:`step`: ``plan`` (which blocks, or an empty step),
``probe`` (the losses; :meth:`two_point` by default), ``update`` (:meth:`update_pass` with a
per-span rule) and ``finish`` (work after the update, e.g. DiZO's projection).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from curvzo import distributed
from curvzo.optim import rounding
from curvzo.optim.blocks import Block, collect_blocks
from curvzo.optim.checks import (
    check_choice,
    check_nonnegative,
    check_positive,
    optimizer_state_bytes,
)
from curvzo.optim.directions import (
    DISTRIBUTIONS,
    DirectionSampler,
    PieceJob,
    default_workers,
    give_buffer,
    take_buffer,
)
from curvzo.optim.probe import PROBES, ExactProbe, WriteFn
from curvzo.optim.streams import RNG_CONTRACT_VERSION, step_seed

Closure = Callable[[], torch.Tensor]


@dataclass
class StepContext:
    """What one step knows: its index and seed, the blocks it perturbs, and what it records."""

    step: int
    seed: int
    closure: Closure
    blocks: list[Block]
    restore: bool = False  # in-place probe: each block holds θ_b − ε_b·d_b until the update restores it
    plan: Any = None  # what the method's plan hook decided (CurvZO: its block draw)
    record: dict = field(default_factory=dict)  # method extras for the trajectory record
    stats: dict = field(default_factory=dict)  # method extras for the step's metrics


class ZerothOrderOptimizer(torch.optim.Optimizer, ABC):
    """Base of every ZO method; see the module docstring for the contract.

    Args:
        params: tensors or parameter groups (groups may set any per-coordinate hyperparameter).
        defaults: the per-coordinate hyperparameters, at least ``lr``, ``eps`` and ``weight_decay``.
        seed: run seed; step t perturbs along z(s_t) with s_t = hash(seed, t).
        probe: ``exact`` (perturbed weights materialised per module, θ never written) or ``inplace``
            (+ε, −2ε, +ε on θ, the official codes; the restores round).
        update_rounding: ``auto`` (stochastic into float16/bfloat16, nearest into float32),
            ``stochastic`` or ``nearest`` (the official codes).
        directions: ``gaussian`` (the papers) or ``rademacher`` (±1, faster to draw on CPU).
    """

    uses_extra_batches: ClassVar[bool] = False  # True: the loop calls set_extra_batches (DiZO)
    passes_per_step: ClassVar[int] = 2  # forward passes of one step (methods whose cost varies override the method)

    def __init__(self, params: Any, defaults: dict, *, seed: int = 0, probe: str = "exact",
                 update_rounding: str = "auto", directions: str = "gaussian") -> None:
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_positive("lr", group["lr"])
            check_positive("eps", group["eps"])
            check_nonnegative("weight_decay", group["weight_decay"])
        self.probe_mode = check_choice("probe", probe, PROBES)
        self.update_rounding = check_choice("update_rounding", update_rounding, rounding.ROUNDINGS)
        self.blocks: list[Block] = collect_blocks(self.param_groups)
        self.seed = int(seed)
        self.directions = DirectionSampler(check_choice("directions", directions, DISTRIBUTIONS), default_workers())
        self.prober = ExactProbe()
        self.steps_taken = 0
        self.forward_passes = 0
        self.skipped_steps = 0
        self.empty_steps = 0
        self.flat_steps = 0
        self.trajectory: list[dict] = []
        self.last_stats: dict[str, float] = {}
        self.last_outcome = "updated"
        self.extra_batches: Iterator[Closure] | None = None

    # the loop's side of the contract ----------------------------------------------------------------
    @property
    def direction_workers(self) -> int:
        """CPU threads that draw the pieces of z at once (the weights are the same for any number)."""
        return self.directions.workers

    @direction_workers.setter
    def direction_workers(self, workers: int) -> None:
        self.directions.workers = max(1, int(workers))

    def bind_model(self, model: torch.nn.Module) -> None:
        """Tell the exact probe which modules own the trainable tensors (without it, each perturbed
        tensor is materialised whole for the length of a probe: correct, but more memory)."""
        self.prober.bind(model, self.blocks)

    def set_extra_batches(self, closures: Iterator[Closure]) -> None:
        """Closures over fresh minibatches, drawn by methods that set ``uses_extra_batches``."""
        self.extra_batches = closures

    def forward_passes_next_step(self) -> int:
        """What the next ``step`` spends at most."""
        return self.passes_per_step

    def step_seed(self, step: int) -> int:
        """s_t of this run (:func:`curvzo.optim.streams.step_seed`)."""
        return step_seed(self.seed, step)

    # the step skeleton ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Closure) -> float:  # type: ignore[override]
        """One step: plan, probe, guard, update, finish, record. Returns the reported loss (NaN if none)."""
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that returns the minibatch loss")
        step = self.steps_taken
        self.steps_taken += 1
        ctx = StepContext(step, self.step_seed(step), closure, list(self.blocks))
        if not self.plan(ctx):
            return self._end_empty(ctx)
        losses = self.probe(ctx)
        if not all(math.isfinite(x) for x in losses):
            if ctx.restore:
                self.shift(ctx, +1.0)  # θ back where it was; no score, state or update changes
            return self._end_skipped(ctx, losses)
        self.update(ctx, losses)
        self.finish(ctx, losses)
        self.last_outcome = "updated"
        self.flat_steps += len(set(losses)) == 1
        loss = self.reported_loss(losses)
        projected_grad = self.projected_grad(ctx, losses)
        self.record(step=step + 1, seed=ctx.seed, projected_grad=projected_grad, lr=self.lrs(), losses=list(losses),
                    **ctx.record)
        self.last_stats = {**self.probe_stats(loss, self.loss_plus(losses), projected_grad), **ctx.stats}
        return loss

    def plan(self, ctx: StepContext) -> bool:
        """Choose ``ctx.blocks`` (all by default); False makes this an empty step."""
        return True

    def probe(self, ctx: StepContext) -> list[float]:
        """The probe losses of this step (MeZO's two-point probe by default)."""
        return self.two_point(ctx)

    @abstractmethod
    def update(self, ctx: StepContext, losses: list[float]) -> None:
        """Write the step into the weights and state (and restore them first when ``ctx.restore``)."""

    def finish(self, ctx: StepContext, losses: list[float]) -> None:
        """Work after the update (DiZO's projection); may add to ``ctx.record`` and ``ctx.stats``."""

    def reported_loss(self, losses: list[float]) -> float:
        """The step's training loss: the mean of the two probes (MeZO logs ℓ+ only; we log both)."""
        return (losses[0] + losses[1]) / 2

    def loss_plus(self, losses: list[float]) -> float:
        """ℓ+, logged as ``train/loss_plus``."""
        return losses[0]

    def projected_grad(self, ctx: StepContext, losses: list[float]) -> float:
        """g = (ℓ+ − ℓ−)/(2ε) with the first group's ε (what the logs and records show)."""
        return (losses[0] - losses[1]) / (2 * self.param_groups[0]["eps"])

    def _end_empty(self, ctx: StepContext) -> float:
        self.empty_steps += 1
        self.last_outcome = "empty"
        self.record(step=ctx.step + 1, seed=ctx.seed, projected_grad=None, lr=self.lrs(), losses=[], empty=True,
                    **ctx.record)
        self.last_stats = {"train/loss": float("nan"), "zo/forward_passes": self.forward_passes,
                           "zo/skipped_steps": self.skipped_steps, **ctx.stats, "zo/empty_steps": self.empty_steps}
        return float("nan")

    def _end_skipped(self, ctx: StepContext, losses: list[float]) -> float:
        self.skipped_steps += 1
        self.last_outcome = "skipped"
        self.record(step=ctx.step + 1, seed=ctx.seed, projected_grad=None, lr=self.lrs(), losses=list(losses),
                    skipped=True)
        self.last_stats = {"train/loss": float("nan"), "zo/skipped_steps": self.skipped_steps,
                           "zo/forward_passes": self.forward_passes,
                           "zo/nonfinite_losses": sum(not math.isfinite(x) for x in losses)}
        return float("nan")

    # probes -----------------------------------------------------------------------------------------
    def evaluate(self, closure: Closure) -> float:
        """Evaluate the closure once, counting the forward pass; returns a Python float."""
        self.forward_passes += 1
        return float(closure())

    def piece_job(self, ctx: StepContext, block: Block, fn: Callable[[slice, torch.Tensor], Any], *,
                  into: torch.Tensor | None = None, seed: int | None = None) -> PieceJob:
        """``fn(span, z)`` over the pieces of z_b under ``seed`` (this step's s_t by default), for
        :meth:`DirectionSampler.run_jobs`, which runs the pieces of many blocks on the drawing threads."""
        return PieceJob(block.param, ctx.seed if seed is None else seed, block.index, fn, into)

    def transform(self, ctx: StepContext, block: Block, span: slice, z: torch.Tensor) -> torch.Tensor:
        """The method's direction d_b from z_b on one piece, in place (Sparse-MeZO masks, HiZOO scales);
        runs on the drawing threads, so it may only read shared state."""
        return z

    def evaluate_queries(self, closures: list[Closure], *, stop_at_nonfinite: bool = False) -> list[float]:
        """The losses of independent forward passes of one step, in order. Under query parallelism
        (``distributed.mode=query``) they are dealt round-robin over the ranks and gathered, so every
        rank gets the list one process computes (and counts every pass). ``stop_at_nonfinite``: one
        process stops at the first non-finite loss (the step is skipped anyway)."""
        if not distributed.world().query_parallel:
            losses: list[float] = []
            for closure in closures:
                losses.append(self.evaluate(closure))
                if stop_at_nonfinite and not math.isfinite(losses[-1]):
                    break
            return losses
        self.forward_passes += len(closures)
        return distributed.map_dealt(lambda closure: float(closure()), closures)

    def two_point(self, ctx: StepContext) -> list[float]:
        """[L(θ + εd), L(θ − εd)] over ``ctx.blocks``: exact, or in place leaving θ − εd to the update."""
        if self.probe_mode == "exact":
            return self.evaluate_queries([self.exact_query(ctx, +1.0), self.exact_query(ctx, -1.0)])
        self.shift(ctx, +1.0)
        loss_plus = self.evaluate(ctx.closure)
        self.shift(ctx, -2.0)
        loss_minus = self.evaluate(ctx.closure)
        ctx.restore = True
        return [loss_plus, loss_minus]

    def exact_loss(self, ctx: StepContext, sign: float) -> float:
        """L(θ + sign·ε·d) with the perturbed weights materialised module by module; θ is not written."""
        return self.evaluate(self.exact_query(ctx, sign))

    def exact_query(self, ctx: StepContext, sign: float, seed: int | None = None) -> Closure:
        """A closure for L(θ + sign·ε·d) under the exact probe (see :meth:`exact_loss`); d from ``seed``
        (this step's s_t by default)."""
        return lambda: self.prober.loss(ctx.closure, ctx.blocks, self.perturbed_writer(ctx, sign, seed))

    def perturbed_writer(self, ctx: StepContext, sign: float, seed: int | None = None) -> WriteFn:
        """``write([(block, out), ...])``: out ← θ_b + sign·ε_b·d_b, computed in float32 and rounded once
        (d from ``seed``, this step's s_t by default)."""
        def write(pairs: list[tuple[Block, torch.Tensor]]) -> None:
            jobs = []
            for block, out in pairs:
                stored = block.param.data.view(-1)
                alpha = sign * block.group["eps"]

                def piece(span: slice, z: torch.Tensor, block=block, out=out, stored=stored, alpha=alpha) -> None:
                    d = self.transform(ctx, block, span, z)
                    if stored.dtype not in rounding.HALF:  # float32 (z drawn straight into the scratch), float64
                        torch.add(stored[span], d, alpha=alpha, out=out[span])
                        return
                    work = self.fp32_copy(stored[span])
                    out[span].copy_(work.add_(d, alpha=alpha))  # rounded once to the weight dtype
                    give_buffer(work)

                jobs.append(self.piece_job(ctx, block, piece, into=out if stored.dtype == torch.float32 else None,
                                           seed=seed))
            self.directions.run_jobs(jobs)
        return write

    def shift(self, ctx: StepContext, scale: float) -> None:
        """In place: θ_b += scale·ε_b·d_b over ``ctx.blocks``, rounded to nearest (the official codes)."""
        jobs = []
        for block in ctx.blocks:
            stored = block.param.data.view(-1)
            alpha = scale * block.group["eps"]

            def piece(span: slice, z: torch.Tensor, block=block, stored=stored, alpha=alpha) -> None:
                d = self.transform(ctx, block, span, z)
                if stored.dtype not in rounding.HALF:
                    stored[span].add_(d, alpha=alpha)
                    return
                work = self.fp32_copy(stored[span])  # float32 math, one rounding (the fast path for half weights)
                stored[span].copy_(work.add_(d, alpha=alpha))
                give_buffer(work)

            jobs.append(self.piece_job(ctx, block, piece))
        self.directions.run_jobs(jobs)

    # updates ----------------------------------------------------------------------------------------
    @staticmethod
    def fp32_copy(values: torch.Tensor) -> torch.Tensor:
        """A float32 copy of ``values`` in a pooled buffer (return it with ``give_buffer``)."""
        return take_buffer(values.device, values.numel())[: values.numel()].copy_(values)

    def rounding_for(self, block: Block) -> str:
        return rounding.resolve_rounding(self.update_rounding, block.param.dtype)

    def update_pass(self, ctx: StepContext, rule: Callable[[StepContext, Block, slice, torch.Tensor, torch.Tensor], Any],
                    blocks: list[Block] | None = None, *, seed: int | None = None) -> dict[int, list[Any]]:
        """``rule(ctx, block, span, z, work)`` on every piece of every block (``ctx.blocks`` by default):
        z is z_b under ``seed`` (s_t by default), ``work`` θ_b's piece in float32 (θ itself for float32
        and wider weights); afterwards ``work`` is rounded into θ as ``update_rounding`` says, with
        rounding bits keyed by (the same seed, block, sub-chunk). Pieces run on the drawing threads,
        so ``rule`` must touch only its piece; what it returns comes back per block, in piece order."""
        seed = ctx.seed if seed is None else seed
        blocks = ctx.blocks if blocks is None else blocks
        jobs = []
        for block in blocks:
            stored = block.param.data.view(-1)
            mode = self.rounding_for(block)

            def piece(span: slice, z: torch.Tensor, block=block, stored=stored, mode=mode) -> Any:
                if stored.dtype not in rounding.HALF:  # float32 and wider: the rule works on θ itself
                    return rule(ctx, block, span, z, stored[span])
                work = self.fp32_copy(stored[span])
                value = rule(ctx, block, span, z, work)
                rounding.store(stored[span], work, mode, seed, block.index, span.start)
                give_buffer(work)
                return value

            jobs.append(self.piece_job(ctx, block, piece, seed=seed))
        return dict(zip((b.index for b in blocks), self.directions.run_jobs(jobs)))

    def restore_span(self, ctx: StepContext, block: Block, d: torch.Tensor, work: torch.Tensor) -> None:
        """After an in-place probe, θ_b + ε_b·d_b on one piece (a no-op after an exact probe)."""
        if ctx.restore:
            work.add_(d, alpha=block.group["eps"])

    def sgd_span(self, ctx: StepContext, block: Block, span: slice, z: torch.Tensor, work: torch.Tensor,
                 coefficient: float) -> None:
        """The MeZO rule on one piece: restore, decoupled decay, then θ ← θ − lr·coefficient·d."""
        d = self.transform(ctx, block, span, z)
        self.restore_span(ctx, block, d, work)
        lr, wd = block.group["lr"], block.group["weight_decay"]
        if wd:
            work.mul_(1.0 - lr * wd)
        work.add_(d, alpha=-lr * coefficient)

    def block_gradient(self, block: Block, losses: list[float]) -> float:
        """g_b = (ℓ+ − ℓ−)/(2ε_b): with a per-group ε each block divides by its own (unbiased for ∇_b L)."""
        return (losses[0] - losses[1]) / (2 * block.group["eps"])

    # records, metrics, state ------------------------------------------------------------------------
    def record(self, **entry: Any) -> None:
        """Append one step's replay record to the trajectory (with the RNG contract it was drawn under); its
        ``step`` counts from 1, as metrics.jsonl does (the step's seed is recorded, not derived from it)."""
        self.trajectory.append({**entry, "rng": RNG_CONTRACT_VERSION})

    def probe_stats(self, loss: float, loss_plus: float, projected_grad: float) -> dict[str, float]:
        """The per-step metrics every method logs (methods add their own prefixed keys)."""
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
        """What the run summary records about this optimizer: its state size, probe and rounding, and more."""
        return {"state_bytes": self.state_bytes(), "probe": self.probe_mode, "update_rounding": self.update_rounding,
                "directions": self.directions.distribution, "rng_contract": RNG_CONTRACT_VERSION}

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["zo"] = {"seed": self.seed, "steps_taken": self.steps_taken, "forward_passes": self.forward_passes,
                       "skipped_steps": self.skipped_steps, "empty_steps": self.empty_steps,
                       "flat_steps": self.flat_steps}
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
            self.empty_steps = zo.get("empty_steps", 0)
            self.flat_steps = zo.get("flat_steps", 0)  # checkpoints before the counter have none
