"""LOREN: low-rank curvature ZO with an NES-learned perturbation covariance and RLOO (optimizers.md §10).

Seung, Lee, Ko, "Low-Rank Curvature for Zeroth-Order Optimization in LLM Fine-Tuning" (AAAI-26,
arXiv 2511.07971); official code ``hseung88/loren`` (``model/glue_transformer_loren.py``).
Per tensor X, viewed row-major as (m, n), a vector a in R^n defines ā = 1_m ⊗ a and the covariance
Σ = I − āāᵀ/(ρ + s), s = ‖ā‖². A step draws K one-sided probes θ + εz_k with z_k = u_k − κ p_k ā,
p_k = āᵀu_k, weighs them with the leave-one-out baseline w_k = (f_k − f̄)/(ε(K − 1)), and applies K
sequential sub-updates: heavy-ball momentum on ≥2-D tensors, decoupled weight decay, and a
score-function step on a. Quirks and switches: spec §10 and decision 8 of §12.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from curvzo.errors import ConfigError
from curvzo.optim.base import (
    STATE_DTYPES,
    Block,
    ZerothOrderOptimizer,
    check_choice,
    check_nonnegative,
    check_positive,
    state_buffer,
)
from curvzo.optim.directions import mix64

_INIT_STREAM = 5  # sub-stream tag of the initial a (1 step seeds, 2 data order, 3 CurvZO draws, 4 extra batches)

COV_FORMS = ("tied", "per_row")
COV_UPDATES = ("per_sample", "per_step")


def matrix_shape(param: torch.Tensor) -> tuple[int, int]:
    """(m, n) of the row-major view LOREN factorises: n = size(1) for ≥2-D tensors, else m = 1."""
    if param.dim() >= 2:
        n = param.size(1)
        return param.numel() // n, n
    return 1, param.numel()


class Segment(NamedTuple):
    """A row-aligned piece [lo, hi) of a chunk: ``rows`` full rows from ``row``, or (rows = 0) part of one row."""

    lo: int
    hi: int
    row: int
    col: int
    rows: int


def row_segments(start: int, stop: int, n: int) -> list[Segment]:
    """Split the flat span [start, stop) of an (m, n) row-major tensor into a partial head row, a block
    of full rows and a partial tail row (offsets relative to ``start``); chunks do not align with rows."""
    segments, pos = [], start
    row, col = divmod(start, n)
    if col:
        end = min(stop, start + n - col)
        segments.append(Segment(0, end - start, row, col, 0))
        pos, row = end, row + 1
    rows = (stop - pos) // n
    if rows:
        segments.append(Segment(pos - start, pos - start + rows * n, row, 0, rows))
        pos, row = pos + rows * n, row + rows
    if pos < stop:
        segments.append(Segment(pos - start, stop - start, row, 0, 0))
    return segments


def _pieces(v: torch.Tensor, segments: list[Segment], n: int):
    """(segment, view): full-row segments come as (rows, n) views, partial rows as 1-D views."""
    for seg in segments:
        piece = v[seg.lo:seg.hi]
        yield seg, (piece.view(seg.rows, n) if seg.rows else piece)


class Query(NamedTuple):
    """What z_k needs besides u: p (0-d when tied, one per row for per_row), κ, s; colsum(U) when tied."""

    p: torch.Tensor
    kappa: torch.Tensor
    s: torch.Tensor
    colsum: torch.Tensor | None


class LOREN(ZerothOrderOptimizer):
    """LOREN (optimizers.md §10): K one-sided probes per step, K sequential sub-updates.

    Every keyword mirrors ``conf/optimizer/loren.yaml``, where each default carries its source.
    State per tensor: ``cov_factor`` a (float32, length n) and, for ≥2-D tensors only, a full-size
    ``momentum_buffer`` (float32, or the weights' dtype with ``state_dtype="param"``).
    Costs per step: K forward passes; 4K regenerations of u for ``cov_form="tied"`` (column sums of u,
    perturb, restore, update: streaming in chunks cannot know p = āᵀu before a chunk is drawn, so it
    takes one more than the official code's 3K) and 5K for ``per_row`` (p = U a is recomputed before
    the update pass because it cannot be cached in n floats).
    """

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, num_queries: int = 10, damping: float = 0.1,
                 lr_cov: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0, *, seed: int = 0,
                 cov_form: str = "tied", cov_update: str = "per_sample", fix_1d_cov_grad: bool = False,
                 state_dtype: str = "fp32") -> None:
        self.eps = check_positive("eps", eps)
        if not isinstance(num_queries, int) or isinstance(num_queries, bool) or num_queries < 2:
            raise ConfigError(f"optimizer.num_queries must be an integer >= 2 (RLOO needs two), got {num_queries!r}")
        self.num_queries = num_queries
        self.forward_passes_per_step = num_queries  # K one-sided probes, no centre pass
        self.damping = check_positive("damping", damping)
        self.lr_cov = check_nonnegative("lr_cov", lr_cov)
        if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0 <= momentum < 1:
            raise ConfigError(f"optimizer.momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.cov_form = check_choice("cov_form", cov_form, COV_FORMS)
        self.cov_update = check_choice("cov_update", cov_update, COV_UPDATES)
        if not isinstance(fix_1d_cov_grad, bool):
            raise ConfigError(f"optimizer.fix_1d_cov_grad must be true or false, got {fix_1d_cov_grad!r}")
        self.fix_1d_cov_grad = fix_1d_cov_grad
        self.state_dtype = check_choice("state_dtype", state_dtype, STATE_DTYPES)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, seed=seed)
        self._blocks = [b for b in self.blocks if b.param.numel() > 0]
        for block in self._blocks:
            n = matrix_shape(block.param)[1]
            # a ~ N(0, I) from its own stream, drawn on the CPU so it does not depend on the device
            gen = torch.Generator().manual_seed(mix64(self.seed, _INIT_STREAM, block.index))
            state = self.state[block.param]
            state["cov_factor"] = torch.randn(n, generator=gen, dtype=torch.float32).to(block.param.device)
            if block.param.dim() >= 2:  # the code keeps no momentum for 1-D tensors (§10 quirk 4)
                state["momentum_buffer"] = state_buffer(block.param, self.state_dtype)

    # z = u − κ p ā, streamed ----------------------------------------------------------------------------
    def _spans(self, block: Block, seed: int):
        n = matrix_shape(block.param)[1]
        for span, u in self.directions.spans(block.param, seed, block.index):
            yield span, u, row_segments(span.start, span.stop, n)

    def _query(self, block: Block, seed: int, a: torch.Tensor, colsums: dict, k: int) -> Query:
        """p, κ, s of query k under the current a. Tied: p = a·colsum(U), colsum cached per (k, tensor)."""
        m, n = matrix_shape(block.param)
        if self.cov_form == "tied":
            key = (k, block.index)
            if key not in colsums:
                colsum = torch.zeros(n, dtype=torch.float32, device=a.device)
                for _, u, segments in self._spans(block, seed):
                    for seg, piece in _pieces(u, segments, n):
                        if seg.rows:
                            colsum.add_(piece.sum(0))
                        else:
                            colsum[seg.col:seg.col + seg.hi - seg.lo].add_(piece)
                colsums[key] = colsum
            colsum = colsums[key]
            p, s = torch.dot(a, colsum), m * torch.dot(a, a)
        else:
            colsum = None
            p = torch.zeros(m, dtype=torch.float32, device=a.device)
            for _, u, segments in self._spans(block, seed):
                for seg, piece in _pieces(u, segments, n):
                    if seg.rows:
                        p[seg.row:seg.row + seg.rows].addmv_(piece, a)
                    else:
                        p[seg.row:seg.row + 1].add_(torch.dot(piece, a[seg.col:seg.col + seg.hi - seg.lo]))
            s = torch.dot(a, a)
        root = torch.sqrt(self.damping + s)
        kappa = (math.sqrt(self.damping) + root) / (s * root)
        return Query(p, kappa, s, colsum)

    @staticmethod
    def _to_z(u: torch.Tensor, segments: list[Segment], n: int, a: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """u −= coef_row · ā in place (coef = κp: 0-d when tied, one per row for per_row); returns z."""
        for seg, piece in _pieces(u, segments, n):
            if coef.dim() == 0:
                c = coef
            else:
                c = coef[seg.row:seg.row + seg.rows, None] if seg.rows else coef[seg.row]
            piece.addcmul_(a if seg.rows else a[seg.col:seg.col + seg.hi - seg.lo], c, value=-1.0)
        return u

    def _shift(self, block: Block, seed: int, q: Query, scale: float) -> None:
        """θ_X += scale · z (probe and restore regenerate the identical z)."""
        a, n = self.state[block.param]["cov_factor"], matrix_shape(block.param)[1]
        flat, coef = block.param.data.view(-1), q.kappa * q.p
        for span, u, segments in self._spans(block, seed):
            flat[span].add_(self._to_z(u, segments, n, a, coef), alpha=scale)

    def perturbation(self, block_index: int, seed: int) -> torch.Tensor:
        """z of block ``block_index`` for query seed ``seed`` under the current a, as a new float32
        tensor shaped like the parameter (tests and analysis; query k of step t uses mix64(s_t, k))."""
        block = self.blocks[block_index]
        a, n = self.state[block.param]["cov_factor"], matrix_shape(block.param)[1]
        q = self._query(block, seed, a, {}, 0)
        parts = [self._to_z(u, segments, n, a, q.kappa * q.p).clone() for _, u, segments in self._spans(block, seed)]
        return torch.cat(parts).view(block.param.shape)

    def _update_pass(self, block: Block, seed: int, a: torch.Tensor, q: Query, w: float) -> torch.Tensor | None:
        """One sub-update of X (momentum for ≥2-D, decoupled decay); per_row also returns Uᵀp for G_a."""
        n = matrix_shape(block.param)[1]
        lr, wd = block.group["lr"], block.group["weight_decay"]
        flat, coef = block.param.data.view(-1), q.kappa * q.p
        buf = self.state[block.param].get("momentum_buffer")
        buf_flat = None if buf is None else buf.view(-1)
        utp = None if q.colsum is not None else torch.zeros(n, dtype=torch.float32, device=a.device)
        for span, u, segments in self._spans(block, seed):
            if utp is not None:  # Σ_i p_i u_i, taken before u is overwritten by z
                for seg, piece in _pieces(u, segments, n):
                    if seg.rows:
                        utp.addmv_(piece.t(), q.p[seg.row:seg.row + seg.rows])
                    else:
                        utp[seg.col:seg.col + seg.hi - seg.lo].addcmul_(piece, q.p[seg.row])
            z = self._to_z(u, segments, n, a, coef)
            x = flat[span]
            if wd:
                x.mul_(1.0 - lr * wd)
            if buf_flat is None:
                x.add_(z, alpha=-lr * w)
                continue
            stored = buf_flat[span]
            mom = stored if stored.dtype == torch.float32 else stored.float()  # fp32 math per chunk
            mom.mul_(self.momentum).add_(z, alpha=w)
            if mom is not stored:
                stored.copy_(mom)
            x.add_(stored, alpha=-lr)  # the code steps along M as stored
        return utp

    def _cov_grad(self, block: Block, a: torch.Tensor, q: Query, utp: torch.Tensor | None, c: float) -> torch.Tensor:
        """G_a = c · Σ_rows [(p u − κ p² ā)/√(ρ+s) + √ρ ā/(ρ+s)], c = ε²(f_k − f̄)/(K − 1)."""
        m = matrix_shape(block.param)[0]
        if q.colsum is not None:  # tied: every row shares p, so Σ_i p u_i = p·colsum(U)
            first, p_sq = q.p * q.colsum, m * q.p * q.p
        else:
            first, p_sq = utp, torch.dot(q.p, q.p)
        root = torch.sqrt(self.damping + q.s)
        grad = first / root + a * (m * math.sqrt(self.damping) / root**2 - q.kappa * p_sq / root)
        grad = grad * c
        if block.param.dim() < 2 and not self.fix_1d_cov_grad:
            grad = grad.sum().expand_as(a)  # the code's .sum(0) gives a scalar for 1-D tensors (§10 quirk 2)
        return grad

    def _step_cov(self, block: Block, grad: torch.Tensor) -> None:
        a = self.state[block.param]["cov_factor"]
        wd = block.group["weight_decay"]
        if wd:
            a.mul_(1.0 - self.lr_cov * wd)
        a.add_(grad, alpha=-self.lr_cov)

    # the step -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> float:  # type: ignore[override]
        """One LOREN step (K forward passes); returns the mean probe loss, NaN if skipped."""
        step, seed = self.begin_step(closure)
        K, eps = self.num_queries, self.eps
        seeds = [mix64(seed, k) for k in range(K)]
        colsums: dict = {}
        losses: list[float] = []
        for k in range(K):
            queries = [self._query(b, seeds[k], self.state[b.param]["cov_factor"], colsums, k) for b in self._blocks]
            for block, q in zip(self._blocks, queries):
                self._shift(block, seeds[k], q, +eps)
            losses.append(self.probe(closure))
            for block, q in zip(self._blocks, queries):
                self._shift(block, seeds[k], q, -eps)
            if not math.isfinite(losses[-1]):  # θ restored; stop probing, leave θ, M and a as they were
                self.skip(step, seed, tuple(losses))
                return float("nan")

        mean = math.fsum(losses) / K
        weights = [(f - mean) / (eps * (K - 1)) for f in losses]
        pending: dict[int, list[torch.Tensor]] = {b.index: [] for b in self._blocks}
        for k in range(K):
            c = eps * eps * (losses[k] - mean) / (K - 1)
            for block in self._blocks:
                a = self.state[block.param]["cov_factor"]  # per_step: not yet changed in this step
                q = self._query(block, seeds[k], a, colsums, k)
                utp = self._update_pass(block, seeds[k], a, q, weights[k])
                if not self.lr_cov:
                    continue
                grad = self._cov_grad(block, a, q, utp, c)
                if self.cov_update == "per_sample":
                    self._step_cov(block, grad)  # later z_k use the updated a (§10 quirk 3)
                else:
                    pending[block.index].append(grad)
        for block in self._blocks:  # per_step: the K sub-updates of a, all taken at the step-start a
            for grad in pending[block.index]:
                self._step_cov(block, grad)

        projected_grad = math.sqrt(math.fsum(w * w for w in weights))
        self.record(step=step, seed=seed, projected_grad=projected_grad, lr=self.lrs(), losses=list(losses))
        self.last_stats = self._diagnostics(losses, mean, projected_grad)
        return mean

    def _diagnostics(self, losses: list[float], mean: float, projected_grad: float) -> dict[str, float]:
        """Probe metrics plus LOREN's: ‖a‖ and the variance ρ/(ρ+s) that Σ leaves along ā."""
        stats = self.probe_stats(mean, losses[0], projected_grad)
        stats["loren/loss_std"] = math.sqrt(math.fsum((f - mean) ** 2 for f in losses) / (len(losses) - 1))
        if self._blocks:
            norms = [self.state[b.param]["cov_factor"].double().square().sum() for b in self._blocks]
            one_device = len({x.device for x in norms}) == 1  # then a single transfer, not one per tensor
            sq = torch.stack(norms).cpu() if one_device else torch.stack([x.cpu() for x in norms])
            rows = torch.tensor([matrix_shape(b.param)[0] if self.cov_form == "tied" else 1 for b in self._blocks],
                                dtype=torch.float64)
            variance = self.damping / (self.damping + rows * sq)
            stats.update({"loren/a_norm_mean": float(sq.sqrt().mean()),
                          "loren/var_along_a_min": float(variance.min()),
                          "loren/var_along_a_mean": float(variance.mean())})
        return stats

    def describe(self) -> dict[str, Any]:
        """State size plus the per-step costs (K forward passes; 4K or 5K regenerations of u)."""
        return {**super().describe(), "forward_passes_per_step": self.num_queries,
                "rng_passes_per_step": (4 if self.cov_form == "tied" else 5) * self.num_queries,
                "cov_form": self.cov_form, "cov_update": self.cov_update}
