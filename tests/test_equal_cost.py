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
from curvzo.analysis.equal_cost_convergence import (
    converge,
    convergence_markdown,
    convergence_study,
    heterogeneous_quadratic,
)
from curvzo.errors import ConfigError
from curvzo.optim import CurvZO, MeZO
from curvzo.optim.block_sampling import predicted_moment, variance_optimal
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
    loss = lambda: sum(torch.dot(g, p) for g, p in zip(gradients, params))
    history = []
    for step in range(6000):
        opt.step(loss)
        if step >= 2000:
            history.append(opt.scores.clone())
    estimate = torch.stack(history).double().mean(0)
    assert torch.allclose(estimate, torch.tensor(energies, dtype=F64), atol=0.08 * sum(energies)), estimate
    assert estimate[0] > estimate[1] > estimate[2]
    assert opt.state_bytes() == 5 * 4 * 4  # S and the contrast's four sums: float32, one each per block


def _minimise_directly(problem: BlockProblem, floor: float, ceiling: float) -> torch.Tensor:
    """A reference for the fixed-point solver: Adam on log π over the box, 3000 iterations."""
    G, T, H = problem.energy, problem.traces, problem.curvature_energy
    log_pi = torch.full((len(G),), float(torch.tensor(ceiling).log()), dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([log_pi], lr=0.02)
    for _ in range(3000):
        pi = log_pi.exp()
        objective = ((T * ((pi * G).sum() + (1 - pi) * G) + 2 * H) / pi).sum()
        opt.zero_grad()
        objective.backward()
        opt.step()
        with torch.no_grad():
            log_pi.clamp_(float(torch.tensor(floor).log()), float(torch.tensor(ceiling).log()))
    return log_pi.detach().exp()


@pytest.mark.parametrize("ceiling", [1.0, 0.9])
@pytest.mark.parametrize("seed", range(4))
def test_the_fixed_point_solver_finds_the_minimum_of_M(seed, ceiling):
    problem = random_problem(seed=seed)
    solved = variance_optimal(problem.energy, problem.traces, problem.curvature_energy, floor=1e-3, ceiling=ceiling)
    reference = _minimise_directly(problem, 1e-3, ceiling)
    m_solved = predicted_moment(solved, problem.energy, problem.traces, problem.curvature_energy)
    m_reference = predicted_moment(reference, problem.energy, problem.traces, problem.curvature_energy)
    assert m_solved == pytest.approx(curvature_moment(problem, solved), rel=1e-12)  # one formula, two homes
    assert m_solved <= m_reference * (1 + 1e-7)
    assert torch.allclose(solved, reference, atol=2e-3)
    assert float(solved.max()) <= ceiling and float(solved.min()) >= 1e-3
    # a stationary point of a convex function: no coordinate move inside the box lowers M
    for k in range(len(solved)):
        for factor in (0.99, 1.01):
            moved = solved.clone()
            moved[k] = min(ceiling, float(moved[k]) * factor)
            assert predicted_moment(moved, problem.energy, problem.traces, problem.curvature_energy) >= m_solved * (1 - 1e-12)


def test_with_no_energy_estimate_every_block_stays_at_the_ceiling():
    zeros = torch.zeros(5, dtype=F64)
    pi = variance_optimal(zeros, torch.full((5,), 8.0, dtype=F64), zeros, floor=0.05, ceiling=0.9)
    assert torch.equal(pi, torch.full((5,), 0.9, dtype=F64))
    with pytest.raises(ValueError, match="floor <= ceiling"):
        variance_optimal(zeros, torch.ones(5, dtype=F64), floor=0.5, ceiling=0.4)


def test_variance_optimal_sampling_at_ceiling_one_is_mezo_bit_for_bit():
    """π ≡ 1 leaves no step without a block, so the contrast never sees a block's other side: π stays 1."""
    nets = [tiny_net(), tiny_net()]
    mezo = MeZO(nets[0].parameters(), lr=1e-2, eps=1e-3, seed=4)
    curvzo = CurvZO(nets[1].parameters(), lr=1e-2, eps=1e-3, seed=4, score="regression", sampling="variance_optimal",
                    variance_optimal_ceiling=1.0)
    for _ in range(10):
        assert mezo.step(net_loss(nets[0])) == curvzo.step(net_loss(nets[1]))
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))
    assert curvzo.last_stats["curvzo/pi_min"] == 1.0


def test_variance_optimal_sampling_needs_the_regression_score():
    with pytest.raises(ConfigError, match="sampling=variance_optimal reads each block's gradient energy from score=regression"):
        CurvZO(tiny_net().parameters(), lr=1e-3, sampling="variance_optimal")


def test_variance_optimal_sampling_lowers_pi_where_the_estimate_finds_the_gradient():
    """On a linear loss whose gradient sits in one of four equal blocks, that block's π falls below the others'."""
    gradients = [torch.full((4,), 1.0, dtype=F64), *[torch.full((4,), 0.02, dtype=F64) for _ in range(3)]]
    params = [torch.nn.Parameter(torch.zeros(4, dtype=F64)) for _ in gradients]
    opt = CurvZO(params, lr=1e-12, eps=1e-3, seed=0, score="regression", sampling="variance_optimal", score_beta=0.02)
    loss = lambda: sum(torch.dot(g, p) for g, p in zip(gradients, params))
    for _ in range(600):
        opt.step(loss)
    pi = opt.inclusion_probabilities()
    energy = torch.stack([g.square().sum() for g in gradients])
    truth = variance_optimal(energy, torch.full((4,), 4.0, dtype=F64), energy, floor=0.05, ceiling=0.9)  # 0.67, 0.9 x 3
    assert float(pi[0]) < 0.85 and torch.allclose(pi, truth, atol=0.12), (pi, truth)
    # the ratio it logs is M(π)/M(1) from its own estimate; the optimum it drew beats leaving every block at the ceiling
    estimate = opt.contrast.energy().double()
    at_ceiling = predicted_moment(torch.full((4,), 0.9, dtype=F64), estimate, opt.numel, estimate) / \
        predicted_moment(torch.ones(4, dtype=F64), estimate, opt.numel, estimate)
    assert 0.5 < opt.last_stats["curvzo/predicted_variance_ratio_vs_mezo"] < at_ceiling


def test_the_oracle_optimal_pi_converges_in_fewer_passes_than_mezo():
    """Part (c)'s premise on one problem seed: with the true G_b, T_b, H_b the optimal π beats MeZO per pass."""
    problem = heterogeneous_quadratic(0)
    mezo = converge("mezo", problem, 2e-3, 0, cap=3000, target=0.1, checkpoint=500)
    oracle = converge("oracle variance-optimal π", problem, 2e-3, 0, cap=3000, target=0.1, checkpoint=500)
    assert oracle.passes_to_target is not None and mezo.passes_to_target is not None
    assert oracle.passes_to_target < 0.8 * mezo.passes_to_target


def test_the_convergence_table_picks_each_arms_best_lr():
    result = convergence_study(seeds=2, lrs=(1e-5, 2e-3), cap=1600, checkpoint=400, arms=("mezo", "curvzo_uniform"))
    for row in result["rows"]:
        assert row["lr"] == 2e-3 and row["reached"] >= 1  # 1e-5 cannot reach 10 % of the loss in 1600 passes
        assert row["mean_passes"] == sum(row["passes"]) / 2 < 1600  # a miss counts as the cap
    assert result["rows"][0]["passes_vs_mezo"] == 1.0
    text = "\n".join(convergence_markdown(result))
    assert "| mezo | 0.002 |" in text and "| curvzo_uniform | 0.002 |" in text
