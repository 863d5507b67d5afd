"""MeZO invariants on plain tensors: closed form, determinism, replay, round trip, guards."""

from __future__ import annotations

import math

import pytest
import torch

from curvzo.errors import ConfigError
from curvzo.optim import DirectionSampler, MeZO, replay_from_losses, replay_trajectory
from curvzo.optim.streams import mix64, step_seed
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
    assert [r["step"] for r in opt.trajectory] == [1, 2, 3]
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
    # the exact probe never writes θ: the updates alone (one z pass per step) give the same bits
    assert replay_trajectory(shell, opt.trajectory) == 25
    for k, v in replica.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_inplace_probe_replays_bit_for_bit_from_losses_and_to_rounding_from_updates():
    net = tiny_net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    opt = MeZO(net.parameters(), lr=0.05, eps=1e-3, seed=9, probe="inplace")
    for _ in range(25):
        opt.step(net_loss(net))
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    replica = tiny_net(seed=1)
    replica.load_state_dict(start)
    # replaying the probe shifts as well reproduces every rounding: bit-identical
    assert replay_from_losses(MeZO(replica.parameters(), lr=0.05, eps=1e-3, seed=9, probe="inplace"),
                              opt.trajectory) == 25
    for k, v in replica.state_dict().items():
        assert torch.equal(v, trained[k]), k
    # updates only: equal up to the float32 rounding of the in-place shifts, which the exact probe avoids
    replica.load_state_dict(start)
    replay_trajectory(MeZO(replica.parameters(), lr=0.05, eps=1e-3, seed=9), opt.trajectory)
    for k, v in replica.state_dict().items():
        torch.testing.assert_close(v, trained[k], rtol=0, atol=1e-6)


def _inplace_add(theta: torch.Tensor, sampler: DirectionSampler, seed: int, block: int, alpha: float) -> None:
    """The in-place scheme's shift: θ += αz, rounded once per add."""
    flat = theta.view(-1)
    for span, z in sampler.spans(theta, seed, block):
        flat[span] = (flat[span].float() + alpha * z).to(theta.dtype) if theta.dtype != torch.float32 \
            else flat[span].add_(z, alpha=alpha)


def test_inplace_perturb_and_restore_rounds_in_float32():
    # exact whenever the float32 arithmetic is exact (ε a power of two, θ on a coarse dyadic grid)
    sampler = DirectionSampler()
    theta = torch.zeros(10_000)
    eps = 2.0**-10
    for scale in (eps, -2 * eps, eps):
        _inplace_add(theta, sampler, 123, 0, scale)
    assert torch.equal(theta, torch.zeros(10_000))
    # in general each in-place add rounds once, so the round trip is within 1.5 ulp of the largest
    # intermediate value, with no systematic drift (bit-exact restoration is impossible in place:
    # θ + εz loses the low bits of θ whenever |εz| > |θ|): the reason the exact probe exists
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(1_000_000, generator=g) * 0.02
    start = theta.clone()
    z = sampler.direction(theta, 7, 3)
    for scale in (1e-3, -2e-3, 1e-3):
        _inplace_add(theta, sampler, 7, 3, scale)
    bound = 2.0**-22 * (start.abs() + 2e-3 * z.abs())
    assert torch.all((theta - start).abs() <= bound)
    assert (theta != start).float().mean() > 0.1  # many elements are off by an ulp after one round trip
    drift = (theta - start).double()
    assert abs(float(drift.mean())) < 5 * float(drift.std()) / math.sqrt(drift.numel())  # unbiased


def test_inplace_perturb_and_restore_drift_is_bounded_in_bf16_and_fp16():
    for dtype, rel in ((torch.bfloat16, 2.0**-7), (torch.float16, 2.0**-10)):
        g = torch.Generator().manual_seed(0)
        theta = (torch.randn(100_000, generator=g) * 0.02).to(dtype)
        start = theta.clone()
        sampler = DirectionSampler()
        z = sampler.direction(theta, 1, 0)
        for scale in (1e-3, -2e-3, 1e-3):
            _inplace_add(theta, sampler, 1, 0, scale)
        bound = rel * (start.float().abs() + 2e-3 * z.abs()) + 1e-7
        assert torch.all((theta.float() - start.float()).abs() <= bound)


def test_directions_are_pure_functions_of_seed_block_and_sub_chunk():
    sampler = DirectionSampler(sub_chunk=1000, span=3000)
    t = torch.empty(2500)
    z1 = sampler.direction(t, 42, 0)
    # the span and the number of drawing threads do not change z; sub-chunk c comes from its own generator
    assert torch.equal(z1, DirectionSampler(sub_chunk=1000, span=1000, workers=1).direction(t, 42, 0))
    assert torch.equal(z1, DirectionSampler(sub_chunk=1000, workers=3).direction(t, 42, 0))
    for c in range(3):
        piece = torch.empty(min(1000, 2500 - 1000 * c)).normal_(generator=torch.Generator().manual_seed(mix64(42, 0, c)))
        assert torch.equal(z1[1000 * c:1000 * (c + 1)], piece)
    assert not torch.equal(z1, sampler.direction(t, 42, 1))
    assert not torch.equal(z1, sampler.direction(t, 43, 0))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    sampler.direction(t, 42, 0)
    assert torch.equal(torch.rand(1), before), "the global RNG must not be consumed"
    # standard normal statistics over a large draw
    big = DirectionSampler().direction(torch.empty(1_000_000), 5, 0)
    assert abs(float(big.mean())) < 5e-3 and abs(float(big.std()) - 1) < 5e-3


def test_rademacher_directions_are_balanced_signs_with_unit_second_moment():
    z = DirectionSampler("rademacher").direction(torch.empty(1_000_003), 5, 0)
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())  # E[z] = 0 within 5 standard errors
    pairs = z[:-1] * z[1:]  # neighbouring signs are independent: E[z_i z_j] = 0
    assert abs(float(pairs.mean())) < 5 / math.sqrt(pairs.numel())
    assert torch.equal(z, DirectionSampler("rademacher", workers=3).direction(torch.empty(1_000_003), 5, 0))


def test_step_seeds_differ_per_step_and_fit_in_63_bits():
    seeds = [step_seed(0, t) for t in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert seeds[3] == mix64(0, 1, 3)  # the step stream's tag is 1 (unchanged since contract v1)


def test_nonfinite_loss_skips_the_update_and_leaves_the_weights_bit_identical():
    net = tiny_net()
    reference = tiny_net()
    opt = MeZO(net.parameters(), lr=0.05, seed=0)
    calls = iter([1.0, float("nan")])
    assert math.isnan(opt.step(lambda: torch.tensor(next(calls))))
    for p, q in zip(net.parameters(), reference.parameters()):
        assert torch.equal(p, q)  # the exact probe never wrote θ, and there was no update
    assert opt.skipped_steps == 1 and opt.trajectory[-1]["skipped"] is True and opt.last_outcome == "skipped"
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
