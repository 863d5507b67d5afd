"""LOREN (optimizers.md §10): hand-computed step, unbiasedness for Σ∇L, covariance, state, replay, guards."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from curvzo.errors import ConfigError
from curvzo.optim.base import ZerothOrderOptimizer
from curvzo.optim.directions import DirectionSampler
from curvzo.optim.streams import mix64, query_seed
from curvzo.optim.loren import LOREN, row_segments
from curvzo.optim.loren_rows import ColumnSums
from curvzo.optim.replay import replay_from_losses
from tests.helpers import net_loss, tiny_net

RHO = 0.1
CONF = Path(__file__).resolve().parents[1] / "conf" / "optimizer" / "loren.yaml"


def matrix_and_vector(seed: int = 0, dtype=torch.float64):
    """A 3x4 matrix (m = 3, n = 4) and a length-4 vector (m = 1, n = 4)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.nn.Parameter(torch.randn(3, 4, generator=g).to(dtype)),
            torch.nn.Parameter(torch.randn(4, generator=g).to(dtype)))


def nonlinear_loss(params):
    """A smooth non-quadratic loss, so the K probe losses all differ."""
    g = torch.Generator().manual_seed(99)
    x, y = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    w, b = params
    return lambda: ((torch.tanh(x @ w.double().T) - y) ** 2).sum() + 0.3 * ((b.double() - 0.5) ** 4).sum()


def cov_matrix(a: torch.Tensor, m: int, form: str) -> torch.Tensor:
    """Σ = I − āāᵀ/(ρ+s) (tied) or I_m ⊗ (I − aaᵀ/(ρ+‖a‖²)) (per_row), in float64."""
    a = a.double()
    if form == "tied":
        abar = a.repeat(m)
        return torch.eye(abar.numel(), dtype=torch.float64) - torch.outer(abar, abar) / (RHO + abar @ abar)
    row = torch.eye(a.numel(), dtype=torch.float64) - torch.outer(a, a) / (RHO + a @ a)
    return torch.block_diag(*[row] * m)


# --- the update rule against a float64 hand computation -------------------------------------------------

def reference_z(u, a, m, form):
    """(z, G-direction pieces): z = u − κ p ā and the bracket of G_a summed over rows, in float64."""
    n = a.numel()
    rows = u.view(m, n)
    if form == "tied":
        abar, s = a.repeat(m), m * (a @ a)
        p = abar @ u
        kappa = (math.sqrt(RHO) + torch.sqrt(RHO + s)) / (s * torch.sqrt(RHO + s))
        z = u - kappa * p * abar
        bracket = (p * u - kappa * p**2 * abar) / torch.sqrt(RHO + s) + math.sqrt(RHO) * abar / (RHO + s)
        return z, bracket.view(m, n).sum(0)
    s = a @ a
    p = rows @ a  # one p per row
    kappa = (math.sqrt(RHO) + torch.sqrt(RHO + s)) / (s * torch.sqrt(RHO + s))
    z = (rows - kappa * p[:, None] * a[None, :]).reshape(-1)
    bracket = ((p[:, None] * rows - kappa * p[:, None] ** 2 * a) / torch.sqrt(RHO + s) + math.sqrt(RHO) * a / (RHO + s))
    return z, bracket.sum(0)


CASES = [  # (cov_form, cov_update, fix_1d_cov_grad, chunk_numel): small chunks split rows (head/full/tail pieces)
    ("tied", "per_sample", False, None),
    ("tied", "per_sample", False, 5),
    ("tied", "per_step", False, 7),
    ("tied", "per_sample", True, None),
    ("per_row", "per_sample", False, 5),
    ("per_row", "per_step", True, None),
]


