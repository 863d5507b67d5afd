"""CurvZO's sampling maths: water-filling, inclusion frequencies, the adaptive budget."""

from __future__ import annotations

import math

import pytest
import torch

from curvzo.optim.block_sampling import (
    adaptive_budget,
    fixed_size_sample,
    inclusion_probabilities,
    poisson_sample,
    support_and_entropy,
    waterfill,
)

BUDGET_KW = dict(budget_min=0.1, budget_max=0.8, alpha=0.7, beta=1.0)  # beta = 1: the raw Eq. 20 value


def score_vectors():
    g = torch.Generator().manual_seed(0)
    yield "random", torch.rand(50, generator=g, dtype=torch.float64) + 1e-3
    yield "heavy-tailed", torch.exp(4 * torch.randn(200, generator=g, dtype=torch.float64))
    yield "equal", torch.ones(10, dtype=torch.float64)
    yield "one dominant", torch.tensor([1e6] + [1e-6] * 9, dtype=torch.float64)
    yield "two blocks", torch.tensor([3.0, 1.0], dtype=torch.float64)
    yield "single block", torch.tensor([0.5], dtype=torch.float64)


@pytest.mark.parametrize("name,w", list(score_vectors()), ids=lambda x: x if isinstance(x, str) else "")
@pytest.mark.parametrize("fraction", [0.05, 0.4, 0.9, 1.0])
def test_waterfill_sums_to_budget_and_is_proportional_below_the_cap(name, w, fraction):
    n = w.numel()
    budget = max(fraction * n, 1e-3)
    pi = waterfill(w, budget)
    assert float(pi.sum()) == pytest.approx(budget, rel=1e-12)
    assert bool((pi > 0).all()) and bool((pi <= 1).all())
    below = pi < 1
    if below.sum() >= 2:  # one constant c for every unsaturated block
        ratio = pi[below] / w[below]
        assert float(ratio.max() / ratio.min()) == pytest.approx(1.0, abs=1e-12)
    if (~below).any() and below.any():  # saturated blocks are the heaviest ones
        assert float(w[~below].min()) >= float(w[below].max())


def test_waterfill_with_coordinate_costs_spends_the_coordinate_budget():
    g = torch.Generator().manual_seed(1)
    w = torch.rand(30, generator=g, dtype=torch.float64) + 0.01
    d = torch.randint(1, 10_000, (30,), generator=g).double()
    pi = waterfill(w, 0.3 * float(d.sum()), cost=d)
    assert float((pi * d).sum()) == pytest.approx(0.3 * float(d.sum()), rel=1e-12)
    assert bool((pi > 0).all() & (pi <= 1).all())


def test_waterfill_refuses_zero_weights_and_impossible_budgets():
    with pytest.raises(ValueError):
        waterfill(torch.tensor([1.0, 0.0]), 1.0)
    with pytest.raises(ValueError):
        waterfill(torch.tensor([1.0, 2.0]), 2.5)


def test_mixture_keeps_the_budget_and_floors_pi():
    scores = torch.tensor([1e-30, 0.0, 5.0, 1.0, 1e-3], dtype=torch.float32)  # zeros: no NaN
    pi = inclusion_probabilities(scores, 0.2, explore=0.1)
    assert not bool(torch.isnan(pi).any())
    assert float(pi.sum()) == pytest.approx(0.2 * 5, rel=1e-12)
    assert float(pi.min()) >= 0.1 * 0.2 - 1e-15  # the exploration floor alpha_u * f bounds 1/pi by 50
    # sqrt rule: below the cap the curvature part keeps the square-root ratio of the scores
    curvature = (pi - 0.1 * 0.2) / 0.9
    assert float(curvature.max()) < 1
    assert float(curvature[2] / curvature[3]) == pytest.approx(math.sqrt(5.0), rel=1e-9)


def test_uniform_sampling_is_the_budget_fraction_everywhere():
    pi = inclusion_probabilities(torch.rand(7), 0.3, sampling="uniform")
    assert torch.equal(pi, torch.full((7,), 0.3, dtype=torch.float64))


@pytest.mark.parametrize("sampler", [poisson_sample, fixed_size_sample])
def test_empirical_inclusion_frequency_matches_pi(sampler):
    pi = inclusion_probabilities(torch.tensor([9.0, 4.0, 1.0, 0.25, 0.01, 0.01, 2.0, 0.5]), 0.4)
    g = torch.Generator().manual_seed(123)
    draws = 20_000
    counts = torch.zeros_like(pi)
    sizes = set()
    for _ in range(draws):
        mask = sampler(pi, g)
        counts += mask
        sizes.add(int(mask.sum()))
    freq = counts / draws
    # 5 binomial standard errors, the largest is sqrt(0.25 / 20000) = 0.0035
    tolerance = 5 * torch.sqrt(pi * (1 - pi) / draws) + 1e-9
    assert bool(((freq - pi).abs() <= tolerance).all()), (freq, pi)
    if sampler is fixed_size_sample:  # sum(pi) = 3.2: every draw has 3 or 4 blocks
        assert sizes <= {3, 4}


def test_an_empty_draw_stays_empty():
    # forcing a block in would bias it by 1 + P(empty)/pi (optimizers.md §11.10); the step is skipped instead
    pi = torch.tensor([1e-12, 3e-12, 3e-12], dtype=torch.float64)
    assert not poisson_sample(pi, torch.Generator().manual_seed(0)).any()
    assert not fixed_size_sample(pi, torch.Generator().manual_seed(0)).any()


def test_support_and_entropy_extremes():
    assert support_and_entropy(torch.ones(8)) == (pytest.approx(8.0), pytest.approx(1.0))
    d_eff, h = support_and_entropy(torch.tensor([1.0] + [0.0] * 7))
    assert d_eff == pytest.approx(1.0) and h == pytest.approx(0.0)
    assert support_and_entropy(torch.zeros(4)) == (4.0, 1.0)  # nothing learned yet reads as uniform


def test_budget_fixed_points_from_the_spec():
    assert adaptive_budget(torch.ones(100), 0.4, **BUDGET_KW) == pytest.approx(0.59)
    one = torch.tensor([1.0] + [1e-12] * 99)  # d_eff = 1, H = 0: 0.1 + 0.7 * (0.7 / 100 + 0.3)
    assert adaptive_budget(one, 0.4, **BUDGET_KW) == pytest.approx(0.1 + 0.7 * (0.007 + 0.3), abs=1e-4)


def test_budget_shrinks_when_scores_concentrate_and_grows_when_they_spread():
    kw = dict(BUDGET_KW, beta=0.1)
    concentrated = torch.tensor([100.0] + [1e-6] * 99)
    f = 0.6
    for _ in range(200):
        f_next = adaptive_budget(concentrated, f, **kw)
        assert f_next <= f + 1e-15 and 0.1 <= f_next <= 0.8
        f = f_next
    assert f == pytest.approx(0.31, abs=0.01)
    for _ in range(200):
        f_next = adaptive_budget(torch.ones(100), f, **kw)
        assert f_next >= f - 1e-15 and 0.1 <= f_next <= 0.8
        f = f_next
    assert f == pytest.approx(0.59, abs=1e-3)


def test_budget_stays_within_bounds_for_any_scores():
    g = torch.Generator().manual_seed(7)
    for _ in range(200):
        scores = torch.exp(6 * torch.randn(20, generator=g))
        f = float(torch.rand(1, generator=g))
        out = adaptive_budget(scores, f, budget_min=0.2, budget_max=0.5, alpha=0.3, beta=0.5, entropy_term="h")
        assert 0.2 <= out <= 0.5
