"""HiZOO: the Hessian-informed update by hand, the MeZO reduction, float32 state, accounting."""

from __future__ import annotations

import math

import pytest
import torch

from curvzo.errors import ConfigError
from curvzo.optim import DirectionSampler, HiZOO, MeZO, replay_from_losses
from tests.helpers import net_loss, quadratic, tiny_net, train_quadratic


def test_two_steps_match_the_hand_computation():
    theta, a, b, loss = quadratic(dim=25, seed=1)
    lr, eps, alpha = 1e-3, 1e-2, 0.3
    opt = HiZOO([theta], lr=lr, eps=eps, hessian_smooth=alpha, seed=2)
    expected, hessian = theta.detach().clone(), torch.ones(25, dtype=torch.float64)
    f = lambda x: float(0.5 * x @ a @ x - b @ x)  # noqa: E731
    for step in range(2):
        z = opt.directions.direction(theta, opt.step_seed(step), 0).double()
        shift = eps * z / hessian.sqrt()  # the probe uses the old H
        l0, lp, lm = f(expected), f(expected + shift), f(expected - shift)
        hessian = (1 - alpha) * hessian + alpha * abs(lp + lm - 2 * l0) / (2 * eps**2) * hessian * z**2
        expected = expected - lr * (lp - lm) / (2 * eps) * z / hessian.sqrt()  # the step uses the new H
        assert opt.step(loss) == pytest.approx(l0, rel=1e-9)
        torch.testing.assert_close(theta.detach(), expected, rtol=1e-6, atol=1e-9)  # H is float32 state
        torch.testing.assert_close(opt.state[theta]["hessian"].double(), hessian, rtol=1e-6, atol=0)
    assert opt.last_stats["hizoo/curvature"] > 0 and opt.last_stats["hizoo/h_max"] > 1


@pytest.mark.parametrize("hessian_dtype", ["fp32", "param"])
def test_the_logged_mean_min_and_max_of_h_are_those_of_the_stored_diagonal(hessian_dtype):
    net = tiny_net(dtype=torch.bfloat16 if hessian_dtype == "param" else torch.float32)
    opt = HiZOO(net.parameters(), lr=1e-2, eps=1e-2, hessian_smooth=0.5, hessian_dtype=hessian_dtype, seed=1)
    opt.directions = DirectionSampler(sub_chunk=8, span=16)  # several pieces per tensor, one summary row each
    assert sum(len(opt.directions.piece_spans(p)) for p in net.parameters()) > len(list(net.parameters()))
    for _ in range(2):
        opt.step(net_loss(net))
    h = torch.cat([opt.state[p]["hessian"].double().reshape(-1) for p in net.parameters()])
    assert float(h.max()) > 1.0 > float(h.min())
    stats = opt.last_stats
    tolerance = 1e-6 if hessian_dtype == "fp32" else 1e-2  # summaries are of the float32 H before it is stored
    assert stats["hizoo/h_mean"] == pytest.approx(float(h.mean()), rel=tolerance)
    assert stats["hizoo/h_min"] == pytest.approx(float(h.min()), rel=tolerance)
    assert stats["hizoo/h_max"] == pytest.approx(float(h.max()), rel=tolerance)


def test_zero_smoothing_retraces_mezo_bit_for_bit():
    problem = {"dim": 40, "seed": 3, "dtype": torch.float32}
    mezo, mezo_opt = train_quadratic(lambda p: MeZO(p, lr=0.01, seed=4), 15, **problem)
    hizoo, hizoo_opt = train_quadratic(lambda p: HiZOO(p, lr=0.01, hessian_smooth=0.0, seed=4), 15, **problem)
    assert torch.equal(mezo, hizoo)
    assert (mezo_opt.forward_passes, hizoo_opt.forward_passes) == (30, 45)  # HiZOO's third pass is ℓ0