@pytest.mark.parametrize("form,update,fix_1d,chunk", CASES)
def test_one_step_matches_a_float64_hand_computation(form, update, fix_1d, chunk):
    params = matrix_and_vector()
    start = [p.detach().clone() for p in params]
    K, eps, lr, wd, lr_cov, beta = 3, 0.1, 0.02, 0.1, 0.1, 0.9
    opt = LOREN(params, lr=lr, eps=eps, num_queries=K, damping=RHO, lr_cov=lr_cov, momentum=beta, weight_decay=wd,
                seed=4, cov_form=form, cov_update=update, fix_1d_cov_grad=fix_1d)
    if chunk:
        opt.directions = DirectionSampler(sub_chunk=chunk, span=2 * chunk)
    # a ~ N(0, I) from its own seeded stream, float32
    a = [opt.state[p]["cov_factor"].double().clone() for p in params]
    for i in range(2):
        expected = torch.randn(4, generator=torch.Generator().manual_seed(mix64(4, 5, i)))
        assert torch.equal(opt.state[params[i]]["cov_factor"], expected)
    us = [[opt.directions.direction(p, query_seed(opt.step_seed(0), k), i).double().reshape(-1)
           for i, p in enumerate(params)] for k in range(K)]
    ms = (3, 1)
    closure = nonlinear_loss(params)
    loss = opt.step(closure)
    after = [p.detach().clone() for p in params]

    # by hand: K one-sided probes at the step-start a, then K sequential sub-updates
    losses = []
    for k in range(K):
        zs = [reference_z(us[k][i], a[i], ms[i], form)[0] for i in range(2)]
        with torch.no_grad():
            for p, s0, z in zip(params, start, zs):
                p.copy_(s0 + eps * z.view(p.shape))
            losses.append(float(closure()))
    fbar = sum(losses) / K
    w = [(f - fbar) / (eps * (K - 1)) for f in losses]
    theta = [s.clone().reshape(-1) for s in start]
    momentum = torch.zeros(12, dtype=torch.float64)
    a_now, grads = [x.clone() for x in a], [[], []]
    for k in range(K):
        for i in range(2):
            z, bracket = reference_z(us[k][i], a_now[i] if update == "per_sample" else a[i], ms[i], form)
            g = w[k] * z
            if i == 0:
                momentum = beta * momentum + g
                g = momentum
            theta[i] = (1 - lr * wd) * theta[i] - lr * g
            grad = eps**2 * (losses[k] - fbar) / (K - 1) * bracket
            if i == 1 and not fix_1d:
                grad = torch.full_like(grad, float(grad.sum()))
            grads[i].append(grad)
            if update == "per_sample":
                a_now[i] = (1 - lr_cov * wd) * a_now[i] - lr_cov * grad
    if update == "per_step":
        for i in range(2):
            for grad in grads[i]:
                a_now[i] = (1 - lr_cov * wd) * a_now[i] - lr_cov * grad

    assert opt.trajectory[0]["losses"] == pytest.approx(losses, rel=1e-8)  # z is float32
    assert loss == pytest.approx(fbar, rel=1e-8)
    for i, p in enumerate(params):
        assert float((theta[i] - start[i].reshape(-1)).abs().max()) > 1e-3  # the step is not a no-op
        torch.testing.assert_close(after[i].reshape(-1), theta[i], rtol=0, atol=1e-7)
        assert float((a_now[i] - a[i]).abs().max()) > 1e-4  # ... and neither is the covariance step
        torch.testing.assert_close(opt.state[p]["cov_factor"].double(), a_now[i], rtol=1e-6, atol=1e-6)
    buffer = opt.state[params[0]]["momentum_buffer"].double().reshape(-1)
    torch.testing.assert_close(buffer, momentum, rtol=1e-6, atol=1e-6)
    assert opt.trajectory[0]["projected_grad"] == pytest.approx(math.sqrt(sum(x * x for x in w)), rel=1e-6)


def test_row_segments_cover_the_span_with_the_right_rows_and_columns():
    n = 7
    for start, stop in [(0, 70), (3, 5), (3, 30), (14, 21), (20, 69), (6, 8)]:
        covered = []
        for seg in row_segments(start, stop, n):
            for j in range(seg.lo, seg.hi):
                flat = start + j
                row = seg.row + (j - seg.lo) // n if seg.rows else seg.row
                col = (j - seg.lo) % n if seg.rows else seg.col + j - seg.lo
                assert (row, col) == divmod(flat, n)
            assert seg.rows == 0 or seg.hi - seg.lo == seg.rows * n
            covered.extend(range(seg.lo, seg.hi))
        assert covered == list(range(stop - start))


# --- the estimator ---------------------------------------------------------------------------------------

