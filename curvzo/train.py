"""The explicit training loop: ZO or first-order steps, dev evaluation, best-dev selection.

Selection follows protocol.md §8: at step 0 and every ``eval_every`` steps (and at the last step)
dev and test are scored; the kept model is the best by ``select_by`` (dev loss, as MeZO's
``load_best_model_at_end``, or the dev metric), and the reported test score is the one at that
point. This equals reloading the best model at the end and testing it, without a checkpoint. The
test score never drives a choice.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from curvzo import distributed
from curvzo.example import Example
from curvzo.loggers import MetricLogger
from curvzo.minibatch import MinibatchLoss
from curvzo.objectives import CandidateClassification
from curvzo.optim.base import ZerothOrderOptimizer
from curvzo.optim.streams import Stream, stream_seed
from curvzo.preemption import Preempted, StopRequest, stop_status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopSettings:
    """The fixed budget of one run (the ``budget`` config group) and its selection rule."""

    max_steps: int
    batch_size: int
    eval_every: int
    eval_batch_size: int
    max_length: int
    select_by: str = "dev_loss"  # dev_loss (MeZO) | dev_metric (the task's accuracy or F1) | last (the final model)
    max_nonfinite_streak: int = 10
    log_every: int = 1
    max_forward_passes: int | None = None  # never exceed this many in training (equal-cost comparisons)
    eval_every_forward_passes: int | None = None  # evaluate on a forward-pass cadence instead of steps
    micro_batch_size: int | None = None  # examples per forward chunk of a minibatch (per rank); None: the whole batch


@dataclass
class LoopResult:
    """What the run summary reports about training and evaluation."""

    status: str = "finished"
    steps: int = 0
    forward_passes: int = 0
    skipped_steps: int = 0
    flat_steps: int = 0  # ZO steps whose probe losses were all equal: a zero estimate (training on a metric)
    zero_shot: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    test_at_best: dict = field(default_factory=dict)
    last_dev: dict = field(default_factory=dict)
    train_time_s: float = 0.0  # training and in-loop evaluation
    step_time_s: float = 0.0  # optimizer steps only (data, forward passes, perturbations, update)


@torch.inference_mode()
def evaluate(model, tokenizer, objective, examples: Sequence[Example], batch_size: int, max_length: int,
             device) -> dict:
    """The objective's loss and metrics on ``examples``, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    try:
        return objective.evaluate(model, tokenizer, examples, batch_size, max_length, device)
    finally:
        model.train(was_training)


def training_batches(examples: Sequence[Example], batch_size: int, seed: int,
                     stream: Stream = Stream.DATA_ORDER) -> Iterator[list[Example]]:
    """Endless seeded epochs of shuffled minibatches (the last batch of an epoch may be short)."""
    if not examples:  # an endless loop over nothing would never reach a step boundary
        raise ValueError("no training examples to draw minibatches from")
    rng = np.random.default_rng(stream_seed(seed, stream))
    while True:
        order = rng.permutation(len(examples))
        for start in range(0, len(order), batch_size):
            yield [examples[i] for i in order[start:start + batch_size]]


