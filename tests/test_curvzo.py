"""CurvZO as an optimizer: unbiasedness, variance, reductions to MeZO and to its ablation arms, guards."""

from __future__ import annotations

import math

import pytest
import torch

from curvzo.errors import ConfigError
from curvzo.optim import CurvZO, MeZO, replay_from_losses
from curvzo.optim.block_sampling import predicted_moment

SIZES = (3, 5, 2, 8)


def make_blocks(sizes=SIZES, seed: int = 0, dtype=torch.float32) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=g).to(dtype)) for n in sizes]


def quadratic(params, curvature, target):
    """L = 1/2 sum_b h_b ||theta_b - c_b||^2: the central difference is exact, grad_b = h_b (theta_b - c_b)."""
    return lambda: sum(0.5 * h * ((p.double() - c) ** 2).sum() for p, h, c in zip(params, curvature, target))


def mean_update(opt: CurvZO, params, closure, draws: int, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and mean squared deviation-from-truth inputs of the one-step update at fixed theta, S and f."""
    start = [p.detach().clone() for p in params]
    fraction = opt.fraction
    updates = torch.zeros(draws, sum(p.numel() for p in params), dtype=torch.float64)
    for i in range(draws):
        opt.scores.copy_(scores)
        opt.fraction = fraction
        opt.step(closure)
        updates[i] = torch.cat([(s - p.detach()).double() for p, s in zip(params, start)])  # = lr * g_hat
        for p, s in zip(params, start):
            p.data.copy_(s)
    return updates.mean(0), updates


def true_gradient(params, curvature, target) -> torch.Tensor:
    return torch.cat([h * (p.detach().double() - c) for p, h, c in zip(params, curvature, target)])


def problem(seed: int = 0):
    params = make_blocks(seed=seed)
    curvature = [4.0, 1.0, 0.25, 2.0]
    target = [torch.zeros(n, dtype=torch.float64) for n in SIZES]
    return params, curvature, target


# --- estimator properties -------------------------------------------------------------------------

@pytest.mark.parametrize("ht,expect_unbiased", [(True, True), (False, False)])
def test_ht_corrected_estimate_is_unbiased_and_uncorrected_is_not(ht, expect_unbiased):
    params, curvature, target = problem()
    opt = CurvZO(params, lr=1.0, eps=1e-3, seed=0, ht_correction=ht, budget_mode="fixed", fixed_fraction=0.5,
                 explore=0.1)
    scores = torch.tensor([4.0, 0.5, 0.01, 1.0])  # unequal pi: 0.95..0.1
    opt.scores.copy_(scores)
    pi = opt.inclusion_probabilities()
    assert float(pi.min()) < 0.3 and float(pi.max()) > 0.8  # the test exercises genuinely different pi
    draws = 6000
    mean, updates = mean_update(opt, params, quadratic(params, curvature, target), draws, scores)
    grad = true_gradient(params, curvature, target)
    stderr = updates.std(0) / math.sqrt(draws)
    pi_per_coord = torch.cat([pi[b].expand(n) for b, n in enumerate(SIZES)])
    z_unbiased = ((mean - grad) / stderr).abs().max()  # |z| of the worst of 18 coordinates
    z_pi_scaled = ((mean - pi_per_coord * grad) / stderr).abs().max()
    if expect_unbiased:
        assert float(z_unbiased) < 4.5 and float((mean - grad).norm() / grad.norm()) < 0.15
    else:
        # E[update_b] = pi_b g_b: detectably off g, and consistent with pi-scaled g
        assert float(z_unbiased) > 6 and float(z_pi_scaled) < 4.5  # measured 9.3


def test_curvature_sampling_lowers_the_variance_that_costs_descent():
    """Curvature sampling vs uniform at the same budget, energy and curvature in two of ten blocks.

    The variance that slows a quadratic down is the curvature-weighted one, E[(g_hat - g)^T H (g_hat - g)]
    (it sets the best one-step decrease ||g||^4 / (2 E[g_hat^T H g_hat])); it is the F-weighted sum that
    Prop. 3.4 minimises. The plain Euclidean variance goes the other way here (about 4x larger),
    because rarely drawn flat blocks get a 1/pi-amplified share of the coupled term of Eq. 6.
    """
    sizes = (4,) * 10
    params = make_blocks(sizes, seed=3)
    curvature = [50.0, 30.0] + [0.05] * 8
    target = [torch.zeros(4, dtype=torch.float64) for _ in sizes]
    closure = quadratic(params, curvature, target)
    grad = true_gradient(params, curvature, target)
    h = torch.cat([torch.full((4,), c, dtype=torch.float64) for c in curvature])
    energy = torch.stack([grad[4 * b:4 * b + 4].square().sum() for b in range(10)]).float()
    weighted, plain, descent = {}, {}, {}
    for sampling in ("curvature", "uniform"):
        opt = CurvZO(params, lr=1.0, seed=1, sampling=sampling, budget_mode="fixed", fixed_fraction=0.3)
        _, updates = mean_update(opt, params, closure, 3000, energy)
        deviation = updates - grad
        weighted[sampling] = float((deviation.square() * h).sum(1).mean())
        plain[sampling] = float(deviation.square().sum(1).mean())
        descent[sampling] = float((grad @ grad) ** 2 / (2 * (updates.square() * h).sum(1).mean()))
    assert weighted["curvature"] / weighted["uniform"] < 0.6, weighted  # measured 0.45
    assert descent["curvature"] / descent["uniform"] > 1.7, descent  # measured 2.1
    assert plain["curvature"] > plain["uniform"]  # stated above, kept honest


# --- reductions --------------------------------------------------------------------------------------

def small_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def mlp_closure(model):
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    return lambda: torch.nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("sampling", ["uniform", "curvature"])
def test_all_blocks_selected_equals_mezo_bit_for_bit(sampling):
    a, b = small_mlp(), small_mlp()
    mezo = MeZO(a.parameters(), lr=1e-2, eps=1e-3, seed=11)
    curv = CurvZO(b.parameters(), lr=1e-2, eps=1e-3, seed=11, sampling=sampling, budget_mode="fixed",
                  fixed_fraction=1.0)
    for _ in range(25):
        loss_a, loss_b = mezo.step(mlp_closure(a)), curv.step(mlp_closure(b))
        assert loss_a == loss_b
        assert curv.last_stats["curvzo/num_selected"] == 4
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_uniform_preset_draws_pi_equal_to_f_and_fixed_preset_keeps_its_budget():
    model = small_mlp()
    uniform = CurvZO(model.parameters(), lr=1e-3, seed=0, sampling="uniform", budget_every=5)
    fixed = CurvZO(small_mlp().parameters(), lr=1e-3, seed=0, budget_mode="fixed", fixed_fraction=0.4, budget_every=5)
    fractions = set()
    for _ in range(40):
        pi = uniform.inclusion_probabilities()
        assert torch.equal(pi, torch.full((4,), uniform.fraction, dtype=torch.float64))
        uniform.step(mlp_closure(model))
        fixed.step(lambda: torch.tensor(float(torch.rand(1))))
        fractions.add(round(uniform.fraction, 12))
        assert fixed.fraction == 0.4
    assert len(fractions) > 1  # the uniform arm's budget still adapts (every 5 steps here)


def test_budget_moves_only_every_budget_every_steps():
    model = small_mlp()
    opt = CurvZO(model.parameters(), lr=1e-3, seed=0, budget_every=7)
    seen = []
    for step in range(1, 29):
        before = opt.fraction
        opt.step(mlp_closure(model))
        if opt.fraction != before:
            seen.append(step)
    assert seen == [7, 14, 21, 28]
    assert 0.1 <= opt.fraction <= 0.8


# --- numerical care ------------------------------------------------------------------------------------

def test_nonfinite_loss_skips_without_touching_weights_scores_or_budget():
    params = make_blocks()
    opt = CurvZO(params, lr=0.1, seed=0, budget_every=1)
    opt.step(lambda: sum((p ** 2).sum() for p in params))
    weights = [p.detach().clone() for p in params]
    scores, fraction = opt.scores.clone(), opt.fraction
    results = [opt.step(lambda: torch.tensor(float("nan"))), opt.step(lambda: torch.tensor(float("inf")))]
    assert all(math.isnan(r) for r in results)
    assert opt.skipped_steps == 2
    assert torch.equal(opt.scores, scores) and opt.fraction == fraction
    for p, w in zip(params, weights):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-6)  # restored up to fp32 rounding


def test_zero_scores_and_bf16_weights_give_finite_fp32_state():
    params = make_blocks(dtype=torch.bfloat16)
    opt = CurvZO(params, lr=1e-2, seed=0, score_init=0.0, budget_every=2)
    pi = opt.inclusion_probabilities()
    assert bool(torch.isfinite(pi).all()) and float(pi.sum()) == pytest.approx(0.4 * 4)
    for _ in range(6):
        opt.step(lambda: sum((p.float() ** 2).sum() for p in params))
    assert opt.scores.dtype == torch.float32 and bool(torch.isfinite(opt.scores).all())
    assert all(math.isfinite(v) for v in opt.last_stats.values())


def test_exploration_floor_bounds_the_ht_factor():
    params = make_blocks((1000, 1, 1, 1, 1, 1, 1, 1, 1, 1))
    opt = CurvZO(params, lr=1e-4, seed=0, explore=0.1, budget_every=1)
    worst = 0.0
    for _ in range(60):
        opt.step(lambda: (params[0].double() ** 2).sum() + 1e-9 * sum(p.double().sum() for p in params[1:]))
        bound = 1 / (0.1 * opt.last_stats["curvzo/budget_f"])
        worst = max(worst, opt.last_stats["curvzo/max_inv_pi_selected"] / bound)
    assert worst <= 1 + 1e-9
    assert opt.last_stats["curvzo/d_eff"] < 3  # the scores did concentrate on the big block


def test_the_score_shares_delta_squared_by_the_energy_of_each_blocks_own_z():
    params, curvature, target = problem(seed=3)
    opt = CurvZO(params, lr=1e-3, eps=1e-3, seed=5, sampling="uniform", budget_mode="fixed", fixed_fraction=1.0,
                 score_beta=1.0)  # every block selected; S_b becomes this step's sample
    opt.step(quadratic(params, curvature, target))
    delta = opt.trajectory[-1]["projected_grad"]
    seed = opt.step_seed(0)
    energy = torch.tensor([opt.directions.squared_norm(b.param, seed, b.index) for b in opt.blocks], dtype=torch.float64)
    torch.testing.assert_close(opt.scores.double(), delta**2 * energy / energy.sum(), rtol=1e-5, atol=0)


def test_an_empty_draw_makes_no_forward_pass_and_no_update_and_keeps_the_estimate_unbiased():
    # two blocks with pi = 0.1 each: 81 % of the draws are empty. The old fallback forced the block of
    # largest pi in (weighted 1/pi), 1 + P(empty)/pi = 9.1 times too large; skipping keeps E[m/pi] = 1.
    params = make_blocks(sizes=(3, 2), seed=1)
    curvature, target = [2.0, 0.5], [torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    opt = CurvZO(params, lr=1.0, eps=1e-3, seed=0, sampling="uniform", budget_mode="fixed", fixed_fraction=0.1)
    closure = quadratic(params, curvature, target)
    mean, updates = mean_update(opt, params, closure, 20_000, opt.scores.clone())
    empty = sum(1 for r in opt.trajectory if r.get("empty"))
    assert abs(empty / 20_000 - 0.81) < 0.015
    assert opt.forward_passes == 2 * (20_000 - empty)  # an empty step spends nothing
    truth = true_gradient(params, curvature, target)
    stderr = updates.std(0) / math.sqrt(updates.shape[0])
    assert torch.all((mean - truth).abs() <= 4 * stderr), (mean, truth, stderr)
    assert torch.all(8.1 * truth.abs() > 10 * stderr)  # the old fallback's bias, 8.1 g, would stand out by > 10 SE


def test_diagnostics_are_consistent():
    model = small_mlp()
    opt = CurvZO(model.parameters(), lr=1e-3, seed=0)
    opt.step(mlp_closure(model))
    s = opt.last_stats
    assert s["curvzo/expected_selected"] == pytest.approx(s["curvzo/budget_f"] * 4)
    assert 1 <= s["curvzo/num_selected"] <= 4
    assert 0 < s["curvzo/selected_numel_frac"] <= 1
    assert s["curvzo/pi_min"] <= s["curvzo/pi_max"] <= 1
    assert 1 <= s["curvzo/d_eff"] <= 4 and 0 <= s["curvzo/entropy"] <= 1
    assert s["zo/forward_passes"] == 2
    assert opt.describe()["state_bytes"] == 5 * 4 * 4  # S and the contrast's four sums per block, nothing per parameter


@pytest.mark.parametrize("ht", [True, False])
def test_diagnostics_report_ht_factors_size_correlation_and_predicted_variance(ht):
    """Uniform π = 0.5 on blocks of 2..128 coordinates: the factors applied, Eq. 7's S following block size
    (spec §11.10), and M(π)/M(MeZO) from the contrast estimate, which uniform sampling never brings below 1."""
    params = make_blocks((2, 8, 32, 128))
    opt = CurvZO(params, lr=1e-9, seed=0, sampling="uniform", budget_mode="fixed", fixed_fraction=0.5,
                 ht_correction=ht)
    loss = lambda: sum(((p.double() - 1.0) ** 2).sum() for p in params)
    for _ in range(300):
        opt.step(loss)
    s = opt.last_stats
    if s["curvzo/num_selected"]:
        expected = 2.0 if ht else 1.0
        assert s["curvzo/ht_factor_mean"] == s["curvzo/ht_factor_median"] == s["curvzo/ht_factor_max"] == expected
    assert s["curvzo/score_size_log_corr"] > 0.9  # Eq. 7 shares Δ² by ‖z_b‖² ≈ d_b: S tracks size
    energy = opt.contrast.energy().double()
    half, ones = torch.full((4,), 0.5, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    if ht:
        ratio = predicted_moment(half, energy, opt.numel, energy) / predicted_moment(ones, energy, opt.numel, energy)
        assert s["curvzo/predicted_variance_ratio_vs_mezo"] == pytest.approx(ratio, rel=1e-12) and ratio > 1
    else:  # the biased step has no HT moment to predict
        assert "curvzo/predicted_variance_ratio_vs_mezo" not in s


VARIANTS = [{}, {"score": "regression", "ht_correction": False, "sampling_power": 1.0},  # paper; curvzo_sparse
            {"score": "regression", "sampling": "variance_optimal"}]  # curvzo_variance_optimal: π from the contrast


@pytest.mark.parametrize("variant", VARIANTS, ids=["paper", "sparse", "variance_optimal"])
def test_replay_from_losses_retraces_weights_scores_and_budget(variant):
    model, copy = small_mlp(), small_mlp()
    opt = CurvZO(model.parameters(), lr=1e-2, seed=4, budget_every=3, **variant)
    for _ in range(20):
        opt.step(mlp_closure(model))
    opt.step(lambda: torch.tensor(float("nan")))  # a skipped step is part of the trajectory too
    twin = CurvZO(copy.parameters(), lr=1e-2, seed=4, budget_every=3, **variant)
    assert replay_from_losses(twin, opt.trajectory) == 21
    for p, q in zip(model.parameters(), copy.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(opt.scores, twin.scores) and opt.fraction == twin.fraction
    assert torch.equal(opt.contrast.energy(), twin.contrast.energy())


@pytest.mark.parametrize("variant", VARIANTS, ids=["paper", "sparse", "variance_optimal"])
def test_state_dict_round_trip_continues_identically(variant):
    model, copy = small_mlp(), small_mlp()
    opt = CurvZO(model.parameters(), lr=1e-2, seed=2, budget_every=2, **variant)
    for _ in range(5):
        opt.step(mlp_closure(model))
    copy.load_state_dict(model.state_dict())
    twin = CurvZO(copy.parameters(), lr=1e-2, seed=2, budget_every=2, **variant)
    twin.load_state_dict(opt.state_dict())
    for _ in range(5):
        opt.step(mlp_closure(model))
        twin.step(mlp_closure(copy))
    for p, q in zip(model.parameters(), copy.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kwargs,needle", [
    ({"sampling": "random"}, "optimizer.sampling"),
    ({"budget_min": 0.9, "budget_max": 0.5}, "optimizer.budget_min"),
    ({"explore": 1.5}, "optimizer.explore"),
    ({"eps": 0.0}, "optimizer.eps"),
    ({"fixed_fraction": 0.0, "budget_mode": "fixed"}, "optimizer.fixed_fraction"),
])
def test_invalid_hyperparameters_are_one_line_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        CurvZO([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, **kwargs)


def test_fused_restore_and_update_matches_the_unfused_order_up_to_rounding():
    a, b = small_mlp(), small_mlp()
    plain = CurvZO(a.parameters(), lr=1e-2, seed=6, weight_decay=0.1)
    fused = CurvZO(b.parameters(), lr=1e-2, seed=6, weight_decay=0.1, fuse_restore_update=True)
    for _ in range(10):
        plain.step(mlp_closure(a))
        fused.step(mlp_closure(b))
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), small_mlp().parameters()))
    assert moved > 1e-3  # the runs did move
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)


@pytest.mark.parametrize("switches", [
    {"score": "normalized_abs"},
    {"score": "regression"},  # ours: the gradient energy the feedback carries (issue 20)
    {"score": "regression", "ht_correction": False},  # the biased sparse step, sampled where the gradient is
    {"score": "regression", "sampling": "variance_optimal"},  # ours: π minimising the predicted M (issue 20)
    {"score_normalize_numel": True},
    {"budget_unit": "numel"},
    {"design": "fixed_size"},
    {"sampling_power": 1.0, "explore": 0.0, "pi_floor": 1e-8},  # the port's profile (optimizers.md §11.7)
    {"entropy_term": "h"},
])
def test_every_switch_value_trains_with_finite_state(switches):
    model = small_mlp()
    opt = CurvZO(model.parameters(), lr=1e-2, seed=0, budget_every=3, **switches)
    loss = mlp_closure(model)
    with torch.no_grad():
        start = float(loss())
        for _ in range(30):
            opt.step(loss)
        end = float(loss())
    assert bool(torch.isfinite(opt.scores).all()) and 0.1 <= opt.fraction <= 0.8
    assert end < start  # it still descends
    if switches.get("budget_unit") == "numel":  # the budget counts coordinates: sum pi_b d_b = f d
        pi = opt.inclusion_probabilities()
        assert float((pi * opt.numel).sum()) == pytest.approx(opt.fraction * float(opt.numel.sum()), rel=1e-9)


@pytest.mark.parametrize("rule", ["hold", "decay"])
def test_unselected_scores_are_held_or_decayed(rule):
    params = make_blocks((4,) * 6)
    opt = CurvZO(params, lr=1e-3, seed=0, update_unselected=rule, budget_mode="fixed", fixed_fraction=0.2, explore=0.5)
    before = opt.scores.clone()
    opt.step(lambda: sum((p.double() ** 2).sum() for p in params))
    unselected = opt.scores == before if rule == "hold" else torch.isclose(opt.scores, before * 0.9)
    assert int(unselected.sum()) == 6 - opt.last_stats["curvzo/num_selected"]