def test_the_step_is_unbiased_for_the_preconditioned_gradient():
    """E[−Δθ] = Σ∇L on a quadratic (lr 1, no momentum, no covariance step), and far from ∇L along ā."""
    params = matrix_and_vector(seed=1)
    opt = LOREN(params, lr=1.0, eps=1e-3, num_queries=4, lr_cov=0.0, momentum=0.0, seed=2)
    a = [opt.state[p]["cov_factor"] for p in params]
    h = (2.0, 0.5)
    # θ0 − c has a large component along each tensor's ā, which Σ shrinks to ρ/(ρ+s) of itself
    abar = [a[0].double().repeat(3), a[1].double()]
    offsets = [2 * abar[0] / abar[0].norm(), -2 * abar[1] / abar[1].norm()]
    with torch.no_grad():
        for p, off in zip(params, offsets):
            p.copy_((off + 0.3 * torch.randn(off.numel(), dtype=torch.float64,
                                             generator=torch.Generator().manual_seed(3))).view(p.shape))
    start = [p.detach().clone() for p in params]
    closure = lambda: sum(0.5 * hb * (p.double() ** 2).sum() for p, hb in zip(params, h))  # noqa: E731
    grad = torch.cat([hb * s.reshape(-1) for s, hb in zip(start, h)])
    sigma = torch.block_diag(cov_matrix(a[0], 3, "tied"), cov_matrix(a[1], 1, "tied"))
    target = sigma @ grad
    draws = 1500
    updates = torch.empty(draws, 16, dtype=torch.float64)
    for t in range(draws):
        opt.step(closure)
        updates[t] = torch.cat([(s - p.detach()).reshape(-1) for p, s in zip(params, start)])
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
    mean, stderr = updates.mean(0), updates.std(0) / math.sqrt(draws)
    assert float(((mean - target) / stderr).abs().max()) < 4.5  # measured 1.7 (16 coordinates); 48 against ∇L
    # the plain gradient is rejected: along each ā the means differ by many standard errors
    for sl, direction in ((slice(0, 12), abar[0]), (slice(12, 16), abar[1])):
        unit = direction / direction.norm()
        along = updates[:, sl] @ unit
        gap = float((along.mean() - grad[sl] @ unit) / (along.std() / math.sqrt(draws)))
        assert abs(gap) > 20, gap  # measured 525 and 287: Σ leaves almost no variance along ā
        shrink = RHO / float(RHO + direction @ direction)  # Σ's variance along ā
        assert float(target[sl] @ unit) == pytest.approx(float(grad[sl] @ unit) * shrink, rel=1e-6)


@pytest.mark.parametrize("form", ["tied", "per_row"])
def test_perturbations_have_the_covariance_of_the_form(form):
    params = matrix_and_vector(seed=2)
    opt = LOREN(params, lr=1e-3, cov_form=form, seed=1)
    draws = 4000
    z = torch.stack([torch.cat([opt.perturbation(i, mix64(7, t)).double().reshape(-1) for i in range(2)])
                     for t in range(draws)])
    a = [opt.state[p]["cov_factor"] for p in params]
    sigma = torch.block_diag(cov_matrix(a[0], 3, form), cov_matrix(a[1], 1, form))
    empirical = z.T @ z / draws
    assert float((empirical - sigma).abs().max()) < 0.09  # measured 0.042; entry std ≈ 1/√4000 = 0.016
    other = torch.block_diag(cov_matrix(a[0], 3, "per_row" if form == "tied" else "tied"), cov_matrix(a[1], 1, form))
    assert float((empirical - other).abs().max()) > 0.25  # measured 0.35: the two forms are told apart
    # along each row's a the variance is ρ/(ρ+‖a‖²) for per_row, 1 − ‖a‖²/(ρ + 3‖a‖²) ≈ 2/3 for tied
    unit = a[0].double() / a[0].norm()
    row_var = (z[:, 0:4] @ unit).var()
    expected = float(sigma[0:4, 0:4] @ unit @ unit)
    assert float(row_var) == pytest.approx(expected, rel=0.12)
    assert (expected < 0.05) == (form == "per_row")
    # and the probe really perturbs by εz: capture θ inside the closure
    seen = []
    start = params[0].detach().clone()
    opt.step(lambda: seen.append((params[0].detach() - start).clone() / 1e-3) or torch.tensor(1.0))
    torch.testing.assert_close(seen[1].float(), opt.perturbation(0, query_seed(opt.step_seed(0), 1)), rtol=0, atol=1e-6)