class TrainingLoop:
    """Runs one fine-tuning job on prepared splits; ``optimizer=None`` evaluates only."""

    def __init__(self, model, tokenizer, device, optimizer, scheduler, splits, settings: LoopSettings,
                 logger: MetricLogger, seed: int, trajectory_file=None, objective=None, *,
                 checkpoint_every: int | None = None, save_checkpoint: Callable[[int, dict], None] | None = None,
                 stop: StopRequest | None = None, resume_state: dict | None = None) -> None:
        """``save_checkpoint(step, self.state(...))`` runs every ``checkpoint_every`` steps, at the end,
        and when ``stop`` reports a signal (then :class:`Preempted` is raised); ``resume_state`` (a
        saved :meth:`state`, with the weights and optimizer already restored) continues a run."""
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.objective = objective if objective is not None else CandidateClassification()
        self.optimizer, self.scheduler = optimizer, scheduler
        self.zeroth_order = isinstance(optimizer, ZerothOrderOptimizer)  # else a torch optimizer fed by backward
        self.splits, self.settings, self.logger, self.seed = splits, settings, logger, seed
        self.trajectory_file = trajectory_file
        self.checkpoint_every, self.save_checkpoint, self.stop = checkpoint_every, save_checkpoint, stop
        self.resume_state = resume_state
        self.result = LoopResult(**resume_state["result"]) if resume_state else LoopResult()
        self.minibatch_loss = MinibatchLoss(model, tokenizer, self.objective, settings.max_length, device,
                                            settings.micro_batch_size)
        self._start = time.perf_counter() - (resume_state["elapsed_s"] if resume_state else 0.0)
        self._extra_batches_drawn = 0

    # evaluation ------------------------------------------------------------------------------
    def _eval(self, examples) -> dict:
        s = self.settings
        if not examples:
            return {"loss": float("nan"), **{m: float("nan") for m in self.objective.metrics}, "n": 0}
        return evaluate(self.model, self.tokenizer, self.objective, examples, s.eval_batch_size, s.max_length,
                        self.device)

    def _dev_key(self, dev: dict) -> float:
        if self.settings.select_by == "last":  # MeZO --evaluation_strategy no: the final model, whatever dev says
            return -float(self.result.steps)
        return dev["loss"] if self.settings.select_by == "dev_loss" else -dev[self.objective.metric]

    def evaluation_point(self, step: int) -> None:
        """Score dev and test, update the dev-selected best, log both."""
        dev, test = self._eval(self.splits.dev), self._eval(self.splits.test)
        metrics = ["loss", *self.objective.metrics]
        row = {f"eval/dev_{k}": dev[k] for k in metrics} | {f"eval/test_{k}": test[k] for k in metrics}
        self.result.last_dev = {"step": step, **dev}
        if step == 0:
            self.result.zero_shot = {f"test_{k}": test[k] for k in metrics} | {f"dev_{k}": dev[k] for k in metrics}
        best = self.result.best
        improved = not best or (math.isfinite(self._dev_key(dev)) and self._dev_key(dev) < best["key"])
        if improved:
            self.result.best = {"step": step, "key": self._dev_key(dev), **{f"dev_{k}": dev[k] for k in metrics}}
            self.result.test_at_best = {"step": step, **{f"test_{k}": test[k] for k in metrics}}
        row["eval/selected_step"] = self.result.best["step"]
        self.logger.log_dict({**row, **self._counters()}, step=step)

    def _counters(self) -> dict:
        return {"zo/forward_passes": self.result.forward_passes, "time/elapsed_s": time.perf_counter() - self._start}

    # training --------------------------------------------------------------------------------
    def _extra_closures(self, skip: int = 0) -> Iterator:
        """Closures over minibatches from a second data order, encoded only when drawn (DiZO's probes);
        the first ``skip`` batches (drawn before a checkpoint) are passed over without encoding."""
        s = self.settings
        for drawn, examples in enumerate(training_batches(self.splits.train, s.batch_size, self.seed,
                                                          Stream.EXTRA_BATCHES)):
            if drawn < skip:
                continue
            self._extra_batches_drawn = drawn + 1
            yield self.minibatch_loss.closure(examples)

    def state(self, step: int, streak: int) -> dict:
        """The loop's part of a checkpoint after ``step``: JSON only (weights are the caller's)."""
        return {
            "step": step,
            "streak": streak,
            "result": asdict(self.result),
            "elapsed_s": time.perf_counter() - self._start,
            "extra_batches": self._extra_batches_drawn,
            "lrs": [float(g["lr"]) for g in self.optimizer.param_groups],
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def _zo_step(self, examples) -> float:
        self.model.eval()  # ZO probes run without dropout (MeZO zo_forward)
        loss = self.optimizer.step(self.minibatch_loss.closure(examples))
        self.result.forward_passes = self.optimizer.forward_passes
        self.result.skipped_steps = self.optimizer.skipped_steps
        self.result.flat_steps = self.optimizer.flat_steps
        return loss

    def _first_order_step(self, examples) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        batch = self.minibatch_loss.encode(examples)
        loss = self.objective.loss(self.model, batch)
        self.result.forward_passes += 1
        if not torch.isfinite(loss):
            self.result.skipped_steps += 1
            return float("nan")
        loss.backward()
        self.optimizer.step()
        return float(loss)

    def run(self) -> LoopResult:
        """Evaluate zero-shot, train for the budget (if there is an optimizer), return the result."""
        s = self.settings
        resume = self.resume_state or {}
        if not resume:  # a resumed run evaluated step 0 before it was stopped
            self.evaluation_point(0)
            metric = self.objective.metric
            log.info("zero-shot: dev %s %.4f, test %s %.4f", metric, self.result.zero_shot[f"dev_{metric}"], metric,
                     self.result.zero_shot[f"test_{metric}"])
        if self.optimizer is None:
            self.result.train_time_s = time.perf_counter() - self._start
            return self.result
        if self.zeroth_order and self.optimizer.uses_extra_batches:
            self.optimizer.set_extra_batches(self._extra_closures(skip=resume.get("extra_batches", 0)))
            self._extra_batches_drawn = resume.get("extra_batches", 0)
        batches = training_batches(self.splits.train, s.batch_size, self.seed)
        first = resume.get("step", 0) + 1
        for _ in range(first - 1):  # the data order is a pure function of the seed: skip what was trained on
            next(batches)
        streak = resume.get("streak", 0)
        bar = tqdm(total=s.max_steps, initial=first - 1, desc="train", unit="step", dynamic_ncols=True,
                   disable=not distributed.world().is_main)
        try:
            for step in range(first, s.max_steps + 1):
                if self._out_of_passes():  # the budget is checked before a step, never after
                    break
                t0 = time.perf_counter()
                passes_before = self.result.forward_passes
                examples = next(batches)
                loss = self._zo_step(examples) if self.zeroth_order else self._first_order_step(examples)
                lr = float(self.optimizer.param_groups[0]["lr"])
                if self.scheduler is not None:
                    self.scheduler.step()
                self.result.steps = step
                streak = self._nonfinite_streak(streak, loss)
                step_time = time.perf_counter() - t0
                self.result.step_time_s += step_time
                self._log_step(step, loss, lr, step_time)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # before update: the bar shows this step's loss
                bar.update(1)
                if streak >= s.max_nonfinite_streak:
                    self.result.status = "stopped_nonfinite"
                    log.error("stopping: %d non-finite losses in a row at step %d", streak, step)
                    break
                out_of_passes = self._out_of_passes()
                if self._eval_due(step, passes_before) or out_of_passes:
                    self.evaluation_point(step)
                self._maybe_checkpoint(step, streak, last=out_of_passes or step == s.max_steps)
                if out_of_passes:
                    break
        finally:
            bar.close()
        self.result.train_time_s = time.perf_counter() - self._start
        return self.result

    def _maybe_checkpoint(self, step: int, streak: int, last: bool) -> None:
        """Checkpoint on the cadence, at the last step, and on a stop signal (then raise Preempted)."""
        # every rank stops at the same step boundary, whichever rank the signal reached
        signum = distributed.agreed_stop(self.stop.requested if self.stop is not None else None)
        due = self.checkpoint_every is not None and (step % self.checkpoint_every == 0 or last)
        if self.save_checkpoint is not None and (due or signum is not None):
            self.save_checkpoint(step, self.state(step, streak))
        if signum is not None:
            self.result.status = stop_status(signum)
            raise Preempted(signum, step)

    def _nonfinite_streak(self, streak: int, loss: float) -> int:
        """Steps in a row whose loss was not finite; an empty ZO step (no forward pass) neither adds nor resets."""
        if not self.zeroth_order:
            return streak + 1 if not math.isfinite(loss) else 0
        outcome = self.optimizer.last_outcome
        return streak + 1 if outcome == "skipped" else streak if outcome == "empty" else 0

    def _out_of_passes(self) -> bool:
        """Whether the next step would spend more forward passes than ``budget.max_forward_passes`` allows."""
        limit = self.settings.max_forward_passes
        return limit is not None and self.result.forward_passes + self._next_step_cost() > limit

    def _next_step_cost(self) -> int:
        """Forward passes the next step will spend: the optimizer says (DiZO's vary); a first-order step is 1."""
        return self.optimizer.forward_passes_next_step() if self.zeroth_order else 1

    def _eval_due(self, step: int, passes_before: int) -> bool:
        """On the step cadence, or each time the forward-pass count crosses a multiple of its cadence."""
        s = self.settings
        if step == s.max_steps:
            return True
        if s.eval_every_forward_passes is None:
            return step % s.eval_every == 0
        every = s.eval_every_forward_passes
        return self.result.forward_passes // every > passes_before // every

    def _log_step(self, step: int, loss: float, lr: float, step_time: float) -> None:
        stats = dict(self.optimizer.last_stats) if self.zeroth_order else {}
        stats.setdefault("train/loss", loss)
        stats.setdefault("zo/projected_grad", None)
        stats["zo/forward_passes"] = self.result.forward_passes
        stats["zo/skipped_steps"] = self.result.skipped_steps
        if self.trajectory_file is not None and self.zeroth_order and self.optimizer.trajectory:
            self.trajectory_file.write(json.dumps(self.optimizer.trajectory[-1]) + "\n")
            self.trajectory_file.flush()
        if step % self.settings.log_every == 0 or step == self.settings.max_steps:
            self.logger.log_dict({**stats, "lr": lr, "sys/step_time_s": step_time,
                                  "time/elapsed_s": time.perf_counter() - self._start}, step=step)