def test_float32_hessian_moves_where_the_fp16_code_rounds_it_away():
    # the spec's arithmetic: in fp16, 1 − 1e-8 is 1 and increments below ≈4.9e-4 vanish
    one = torch.tensor(1.0, dtype=torch.float16)
    assert one * (1 - 1e-8) == one and one + 4e-4 == one and one + 5e-4 != one
    hessians = {}
    for dtype in ("fp32", "param"):
        theta = torch.nn.Parameter(torch.linspace(-0.05, 0.05, 200).half())  # small |θ|: fine fp16 spacing
        closure = lambda: 5.0 * (theta.detach().float() ** 2).sum()  # noqa: E731  (curvature 10 per coordinate)
        opt = HiZOO([theta], lr=1e-5, eps=1e-3, hessian_smooth=1e-8, hessian_dtype=dtype, seed=0)
        for _ in range(5):
            opt.step(closure)
        hessians[dtype] = opt.state[theta]["hessian"]
    assert hessians["fp32"].dtype == torch.float32 and hessians["param"].dtype == torch.float16
    increments = hessians["fp32"].double() - 1
    assert (increments > 0).float().mean() > 0.9 and float(increments.max()) < 4.9e-4  # real, but below fp16's reach
    assert torch.equal(hessians["param"], torch.ones_like(hessians["param"]))  # every change rounded away


def test_state_is_one_float32_buffer_per_tensor():
    params = [torch.nn.Parameter(torch.randn(6, 4).bfloat16()), torch.nn.Parameter(torch.randn(9).bfloat16())]
    opt = HiZOO(params, lr=1e-3)
    assert [opt.state[p]["hessian"].dtype for p in params] == [torch.float32] * 2
    assert [opt.state[p]["hessian"].shape for p in params] == [p.shape for p in params]
    assert opt.state_bytes() == 4 * 33 and opt.describe()["state_bytes"] == 132


def test_smoothing_schedule():
    opt = HiZOO([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, hessian_smooth=1e-6, hessian_smooth_schedule="step",
                hessian_smooth_final=1e-8, hessian_smooth_switch_step=3)
    assert [opt.smoothing(t) for t in range(5)] == [1e-6, 1e-6, 1e-6, 1e-8, 1e-8]
    constant = HiZOO([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, hessian_smooth=1e-6)
    assert constant.smoothing(10**6) == 1e-6


def test_deterministic_and_replayable_from_losses():
    runs = []
    for seed in (5, 5, 6):
        theta, _, _, loss = quadratic(dim=20, seed=6, dtype=torch.float32)
        start = theta.detach().clone()
        opt = HiZOO([theta], lr=1e-3, hessian_smooth=0.1, seed=seed)
        for _ in range(6):
            opt.step(loss)
        runs.append(theta.detach().clone())
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    again = torch.nn.Parameter(start.clone())
    replica = HiZOO([again], lr=1e-3, hessian_smooth=0.1, seed=6)
    replay_from_losses(replica, opt.trajectory)
    assert torch.equal(again.detach(), runs[2]) and torch.equal(replica.state[again]["hessian"], opt.state[theta]["hessian"])


def test_nonfinite_loss_skips_without_touching_the_hessian():
    theta, _, _, loss = quadratic(dim=10)
    opt = HiZOO([theta], lr=1e-3, hessian_smooth=0.1, seed=0)
    opt.step(loss)
    before, hessian = theta.detach().clone(), opt.state[theta]["hessian"].clone()
    calls = iter([1.0, float("inf"), 1.0])
    assert math.isnan(opt.step(lambda: torch.tensor(next(calls))))
    torch.testing.assert_close(theta.detach(), before, rtol=0, atol=1e-15)
    assert torch.equal(opt.state[theta]["hessian"], hessian)
    assert opt.skipped_steps == 1 and opt.forward_passes == 6 and opt.last_stats["zo/nonfinite_losses"] == 1


@pytest.mark.parametrize("kwargs, needle", [
    ({"hessian_smooth": 1.5}, "optimizer.hessian_smooth"),
    ({"hessian_smooth_schedule": "constant_with_warmup"}, "optimizer.hessian_smooth_schedule"),
    ({"hessian_dtype": "fp16"}, "optimizer.hessian_dtype"),
    ({"eps": 0}, "optimizer.eps"),
])
def test_invalid_hyperparameters_are_one_line_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        HiZOO([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, **kwargs)