# --- state, accounting, guards -------------------------------------------------------------------------


def test_same_seed_same_weights_and_different_seed_differs():
    runs = []
    for seed in (5, 5, 6):
        net = tiny_net()
        opt = LOREN(net.parameters(), lr=1e-2, num_queries=3, seed=seed)
        for _ in range(5):
            opt.step(net_loss(net))
        runs.append([p.detach().clone() for p in net.parameters()] + [opt.state[p]["cov_factor"].clone()
                                                                      for p in net.parameters()])
    assert all(torch.equal(x, y) for x, y in zip(runs[0], runs[1]))
    assert not any(torch.allclose(x, y) for x, y in zip(runs[0], runs[2]) if x.numel() > 1)


def test_state_is_one_vector_per_tensor_plus_momentum_for_matrices():
    net = tiny_net()  # W1 16x8, b1 16, W2 1x16, b2 1
    opt = LOREN(net.parameters(), lr=1e-3)
    w1, b1, w2, b2 = net.parameters()
    assert [opt.state[p]["cov_factor"].numel() for p in (w1, b1, w2, b2)] == [8, 16, 16, 1]
    assert all(opt.state[p]["cov_factor"].dtype == torch.float32 for p in (w1, b1, w2, b2))
    assert "momentum_buffer" not in opt.state[b1] and "momentum_buffer" not in opt.state[b2]
    assert opt.state[w1]["momentum_buffer"].shape == (16, 8)
    assert opt.state_bytes() == 4 * (8 + 16 + 16 + 1) + 4 * (128 + 16) == 740
    info = opt.describe()
    assert info["state_bytes"] == 740 and info["forward_passes_per_step"] == 10 and info["rng_passes_per_step"] == 20
    # every tensor here is small enough for the exact probe to keep its u; in place, nothing is kept
    assert LOREN(tiny_net().parameters(), lr=1e-3, probe="inplace").describe()["rng_passes_per_step"] == 40

    half = tiny_net(dtype=torch.bfloat16)
    opt = LOREN(half.parameters(), lr=1e-3, num_queries=2, state_dtype="param")
    w1 = next(half.parameters())
    assert opt.state[w1]["momentum_buffer"].dtype == torch.bfloat16
    assert opt.state[w1]["cov_factor"].dtype == torch.float32
    assert opt.state_bytes() == 4 * 41 + 2 * 144 == 452
    before = w1.detach().clone()
    assert math.isfinite(opt.step(net_loss(half)))
    assert not torch.equal(before, w1) and w1.dtype == torch.bfloat16
    assert LOREN(tiny_net(dtype=torch.bfloat16).parameters(), lr=1e-3).state_bytes() == 740  # fp32 by default


def test_forward_passes_are_k_per_step_and_stats_are_logged():
    net = tiny_net()
    opt = LOREN(net.parameters(), lr=1e-3, num_queries=4)
    for _ in range(3):
        opt.step(net_loss(net))
    assert opt.forward_passes == 12 and opt.last_stats["zo/forward_passes"] == 12
    stats = opt.last_stats
    assert stats["train/loss"] == pytest.approx(sum(opt.trajectory[-1]["losses"]) / 4)
    assert stats["train/loss_plus"] == opt.trajectory[-1]["losses"][0]
    assert stats["zo/projected_grad"] == opt.trajectory[-1]["projected_grad"] > 0
    # at init s = m‖a‖² ≫ ρ: the tied form removes (almost) one direction per tensor
    assert 0 < stats["loren/var_along_a_min"] < 0.01 and stats["loren/a_norm_mean"] > 0.5
    assert [r["step"] for r in opt.trajectory] == [1, 2, 3]


def test_nonfinite_loss_leaves_weights_and_state_untouched():
    params = matrix_and_vector(seed=3)
    opt = LOREN(params, lr=1e-2, num_queries=3, lr_cov=1.0, eps=0.1, seed=0)
    closure = nonlinear_loss(params)
    opt.step(closure)
    before = [p.detach().clone() for p in params]
    state = {(i, k): v.clone() for i, p in enumerate(params) for k, v in opt.state[p].items()}
    calls = iter([closure(), float("nan"), 1.0])
    assert math.isnan(opt.step(lambda: torch.as_tensor(next(calls))))
    for p, b in zip(params, before):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=1e-15)  # restored (float64 round trip)
    assert all(torch.equal(state[i, k], v) for i, p in enumerate(params) for k, v in opt.state[p].items())
    assert opt.forward_passes == 3 + 2  # probing stops at the first non-finite loss
    assert opt.skipped_steps == 1 and opt.trajectory[-1]["skipped"] is True
    assert opt.last_stats["zo/skipped_steps"] == 1 and math.isnan(opt.last_stats["train/loss"])


