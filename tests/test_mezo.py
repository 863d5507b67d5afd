"""MeZO invariants on plain tensors: closed form, determinism, replay, round trip, guards."""

from __future__ import annotations

import math

import pytest
import torch

from curvzo.errors import ConfigError
from curvzo.optim import DirectionSampler, MeZO, replay_trajectory
from curvzo.optim.directions import mix64
from tests.helpers import net_loss, quadratic, tiny_net


def test_one_step_matches_the_closed_form_on_a_quadratic():
    theta, a, b, loss = quadratic()
    start = theta.detach().clone()
    opt = MeZO([theta], lr=0.01, eps=1e-3, seed=7)
    z = opt.directions.direction(theta, opt.step_seed(0), 0).double()
    opt.step(loss)
    # the central difference is exact on a quadratic: g = zᵀ(Aθ − b)
    g = float(z @ (a @ start - b))
    expected = start - 0.01 * g * z
    assert opt.trajectory[0]["projected_grad"] == pytest.approx(g, rel=1e-9)
    torch.testing.assert_close(theta.detach(), expected, rtol=0, atol=1e-12)


def test_weight_decay_is_decoupled_and_closed_form():
    theta, a, b, loss = quadratic(seed=1)
    start = theta.detach().clone()
    opt = MeZO([theta], lr=0.01, eps=1e-3, weight_decay=0.5, seed=3)
    z = opt.directions.direction(theta, opt.step_seed(0), 0).double()
    opt.step(loss)
    g = float(z @ (a @ start - b))
    torch.testing.assert_close(theta.detach(), start * (1 - 0.01 * 0.5) - 0.01 * g * z, rtol=0, atol=1e-12)


def test_mezo_descends_a_quadratic():
    theta, _, _, loss = quadratic(dim=20, seed=2)
    opt = MeZO([theta], lr=0.02, eps=1e-3, seed=0)
    first = float(loss().detach())
    for _ in range(400):
        opt.step(loss)
    assert float(loss().detach()) < 0.5 * first


def test_same_seed_same_weights_and_different_seed_differs():
    runs = []
    for seed in (5, 5, 6):
        theta, _, _, loss = quadratic(seed=4)
        opt = MeZO([theta], lr=0.01, seed=seed)
        for _ in range(10):
            opt.step(loss)
        runs.append(theta.detach().clone())
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_forward_passes_and_trajectory_records():
    theta, _, _, loss = quadratic()
    opt = MeZO([theta], lr=0.01, seed=0)
    for _ in range(3):
        opt.step(loss)
    assert opt.forward_passes == 6
    assert [r["step"] for r in opt.trajectory] == [0, 1, 2]
    assert all(set(r) >= {"seed", "projected_grad", "lr"} for r in opt.trajectory)
    assert opt.last_stats["zo/forward_passes"] == 6


def test_replaying_the_trajectory_reproduces_the_final_weights():
    net = tiny_net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    opt = MeZO(net.parameters(), lr=0.05, eps=1e-3, seed=9)
    for _ in range(25):
        opt.step(net_loss(net))
    trained = {k: v.clone() for k, v in net.state_dict().items()}

    replica = tiny_net(seed=1)
    replica.load_state_dict(start)
    shell = MeZO(replica.parameters(), lr=0.05, eps=1e-3, seed=9)
    # replaying the probe shifts as well reproduces every rounding: bit-identical
    assert replay_trajectory(shell, opt.trajectory, eps=1e-3) == 25
    for k, v in replica.state_dict().items():
        assert torch.equal(v, trained[k]), k
    # updates only (one z pass per step): equal up to float32 rounding of the probe shifts
    replica.load_state_dict(start)
    replay_trajectory(shell, opt.trajectory)
    for k, v in replica.state_dict().items():
        torch.testing.assert_close(v, trained[k], rtol=0, atol=1e-6)


