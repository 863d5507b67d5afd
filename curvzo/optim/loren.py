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
from typing import Any, NamedTuple

import torch

from curvzo.errors import ConfigError
from curvzo.optim.base import StepContext, ZerothOrderOptimizer
from curvzo.optim.blocks import Block
from curvzo.optim.checks import (
    STATE_DTYPES,
    check_bool,
    check_choice,
    check_nonnegative,
    check_positive,
    check_unit_interval,
    state_buffer,
)
from curvzo.optim.directions import give_buffer, run_pieces, take_buffer
from curvzo.optim.loren_rows import (
    ColumnSums,
    matrix_shape,
    ordered_sum,
    row_pieces,
    row_segments,
    z_from_u,
)
from curvzo.optim.rounding import HALF
from curvzo.optim.streams import Stream, query_seed, stream_seed

COV_FORMS = ("tied", "per_row")
COV_UPDATES = ("per_sample", "per_step")


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
    Costs per step: K forward passes; 3K regenerations of u for ``cov_form="tied"`` (column sums of u,
    the probe, the update: streaming spans cannot know p = āᵀu before a span is drawn; the in-place
    probe adds its restore, 4K), 2K for the tensors the exact probe keeps u of (``retain_numel``: the
    column sums come from the probe's own draw), and one more per query for ``per_row`` (p = U a is
    recomputed before the update pass because it cannot be cached in n floats). The tied form's K sub-updates
    take one pass over the weights (``fused_update``), the per_row form's K passes.
    """

    #: the exact probe keeps u of a tensor up to this size (float32: 64 MB, an OPT-1.3B MLP matrix) so that the tied
    #: form draws it once per query instead of twice; a bigger one (a vocabulary embedding) is drawn twice
    retain_numel = 1 << 24
    #: the tied form takes its K sub-updates of X in one pass over the weights (each piece in float32 through all K,
    #: rounded once); False: K passes, the code's order, as the per_row form always does (tests compare the two)
    fused_update = True

    def __init__(self, params: Any, lr: float, eps: float = 1e-3, num_queries: int = 10, damping: float = 0.1,
                 lr_cov: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0, *, seed: int = 0,
                 cov_form: str = "tied", cov_update: str = "per_sample", fix_1d_cov_grad: bool = False,
                 state_dtype: str = "fp32", **options: Any) -> None:
        if not isinstance(num_queries, int) or isinstance(num_queries, bool) or num_queries < 2:
            raise ConfigError(f"optimizer.num_queries must be an integer >= 2 (RLOO needs two), got {num_queries!r}")
        self.num_queries = num_queries
        self.passes_per_step = num_queries  # K one-sided probes, no centre pass
        check_positive("damping", damping)
        check_nonnegative("lr_cov", lr_cov)
        check_unit_interval("momentum", momentum)
        self.cov_form = check_choice("cov_form", cov_form, COV_FORMS)
        self.cov_update = check_choice("cov_update", cov_update, COV_UPDATES)
        self.fix_1d_cov_grad = check_bool("fix_1d_cov_grad", fix_1d_cov_grad)
        self.state_dtype = check_choice("state_dtype", state_dtype, STATE_DTYPES)
        super().__init__(params, {"lr": lr, "eps": eps, "damping": damping, "lr_cov": lr_cov, "momentum": momentum,
                                  "weight_decay": weight_decay}, seed=seed, **options)
        for group in self.param_groups:
            check_positive("damping", group["damping"])
            check_nonnegative("lr_cov", group["lr_cov"])
            check_unit_interval("momentum", group["momentum"])
        self._blocks = [b for b in self.blocks if b.param.numel() > 0]
        for block in self._blocks:
            n = matrix_shape(block.param)[1]
            # a ~ N(0, I) from its own stream, drawn on the CPU so it does not depend on the device
            gen = torch.Generator().manual_seed(stream_seed(self.seed, Stream.LOREN_INIT, block.index))
            state = self.state[block.param]
            state["cov_factor"] = torch.randn(n, generator=gen, dtype=torch.float32).to(block.param.device)
            if block.param.dim() >= 2:  # the code keeps no momentum for 1-D tensors (§10 quirk 4)
                state["momentum_buffer"] = state_buffer(block.param, self.state_dtype)

    # z = u − κ p ā, streamed ----------------------------------------------------------------------------
    def _query(self, block: Block, seed: int, a: torch.Tensor, colsums: ColumnSums | None, k: int) -> Query:
        """p, κ, s of query k under the current a. Tied: p = a·colsum(U), colsum cached per (k, tensor).
        Partial sums come back per piece and are added in piece order (the same bits for any thread count)."""
        m, n = matrix_shape(block.param)
        if self.cov_form == "tied":
            key = (k, block.index)
            if key not in colsums:
                self._column_sums(block, seed, a.device, out=colsums.slot(key))
            colsum = colsums[key]
            p, s = torch.dot(a, colsum), m * torch.dot(a, a)
        else:
            colsum = None

            def row_products(span: slice, u: torch.Tensor) -> torch.Tensor:
                part = torch.zeros(m, dtype=torch.float32, device=a.device)
                for seg, piece in row_pieces(u, row_segments(span.start, span.stop, n), n):
                    if seg.rows:
                        part[seg.row:seg.row + seg.rows].addmv_(piece, a)
                    else:
                        part[seg.row:seg.row + 1].add_(torch.dot(piece, a[seg.col:seg.col + seg.hi - seg.lo]))
                return part
            p = ordered_sum(self.directions.for_each_piece(block.param, seed, block.index, row_products), m, a.device)
            s = torch.dot(a, a)
        damping = block.group["damping"]
        root = torch.sqrt(damping + s)
        kappa = (math.sqrt(damping) + root) / (s * root)
        return Query(p, kappa, s, colsum)

    def _column_sums(self, block: Block, seed: int, device: torch.device, into: torch.Tensor | None = None,
                     out: torch.Tensor | None = None) -> tuple[torch.Tensor, list[slice]]:
        """colsum(U) of query ``seed`` (added in piece order, into ``out`` if given) and the pieces' spans; u is
        left in ``into`` if given."""
        n = matrix_shape(block.param)[1]

        def column_sums(span: slice, u: torch.Tensor) -> tuple[slice, torch.Tensor]:
            part = torch.zeros(n, dtype=torch.float32, device=device)
            for seg, piece in row_pieces(u, row_segments(span.start, span.stop, n), n):
                if seg.rows:
                    part.add_(piece.sum(0))
                else:
                    part[seg.col:seg.col + seg.hi - seg.lo].add_(piece)
            return span, part
        pieces = self.directions.for_each_piece(block.param, seed, block.index, column_sums, into=into)
        return ordered_sum([part for _, part in pieces], n, device, out), [span for span, _ in pieces]

    def _z_pieces(self, block: Block, seed: int, q: Query, fn, into: torch.Tensor | None = None) -> list:
        """``fn(span, z)`` over the pieces of query ``seed``'s z under the current a (on the drawing threads)."""
        a, n = self.state[block.param]["cov_factor"], matrix_shape(block.param)[1]
        coef = q.kappa * q.p

        def piece(span: slice, u: torch.Tensor):
            return fn(span, z_from_u(u, row_segments(span.start, span.stop, n), n, a, coef))
        return self.directions.for_each_piece(block.param, seed, block.index, piece, into=into)

    def perturbation(self, block_index: int, seed: int) -> torch.Tensor:
        """z of block ``block_index`` for query seed ``seed`` under the current a, as a new float32
        tensor shaped like the parameter (tests and analysis; query k of step t uses query_seed(s_t, k))."""
        block = self.blocks[block_index]
        q = self._query(block, seed, self.state[block.param]["cov_factor"], ColumnSums([block], 1), 0)
        out = torch.empty(block.param.numel(), dtype=torch.float32, device=block.param.device)
        self._z_pieces(block, seed, q, lambda span, z: None, into=out)
        return out.view(block.param.shape)

    # the probe: K one-sided queries -------------------------------------------------------------------------
    def probe(self, ctx: StepContext) -> list[float]:
        """f_k = L(θ + εz_k) for k = 1..K; stops at the first non-finite loss (θ is restored)."""
        colsums = ColumnSums(self._blocks, self.num_queries) if self.cov_form == "tied" else None
        ctx.plan = colsums  # the tied form's column sums, reused by the update
        if self.probe_mode == "exact":  # K independent passes (dealt over the ranks under query parallelism)
            closures = []
            for k in range(self.num_queries):
                def write(pairs: list, k=k) -> None:
                    for block, out in pairs:
                        self._write_perturbed(block, query_seed(ctx.seed, k), k, colsums, out)
                closures.append(lambda write=write: self.prober.loss(ctx.closure, self._blocks, write))
            return self.evaluate_queries(closures, stop_at_nonfinite=True)
        losses: list[float] = []
        for k in range(self.num_queries):
            seed = query_seed(ctx.seed, k)
            queries = {b.index: self._query(b, seed, self.state[b.param]["cov_factor"], colsums, k)
                       for b in self._blocks}
            for block in self._blocks:
                self._shift(block, seed, queries[block.index], +block.group["eps"])
            losses.append(self.evaluate(ctx.closure))
            for block in self._blocks:
                self._shift(block, seed, queries[block.index], -block.group["eps"])
            if not math.isfinite(losses[-1]):
                break
        return losses

    def _write_perturbed(self, block: Block, seed: int, k: int, colsums: ColumnSums | None,
                         out: torch.Tensor) -> None:
        """out ← θ + εz_k (float32 math, one rounding to the weight dtype).

        Tied form, column sums not yet known, tensor of at most ``retain_numel`` elements: u is drawn once into a
        kept buffer, which gives colsum(U), hence p, and then z, piece by piece with the same arithmetic as the
        streamed path (the same bits; ``tests/test_loren.py``). Otherwise u is drawn twice: for p, then for z."""
        stored, eps = block.param.data.view(-1), block.group["eps"]
        a = self.state[block.param]["cov_factor"]

        def piece(span: slice, z: torch.Tensor) -> None:
            if stored.dtype not in HALF:  # float32 (z drawn straight into the scratch), float64
                torch.add(stored[span], z, alpha=eps, out=out[span])
                return
            work = self.fp32_copy(stored[span])
            out[span].copy_(work.add_(z, alpha=eps))
            give_buffer(work)

        numel = stored.numel()
        if self.cov_form == "tied" and (k, block.index) not in colsums and numel <= self.retain_numel:
            u = out if stored.dtype == torch.float32 else take_buffer(stored.device, numel)[:numel]
            try:
                _, spans = self._column_sums(block, seed, a.device, into=u, out=colsums.slot((k, block.index)))
                q = self._query(block, seed, a, colsums, k)  # the column sums are known now: no draw
                n, coef = matrix_shape(block.param)[1], q.kappa * q.p

                def from_kept(i: int) -> None:
                    span = spans[i]
                    piece(span, z_from_u(u[span], row_segments(span.start, span.stop, n), n, a, coef))
                run_pieces(from_kept, len(spans), self.directions.workers if stored.device.type == "cpu" else 1)
            finally:
                if u is not out:
                    give_buffer(u)
            return
        q = self._query(block, seed, a, colsums, k)
        self._z_pieces(block, seed, q, piece, into=out if stored.dtype == torch.float32 else None)

    def _shift(self, block: Block, seed: int, q: Query, alpha: float) -> None:
        """In place: θ_X += alpha · z (probe and restore regenerate the identical z)."""
        stored = block.param.data.view(-1)

        def piece(span: slice, z: torch.Tensor) -> None:
            if stored.dtype not in HALF:
                stored[span].add_(z, alpha=alpha)
                return
            work = self.fp32_copy(stored[span])
            stored[span].copy_(work.add_(z, alpha=alpha))
            give_buffer(work)

        self._z_pieces(block, seed, q, piece)

    # the update: K sequential sub-updates of θ (momentum), and of a -------------------------------------------
    def update(self, ctx: StepContext, losses: list[float]) -> None:
        mean = math.fsum(losses) / self.num_queries
        eps = self.param_groups[0]["eps"]
        weights = [(f - mean) / (eps * (self.num_queries - 1)) for f in losses]
        if self.cov_form == "tied" and self.fused_update:
            self._fused_update(ctx, losses, mean, weights)
        else:
            self._sequential_update(ctx, losses, mean, weights)
        ctx.stats.update(self._diagnostics(losses, mean))

    def _sequential_update(self, ctx: StepContext, losses: list[float], mean: float, weights: list[float]) -> None:
        """The code's order: for k, for X, a pass over X (sub-update k), then a's step k (per_row needs its Uᵀp)."""
        self._in_query_order(ctx, losses, mean,
                             lambda k, block, seed, a, q: self._sub_update(ctx, block, seed, q, weights[k]))

    def _fused_update(self, ctx: StepContext, losses: list[float], mean: float, weights: list[float]) -> None:
        """Tied form: p_k, κ_k and G_a(k) follow from a and the probe's column sums alone, so a takes its K steps
        first (keeping the a each z_k is built from) and X its K sub-updates in one pass over the weights."""
        plans: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {b.index: [] for b in self._blocks}

        def keep(k: int, block: Block, seed: int, a: torch.Tensor, q: Query) -> None:
            plans[block.index].append((a.clone(), q.kappa * q.p))  # a is stepped in place after this

        self._in_query_order(ctx, losses, mean, keep)  # the probe's column sums: no draw
        seeds = [query_seed(ctx.seed, k) for k in range(self.num_queries)]
        self.update_pass(ctx, self._fused_rule(seeds, plans, weights), self._blocks, seed=seeds[0])

    def _in_query_order(self, ctx: StepContext, losses: list[float], mean: float, each) -> None:
        """For k, for X: ``each(k, block, seed, a, q)`` (it returns Uᵀp for per_row, else None), then a's step k:
        at once for per_sample (later z_k use the updated a, §10 quirk 3), after the loop for per_step (all K
        taken at the step-start a)."""
        K, colsums = self.num_queries, ctx.plan
        eps = self.param_groups[0]["eps"]
        pending: dict[int, list[torch.Tensor]] = {b.index: [] for b in self._blocks}
        for k in range(K):
            seed = query_seed(ctx.seed, k)
            c = eps * eps * (losses[k] - mean) / (K - 1)
            for block in self._blocks:
                a = self.state[block.param]["cov_factor"]
                q = self._query(block, seed, a, colsums, k)
                utp = each(k, block, seed, a, q)
                if not block.group["lr_cov"]:
                    continue
                grad = self._cov_grad(block, a, q, utp, c)
                if self.cov_update == "per_sample":
                    self._step_cov(block, grad)
                else:
                    pending[block.index].append(grad)
        for block in self._blocks:
            for grad in pending[block.index]:
                self._step_cov(block, grad)

    def _fused_rule(self, seeds: list[int], plans: dict, weights: list[float]):
        """The K sub-updates on one piece: z_1 comes from the pass, z_2..z_K are drawn here on this thread. The piece
        of X (and of M) stays in float32 through all K, so float32 weights get the bits of K passes and half-precision
        weights are rounded once per step instead of K times."""
        def rule(ctx: StepContext, block: Block, span: slice, u: torch.Tensor, x: torch.Tensor) -> None:
            n = matrix_shape(block.param)[1]
            segments = row_segments(span.start, span.stop, n)
            group = block.group
            lr, wd = group["lr"], group["weight_decay"]
            buf = self.state[block.param].get("momentum_buffer")
            stored = None if buf is None else buf.view(-1)[span]
            scratch = take_buffer(u.device, u.numel())[: u.numel()] if len(seeds) > 1 else None
            try:
                for k, seed in enumerate(seeds):
                    if k:
                        u = self.directions.fill(scratch, seed, block.index, span.start, workers=1)
                    a, coef = plans[block.index][k]
                    z = z_from_u(u, segments, n, a, coef)
                    if wd:
                        x.mul_(1.0 - lr * wd)
                    if stored is None:  # 1-D: no momentum (§10 quirk 4)
                        x.add_(z, alpha=-lr * weights[k])
                        continue
                    mom = stored if stored.dtype == torch.float32 else stored.float()
                    mom.mul_(group["momentum"]).add_(z, alpha=weights[k])
                    if mom is not stored:
                        stored.copy_(mom)
                    x.add_(stored, alpha=-lr)  # the code steps along M as stored
            finally:
                if scratch is not None:
                    give_buffer(scratch)
        return rule

    def _sub_update(self, ctx: StepContext, block: Block, seed: int, q: Query, w: float) -> torch.Tensor | None:
        """One sub-update of X (momentum for ≥2-D, decoupled decay); per_row also returns Uᵀp for G_a."""
        n = matrix_shape(block.param)[1]
        a = self.state[block.param]["cov_factor"]
        group = block.group
        lr, wd = group["lr"], group["weight_decay"]
        coef = q.kappa * q.p
        buf = self.state[block.param].get("momentum_buffer")
        buf_flat = None if buf is None else buf.view(-1)
        per_row = q.colsum is None

        def rule(ctx: StepContext, block: Block, span: slice, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
            segments = row_segments(span.start, span.stop, n)
            utp = None
            if per_row:  # this piece's Σ_i p_i u_i, taken before u is overwritten by z
                utp = torch.zeros(n, dtype=torch.float32, device=a.device)
                for seg, piece in row_pieces(u, segments, n):
                    if seg.rows:
                        utp.addmv_(piece.t(), q.p[seg.row:seg.row + seg.rows])
                    else:
                        utp[seg.col:seg.col + seg.hi - seg.lo].addcmul_(piece, q.p[seg.row])
            z = z_from_u(u, segments, n, a, coef)
            if wd:
                x.mul_(1.0 - lr * wd)
            if buf_flat is None:
                x.add_(z, alpha=-lr * w)
                return utp
            stored = buf_flat[span]
            mom = stored if stored.dtype == torch.float32 else stored.float()  # fp32 math per piece
            mom.mul_(group["momentum"]).add_(z, alpha=w)
            if mom is not stored:
                stored.copy_(mom)
            x.add_(stored, alpha=-lr)  # the code steps along M as stored
            return utp

        parts = self.update_pass(ctx, rule, [block], seed=seed)[block.index]
        return ordered_sum(parts, n, a.device) if per_row else None

    def _cov_grad(self, block: Block, a: torch.Tensor, q: Query, utp: torch.Tensor | None, c: float) -> torch.Tensor:
        """G_a = c · Σ_rows [(p u − κ p² ā)/√(ρ+s) + √ρ ā/(ρ+s)], c = ε²(f_k − f̄)/(K − 1)."""
        m = matrix_shape(block.param)[0]
        damping = block.group["damping"]
        if q.colsum is not None:  # tied: every row shares p, so Σ_i p u_i = p·colsum(U)
            first, p_sq = q.p * q.colsum, m * q.p * q.p
        else:
            first, p_sq = utp, torch.dot(q.p, q.p)
        root = torch.sqrt(damping + q.s)
        grad = first / root + a * (m * math.sqrt(damping) / root**2 - q.kappa * p_sq / root)
        grad = grad * c
        if block.param.dim() < 2 and not self.fix_1d_cov_grad:
            grad = grad.sum().expand_as(a)  # the code's .sum(0) gives a scalar for 1-D tensors (§10 quirk 2)
        return grad

    def _step_cov(self, block: Block, grad: torch.Tensor) -> None:
        a = self.state[block.param]["cov_factor"]
        lr_cov, wd = block.group["lr_cov"], block.group["weight_decay"]
        if wd:
            a.mul_(1.0 - lr_cov * wd)
        a.add_(grad, alpha=-lr_cov)

    # what the step reports ------------------------------------------------------------------------------------
    def reported_loss(self, losses: list[float]) -> float:
        return math.fsum(losses) / len(losses)

    def projected_grad(self, ctx: StepContext, losses: list[float]) -> float:
        """‖w‖, the RLOO weights' norm: LOREN's counterpart of MeZO's scalar."""
        mean, K = math.fsum(losses) / len(losses), len(losses)
        eps = self.param_groups[0]["eps"]
        return math.sqrt(math.fsum(((f - mean) / (eps * (K - 1))) ** 2 for f in losses))

    def _diagnostics(self, losses: list[float], mean: float) -> dict[str, float]:
        """LOREN's metrics: spread of the probes, ‖a‖ and the variance ρ/(ρ+s) that Σ leaves along ā."""
        stats = {"loren/loss_std": math.sqrt(math.fsum((f - mean) ** 2 for f in losses) / (len(losses) - 1))}
        if self._blocks:
            norms = [self.state[b.param]["cov_factor"].double().square().sum() for b in self._blocks]
            one_device = len({x.device for x in norms}) == 1  # then a single transfer, not one per tensor
            sq = torch.stack(norms).cpu() if one_device else torch.stack([x.cpu() for x in norms])
            rows = torch.tensor([matrix_shape(b.param)[0] if self.cov_form == "tied" else 1 for b in self._blocks],
                                dtype=torch.float64)
            damping = torch.tensor([b.group["damping"] for b in self._blocks], dtype=torch.float64)
            variance = damping / (damping + rows * sq)
            stats.update({"loren/a_norm_mean": float(sq.sqrt().mean()),
                          "loren/var_along_a_min": float(variance.min()),
                          "loren/var_along_a_mean": float(variance.mean())})
        return stats

    def describe(self) -> dict[str, Any]:
        """State size plus the per-step costs (K forward passes and the regenerations of u)."""
        passes = (3 if self.cov_form == "tied" else 4) + (self.probe_mode == "inplace")
        if self.cov_form == "tied" and self.probe_mode == "exact":  # kept tensors: one draw fewer per query
            numel = sum(b.param.numel() for b in self._blocks)
            kept = sum(b.param.numel() for b in self._blocks if b.param.numel() <= self.retain_numel)
            passes -= kept / numel if numel else 0
        return {**super().describe(), "forward_passes_per_step": self.num_queries,
                "rng_passes_per_step": round(passes * self.num_queries, 3), "cov_form": self.cov_form,
                "cov_update": self.cov_update}