@pytest.mark.parametrize("form", ["tied", "per_row"])
def test_replay_from_losses_reproduces_weights_and_state_bit_for_bit(form):
    net = tiny_net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    opt = LOREN(net.parameters(), lr=5e-2, num_queries=3, eps=1e-2, lr_cov=0.5, seed=9, cov_form=form)
    for t in range(8):
        loss = net_loss(net)
        if t == 4:  # one skipped step in the trajectory
            calls = iter([1.0, float("inf")])
            loss = lambda: torch.tensor(next(calls))  # noqa: E731
        opt.step(loss)
    replica = tiny_net(seed=1)
    replica.load_state_dict(start)
    shell = LOREN(replica.parameters(), lr=5e-2, num_queries=3, eps=1e-2, lr_cov=0.5, seed=9, cov_form=form)
    assert replay_from_losses(shell, opt.trajectory) == 8
    for p, q in zip(net.parameters(), replica.parameters()):
        assert torch.equal(p, q)
        assert opt.state[p].keys() == shell.state[q].keys()
        assert all(torch.equal(opt.state[p][k], shell.state[q][k]) for k in opt.state[p])
    assert (shell.forward_passes, shell.skipped_steps) == (opt.forward_passes, opt.skipped_steps) == (23, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [None, 5])  # 5: pieces that split rows (head, full and tail segments)
def test_the_exact_probe_draws_u_once_per_query_where_it_keeps_u_with_the_same_bits(dtype, chunk, monkeypatch):
    original, drawn, runs = DirectionSampler._draw, [], []
    for retain in (LOREN.retain_numel, 0):  # 0: every tensor streamed, u drawn for p and again for z
        monkeypatch.setattr(LOREN, "retain_numel", retain)
        net = tiny_net(dtype=dtype)
        opt = LOREN(net.parameters(), lr=5e-2, num_queries=3, eps=1e-2, lr_cov=0.5, seed=9, cov_form="tied")
        if chunk:
            opt.directions = DirectionSampler(sub_chunk=chunk, span=2 * chunk)
        count = [0]

        def counting(self, piece, seed, count=count):
            count[0] += piece.numel()
            original(self, piece, seed)
        monkeypatch.setattr(DirectionSampler, "_draw", counting)
        for _ in range(3):
            opt.step(net_loss(net))
        monkeypatch.setattr(DirectionSampler, "_draw", original)
        runs.append((net, opt))
        drawn.append(count[0])
    (kept, kept_opt), (streamed, streamed_opt) = runs
    for p, q in zip(kept.parameters(), streamed.parameters()):
        assert torch.equal(p, q)
        assert all(torch.equal(kept_opt.state[p][k], streamed_opt.state[q][k]) for k in kept_opt.state[p])
    numel = sum(p.numel() for p in kept.parameters())
    assert drawn == [3 * 2 * 3 * numel, 3 * 3 * 3 * numel]  # steps x draws per query x K x weights


@pytest.mark.parametrize("update,state_dtype,dtype,chunk", [
    ("per_sample", "fp32", torch.float32, None),
    ("per_sample", "fp32", torch.float32, 5),
    ("per_step", "param", torch.float64, 7),  # float64 momentum: the piece's float32 copy of M, stored back per k
])
def test_the_fused_update_gives_full_precision_weights_the_bits_of_k_passes(update, state_dtype, dtype, chunk,
                                                                             monkeypatch):
    """Tied form: a's K steps first, then X's K sub-updates piece by piece in one pass = K passes in code order."""
    runs = []
    for fused in (True, False):
        monkeypatch.setattr(LOREN, "fused_update", fused)
        net = tiny_net(dtype=dtype)
        opt = LOREN(net.parameters(), lr=5e-2, num_queries=4, eps=1e-2, lr_cov=0.5, weight_decay=0.1, seed=9,
                    cov_update=update, state_dtype=state_dtype)
        if chunk:
            opt.directions = DirectionSampler(sub_chunk=chunk, span=2 * chunk)
        before = [p.detach().clone() for p in net.parameters()]
        for _ in range(3):
            opt.step(net_loss(net))
        assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
        runs.append((net, opt))
    (fused_net, fused_opt), (passes_net, passes_opt) = runs
    for p, q in zip(fused_net.parameters(), passes_net.parameters()):
        assert torch.equal(p, q)
        assert fused_opt.state[p].keys() == passes_opt.state[q].keys()
        assert all(torch.equal(fused_opt.state[p][k], passes_opt.state[q][k]) for k in fused_opt.state[p])