def test_perturb_and_restore_in_float32():
    # exact whenever the float32 arithmetic is exact (ε a power of two, θ on a coarse dyadic grid)
    sampler = DirectionSampler()
    theta = torch.zeros(10_000)
    eps = 2.0**-10
    for scale in (eps, -2 * eps, eps):
        sampler.add_(theta, seed=123, block=0, alpha=scale)
    assert torch.equal(theta, torch.zeros(10_000))
    # in general each in-place add rounds once, so the round trip is within 1.5 ulp of the largest
    # intermediate value, with no systematic drift (bit-exact restoration is impossible in place:
    # θ + εz loses the low bits of θ whenever |εz| > |θ|)
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(1_000_000, generator=g) * 0.02
    start = theta.clone()
    z = sampler.direction(theta, 7, 3)
    for scale in (1e-3, -2e-3, 1e-3):
        sampler.add_(theta, seed=7, block=3, alpha=scale)
    bound = 2.0**-22 * (start.abs() + 2e-3 * z.abs())
    assert torch.all((theta - start).abs() <= bound)
    drift = (theta - start).double()
    assert abs(float(drift.mean())) < 5 * float(drift.std()) / math.sqrt(drift.numel())  # unbiased


def test_perturb_and_restore_drift_is_bounded_in_bf16_and_fp16():
    for dtype, rel in ((torch.bfloat16, 2.0**-7), (torch.float16, 2.0**-10)):
        g = torch.Generator().manual_seed(0)
        theta = (torch.randn(100_000, generator=g) * 0.02).to(dtype)
        start = theta.clone()
        sampler = DirectionSampler()
        z = sampler.direction(theta, 1, 0)
        for scale in (1e-3, -2e-3, 1e-3):
            sampler.add_(theta, seed=1, block=0, alpha=scale)
        bound = rel * (start.float().abs() + 2e-3 * z.abs()) + 1e-7
        assert torch.all((theta.float() - start.float()).abs() <= bound)


def test_directions_are_pure_functions_of_seed_and_block():
    sampler = DirectionSampler(chunk_numel=1000)
    t = torch.empty(2500)
    z1 = sampler.direction(t, 42, 0)
    z2 = DirectionSampler(chunk_numel=1000).direction(t, 42, 0)
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, sampler.direction(t, 42, 1))
    assert not torch.equal(z1, sampler.direction(t, 43, 0))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    sampler.direction(t, 42, 0)
    assert torch.equal(torch.rand(1), before), "the global RNG must not be consumed"
    # standard normal statistics over a large draw
    big = sampler.direction(torch.empty(1_000_000), 5, 0)
    assert abs(float(big.mean())) < 5e-3 and abs(float(big.std()) - 1) < 5e-3


def test_step_seeds_differ_per_step_and_fit_in_63_bits():
    seeds = [mix64(0, 1, t) for t in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**63 for s in seeds)


def test_nonfinite_loss_skips_the_update():
    net = tiny_net()
    reference = tiny_net()
    opt = MeZO(net.parameters(), lr=0.05, seed=0)
    twin = MeZO(reference.parameters(), lr=0.05, seed=0)
    calls = iter([1.0, float("nan")])
    assert math.isnan(opt.step(lambda: torch.tensor(next(calls))))
    twin.shift(twin.step_seed(0), 1e-3)
    twin.shift(twin.step_seed(0), -2e-3)
    twin.shift(twin.step_seed(0), 1e-3)
    for p, q in zip(net.parameters(), reference.parameters()):
        assert torch.equal(p, q)  # only the probe round trip, no update
    assert opt.skipped_steps == 1 and opt.trajectory[-1]["skipped"] is True
    assert opt.forward_passes == 2


def test_updates_only_trainable_parameters():
    net = tiny_net()
    net[2].weight.requires_grad_(False)
    frozen = net[2].weight.detach().clone()
    opt = MeZO(net.parameters(), lr=0.05, seed=0)
    opt.step(net_loss(net))
    assert torch.equal(net[2].weight, frozen)
    assert len(opt.blocks) == 3


@pytest.mark.parametrize("kwargs", [{"lr": 0.0}, {"lr": -1e-3}, {"lr": 1e-3, "eps": 0.0},
                                    {"lr": 1e-3, "eps": -1.0}, {"lr": float("nan")}])
def test_invalid_hyperparameters_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        MeZO([torch.nn.Parameter(torch.zeros(2))], **kwargs)
