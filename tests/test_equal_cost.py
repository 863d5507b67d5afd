"""CurvZO's equal-cost analysis (issue 20, spec §11.10): closed forms against Monte Carlo through the optimizers'
own steps, and the variance-optimal π."""

from __future__ import annotations

import pytest
import torch

from curvzo.analysis.equal_cost import (
    BlockProblem,
    GivenProbabilities,
    curvature_moment,
    efficiency,
    main,
    monte_carlo,
    random_problem,
    second_moments,
    to_markdown,
    variance_optimal_pi,
)
from curvzo.optim import MeZO
from tests.helpers import net_loss, tiny_net

F64 = torch.float64


@pytest.mark.parametrize("pi", [None, [0.3, 0.7, 1.0, 0.5, 0.9, 0.2]], ids=["mezo", "given-pi"])
def test_closed_forms_match_monte_carlo_through_the_optimizers_step(pi):
    problem = random_problem(seed=1)
    pi = None if pi is None else torch.tensor(pi, dtype=F64)
    measured = monte_carlo(problem, pi, draws=2500, seed=3)
    expected_pi = torch.ones(6, dtype=F64) if pi is None else pi
    closed = second_moments(problem, expected_pi)
    z = (measured.second_moments - closed) / measured.second_moments_se
    assert z.abs().max() < 4.5, z  # six blocks, each within 4.5 standard errors
    z_m = (measured.curvature_moment - curvature_moment(problem, expected_pi)) / measured.curvature_moment_se
    assert abs(z_m) < 4.0


def test_curvzo_with_every_pi_one_is_mezo_bit_for_bit():
    nets = [tiny_net(), tiny_net()]
    mezo = MeZO(nets[0].parameters(), lr=1e-2, eps=1e-3, seed=4)
    curvzo = GivenProbabilities(nets[1].parameters(), torch.ones(4, dtype=F64), lr=1e-2, eps=1e-3, seed=4)
    for _ in range(10):
        mezo.step(net_loss(nets[0]))
        curvzo.step(net_loss(nets[1]))
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))


def test_the_optimal_pi_lowers_only_gradient_heavy_low_curvature_blocks():
    # block 0 holds most gradient energy and little curvature; blocks 1-3 the opposite
    gradients = [torch.full((4,), 1.0, dtype=F64), *[torch.full((4,), 0.05, dtype=F64) for _ in range(3)]]
    curvatures = [torch.eye(4, dtype=F64) * 0.01, *[torch.eye(4, dtype=F64) * 1.0 for _ in range(3)]]
    problem = BlockProblem(gradients, curvatures)
    pi = variance_optimal_pi(problem)
    assert pi[0] < 0.9 and torch.equal(pi[1:], torch.ones(3, dtype=F64))
    ones = torch.ones(4, dtype=F64)
    assert curvature_moment(problem, pi) < curvature_moment(problem, ones) and efficiency(problem, ones) == 1.0
    assert curvature_moment(problem, pi) <= curvature_moment(problem, torch.full((4,), 0.4, dtype=F64))


def test_energy_in_proportion_to_curvature_keeps_mezo_optimal():
    """When each block's share of ‖g‖² equals its share of tr A, ∂M/∂π_k ≤ 0 at π ≡ 1: MeZO is the optimum."""
    gradients = [torch.full((4,), s, dtype=F64) for s in (1.0, 2.0, 3.0)]
    curvatures = [torch.eye(4, dtype=F64) * s * s for s in (1.0, 2.0, 3.0)]
    pi = variance_optimal_pi(BlockProblem(gradients, curvatures))
    assert torch.allclose(pi, torch.ones(3, dtype=F64))


def test_the_report_and_its_command_line():
    result = {"draws": 10, "seeds": 1, "rows": [{"seed": 0, "pi": "mezo (pi = 1)", "pi_values": [1.0], "M_closed": 2.0,
                                                  "M_monte_carlo": 2.1, "M_se": 0.05, "z": 2.0,
                                                  "efficiency_vs_mezo": 1.0}]}
    text = to_markdown(result, "python -m curvzo.analysis.equal_cost --out x")
    assert "| 0 | mezo (pi = 1) | 2 | 2.1 ± 0.05 | +2.00 | 1.000 |" in text
    assert "| mezo (pi = 1) | 1.000 |" in text
    with pytest.raises(SystemExit):
        main(["--out", "x", "--draws", "1"])


def test_the_regression_score_recovers_each_blocks_gradient_energy():
    """score=regression on a linear loss with known g_b, π held at 0.5: S_b → G_b (Poisson design)."""
    energies = [4.0, 1.0, 0.25, 0.0]
    gradients = [torch.full((4,), (e / 4) ** 0.5, dtype=F64) for e in energies]
    params = [torch.nn.Parameter(torch.zeros(4, dtype=F64)) for _ in gradients]
    opt = GivenProbabilities(params, torch.full((4,), 0.5, dtype=F64), lr=1e-12, eps=1e-3, seed=0,
                             score="regression", score_beta=0.002)
    loss = lambda: sum(torch.dot(g, p) for g, p in zip(gradients, params))  # noqa: E731
    history = []
    for step in range(6000):
        opt.step(loss)
        if step >= 2000:
            history.append(opt.scores.clone())
    estimate = torch.stack(history).double().mean(0)
    assert torch.allclose(estimate, torch.tensor(energies, dtype=F64), atol=0.08 * sum(energies)), estimate
    assert estimate[0] > estimate[1] > estimate[2]
    assert opt.state_bytes() == 3 * 4 * 4  # S and the two Δ² means: float32, one each per block