def test_the_fused_update_rounds_bfloat16_weights_once_between_their_float32_neighbours():
    """bfloat16 weights end at one of the two bfloat16 neighbours of what float32 weights with the same start reach
    (one stochastic rounding per step, not K); a and M, float32 state, are the same bits in both."""
    losses = [0.7, 0.2, 0.5, 0.9]  # the probes' losses, whatever the weights: both runs see the same ones
    nets, opts = [], []
    for dtype in (torch.bfloat16, torch.float32):
        net = tiny_net(dtype=torch.bfloat16).to(dtype)  # the float32 net starts at the bfloat16 values
        opt = LOREN(net.parameters(), lr=2e-4, num_queries=4, eps=1e-2, lr_cov=0.5, seed=9)
        calls = iter(losses)
        opt.step(lambda calls=calls: torch.tensor(next(calls)))
        nets.append(net)
        opts.append(opt)
    for half, full in zip(nets[0].parameters(), nets[1].parameters()):
        bits = full.detach().view(torch.int32) & -65536  # toward zero: the neighbour of smaller magnitude
        low, high = bits.view(torch.float32), (bits + 65536).view(torch.float32)
        got = half.detach().float()
        assert bool(((got == low) | ((got == high) & (low != full))).all())
        assert opts[0].state[half].keys() == opts[1].state[full].keys()
        assert all(torch.equal(opts[0].state[half][k], opts[1].state[full][k]) for k in opts[0].state[half])
    moved = torch.cat([(h.detach() != f.detach().bfloat16()).view(-1) for h, f in zip(*(n.parameters() for n in nets))])
    assert 0 < int(moved.sum()) < moved.numel()  # rounded stochastically: not always to the nearest


def test_a_steps_column_sums_are_rows_of_one_table_known_once_written():
    net = tiny_net()  # n = 8, 16, 16, 1
    opt = LOREN(net.parameters(), lr=1e-3, num_queries=3)
    table = ColumnSums(opt.blocks, 3)
    assert (1, 0) not in table
    with pytest.raises(KeyError):
        table[(1, 0)]
    rows = {(k, b.index): table.slot((k, b.index)) for k in range(3) for b in opt.blocks}
    assert all(key in table for key in rows) and [rows[0, b.index].numel() for b in opt.blocks] == [8, 16, 16, 1]
    base = rows[0, 0].untyped_storage().data_ptr()
    assert all(row.untyped_storage().data_ptr() == base for row in rows.values())  # one allocation
    for i, (key, row) in enumerate(rows.items()):
        row.fill_(i)
    assert all(bool((table[key] == i).all()) for i, key in enumerate(rows))  # the rows do not overlap


@pytest.mark.parametrize("lr_cov,same", [(0.0, True), (1.0, False)])
def test_per_step_covariance_update_differs_only_when_a_moves(lr_cov, same):
    results = []
    for update in ("per_sample", "per_step"):
        net = tiny_net()
        opt = LOREN(net.parameters(), lr=5e-2, num_queries=4, eps=0.1, lr_cov=lr_cov, seed=3, cov_update=update)
        for _ in range(3):
            opt.step(net_loss(net))
        results.append([p.detach().clone() for p in net.parameters()]
                       + [opt.state[p]["cov_factor"].clone() for p in net.parameters()])
    equal = [torch.equal(x, y) for x, y in zip(*results)]
    assert all(equal) if same else not any(equal[4:7])  # the three a of size > 1 all differ
    if not same:
        assert not all(equal[:4])


def test_fix_1d_cov_grad_changes_only_the_vectors_a():
    results = []
    for fix in (False, True):
        net = tiny_net()
        opt = LOREN(net.parameters(), lr=5e-2, num_queries=3, eps=0.1, lr_cov=1.0, seed=3, fix_1d_cov_grad=fix)
        opt.step(net_loss(net))  # one step: later steps differ everywhere, through the losses
        results.append((list(net.parameters()), opt))
    (params0, opt0), (params1, opt1) = results
    w1, b1, w2, b2 = zip(params0, params1)
    for p, q in (w1, w2):  # matrices: weights, a and momentum identical
        assert torch.equal(p, q)
        assert torch.equal(opt0.state[p]["cov_factor"], opt1.state[q]["cov_factor"])
        assert torch.equal(opt0.state[p]["momentum_buffer"], opt1.state[q]["momentum_buffer"])
    a_replicated, a_vector = opt0.state[b1[0]]["cov_factor"], opt1.state[b1[1]]["cov_factor"]
    assert not torch.equal(a_replicated, a_vector)
    # the replicated update moves every entry of a by the same amount
    init = torch.randn(16, generator=torch.Generator().manual_seed(mix64(3, 5, 1)))
    shift = a_replicated - init
    assert float(shift.abs().max()) > 0 and float((shift - shift[0]).abs().max()) < 1e-4 * float(shift.abs().max())
    assert float((a_vector - init).std()) > 1e-3 * float((a_vector - init).abs().max())
    # b2 has one entry: the summed gradient is the vector gradient
    assert torch.equal(opt0.state[b2[0]]["cov_factor"], opt1.state[b2[1]]["cov_factor"])


# --- configuration -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,key", [
    ({"num_queries": 1}, "num_queries"), ({"num_queries": 2.5}, "num_queries"), ({"damping": 0.0}, "damping"),
    ({"momentum": 1.0}, "momentum"), ({"momentum": -0.1}, "momentum"), ({"lr_cov": -1e-3}, "lr_cov"),
    ({"eps": 0.0}, "eps"), ({"cov_form": "paper"}, "cov_form"), ({"cov_update": "per_epoch"}, "cov_update"),
    ({"state_dtype": "fp16"}, "state_dtype"), ({"fix_1d_cov_grad": "yes"}, "fix_1d_cov_grad"),
    ({"lr": 0.0}, "lr"), ({"weight_decay": -1.0}, "weight_decay"),
])
def test_invalid_hyperparameters_are_one_line_config_errors(kwargs, key):
    with pytest.raises(ConfigError) as err:
        LOREN([torch.nn.Parameter(torch.zeros(2, 3))], **{"lr": 1e-3, **kwargs})
    assert f"optimizer.{key} " in str(err.value) and "\n" not in str(err.value)


def test_config_file_defaults_match_the_class_and_instantiate():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF))
    assert cfg.pop("defaults") == [{"/zo@_here_": "default"}, "_self_"]  # probe, update_rounding, directions
    shared = OmegaConf.to_container(OmegaConf.load(CONF.parents[1] / "zo" / "default.yaml"))
    assert shared.pop("defaults") == [{"peft@_here_": "${peft}"}, "_self_"]  # eps and lr of the PEFT mode
    cfg.update(shared)
    lines = CONF.read_text().splitlines()
    assert lines[1].startswith("# launch: curvzo-run ") and "optimizer=loren" in lines[1]
    assert cfg.pop("_target_") == "curvzo.optim.loren.LOREN" and "lr" not in cfg  # lr, eps: conf/zo/peft/
    assert cfg.pop("seed") == "${seed}"
    defaults = {k: v.default for cls in (LOREN, ZerothOrderOptimizer) for k, v in inspect.signature(cls).parameters.items()
                if v.default is not inspect.Parameter.empty}
    assert OmegaConf.load(CONF.parents[1] / "zo" / "peft" / "full.yaml").eps == defaults.pop("eps")  # the class default
    assert cfg == {k: v for k, v in defaults.items() if k != "seed"}
    assert all("#" in line for line in lines if line and not line.startswith(("#", "_target_", "defaults:")))
    opt = LOREN([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, eps=1e-3, seed=0, **cfg)
    group = opt.param_groups[0]
    assert opt.num_queries == 10 and group["damping"] == 0.1 and group["lr_cov"] == 1e-3
