"""ZO-SGD-momentum and ZO-Adam: closed-form updates, MeZO reduction, float32 state, guards."""

from __future__ import annotations

import math

import pytest
import torch

from curvzo.errors import ConfigError
from curvzo.optim import MeZO, ZOAdam, ZOSGDMomentum, replay_from_losses
from tests.helpers import quadratic, train_quadratic


def probe_scalars(opt, theta, a, b, step: int) -> tuple[torch.Tensor, float]:
    """z of ``step`` and the exact central difference g = zᵀ(Aθ − b) at the current θ (quadratic)."""
    z = opt.directions.direction(theta, opt.step_seed(step), 0).double()
    return z, float(z @ (a @ theta.detach() - b))


def test_momentum_two_steps_match_the_hand_computation():
    theta, a, b, loss = quadratic(dim=30)
    opt = ZOSGDMomentum([theta], lr=0.01, eps=1e-3, momentum=0.9, seed=3)
    expected, m = theta.detach().clone(), torch.zeros(30, dtype=torch.float64)
    for step in range(2):
        z, g = probe_scalars(opt, theta, a, b, step)
        m = 0.9 * m + g * z
        expected = expected - 0.01 * m
        opt.step(loss)
        torch.testing.assert_close(theta.detach(), expected, rtol=1e-6, atol=1e-7)  # m is float32 state
    # the buffer is float32 state holding m
    torch.testing.assert_close(opt.state[theta]["momentum_buffer"].double(), m, rtol=1e-6, atol=1e-6)


def test_momentum_zero_equals_mezo_up_to_rounding():
    mezo, _ = train_quadratic(lambda p: MeZO(p, lr=0.01, seed=1), 20, dim=40, seed=2)
    momentum, _ = train_quadratic(lambda p: ZOSGDMomentum(p, lr=0.01, momentum=0.0, seed=1), 20, dim=40, seed=2)
    assert not torch.equal(mezo, momentum)  # g·z is rounded to the float32 buffer first
    torch.testing.assert_close(mezo, momentum, rtol=1e-6, atol=1e-7)


def test_adam_two_steps_match_the_hand_computation():
    theta, a, b, loss = quadratic(dim=30, seed=1)
    opt = ZOAdam([theta], lr=1e-3, eps=1e-3, betas=(0.9, 0.999), adam_eps=1e-8, seed=4)
    expected = theta.detach().clone()
    m = v = torch.zeros(30, dtype=torch.float64)
    for t in (1, 2):
        z, g = probe_scalars(opt, theta, a, b, t - 1)
        pseudo = g * z
        m = 0.9 * m + 0.1 * pseudo
        v = 0.999 * v + 0.001 * pseudo**2
        expected = expected - 1e-3 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        opt.step(loss)
        torch.testing.assert_close(theta.detach(), expected, rtol=1e-6, atol=1e-9)  # moments are float32 state
    assert opt.state[theta]["step"] == 2


def test_adam_first_step_moves_every_coordinate_by_about_lr():
    theta, _, _, loss = quadratic(dim=200, seed=3)
    start = theta.detach().clone()
    ZOAdam([theta], lr=1e-3, seed=0).step(loss)
    moved = (theta.detach() - start).abs()
    # m̂/√v̂ = ĝ/|ĝ| on the first step: a sign step of size lr (eps makes it a hair smaller)
    assert float(moved.max()) <= 1e-3 * (1 + 1e-5) and float(moved.median()) > 0.99e-3


@pytest.mark.parametrize("cls, keys", [(ZOSGDMomentum, ("momentum_buffer",)), (ZOAdam, ("exp_avg", "exp_avg_sq"))])
@pytest.mark.parametrize("state_dtype, expected", [("fp32", torch.float32), ("param", torch.bfloat16)])
def test_state_size_and_dtype(cls, keys, state_dtype, expected):
    params = [torch.nn.Parameter(torch.randn(7, 5).bfloat16()), torch.nn.Parameter(torch.randn(11).bfloat16())]
    opt = cls(params, lr=1e-3, state_dtype=state_dtype)
    for p in params:
        for key in keys:
            assert opt.state[p][key].shape == p.shape and opt.state[p][key].dtype == expected
    assert opt.state_bytes() == len(keys) * 46 * expected.itemsize


@pytest.mark.parametrize("cls, lr", [(ZOSGDMomentum, 5e-4), (ZOAdam, 2e-3)])  # momentum: 10x effective lr
def test_bf16_weights_train_with_float32_state(cls, lr):
    params = [torch.nn.Parameter(torch.randn(64).bfloat16())]
    target = torch.randn(64)
    opt = cls(params, lr=lr, eps=1e-2, seed=0)
    closure = lambda: ((params[0].detach().float() - target) ** 2).sum()  # noqa: E731
    first = float(closure())
    for _ in range(60):
        opt.step(closure)
    assert float(closure()) < first and all(torch.isfinite(v).all() for s in opt.state.values()
                                            for v in s.values() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("cls", [ZOSGDMomentum, ZOAdam])
def test_same_seed_same_weights_and_different_seed_differs(cls):
    runs = [train_quadratic(lambda p: cls(p, lr=1e-3, seed=seed), 5, seed=4)[0] for seed in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


@pytest.mark.parametrize("cls", [ZOSGDMomentum, ZOAdam])
def test_nonfinite_loss_leaves_weights_and_state_alone(cls):
    theta, _, _, loss = quadratic(dim=10)
    opt = cls([theta], lr=1e-3, seed=0)
    opt.step(loss)
    before = theta.detach().clone()
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[theta].items()}
    assert math.isnan(opt.step(lambda: torch.tensor(float("nan"))))
    torch.testing.assert_close(theta.detach(), before, rtol=0, atol=1e-15)  # restored (+ε −2ε +ε), not updated
    assert opt.skipped_steps == 1 and opt.forward_passes == 4
    for key, value in state.items():
        assert torch.equal(opt.state[theta][key], value) if isinstance(value, torch.Tensor) else opt.state[theta][key] == value


@pytest.mark.parametrize("cls", [ZOSGDMomentum, ZOAdam])
def test_replay_from_losses_is_bit_exact(cls):
    theta, _, _, loss = quadratic(dim=20, dtype=torch.float32)
    start = theta.detach().clone()
    opt = cls([theta], lr=1e-3, seed=2)
    for _ in range(6):
        opt.step(loss)
    again = torch.nn.Parameter(start.clone())
    replay_from_losses(cls([again], lr=1e-3, seed=2), opt.trajectory)
    assert torch.equal(again.detach(), theta.detach())


@pytest.mark.parametrize("cls, kwargs, needle", [
    (ZOSGDMomentum, {"momentum": 1.0}, "optimizer.momentum"),
    (ZOSGDMomentum, {"state_dtype": "fp8"}, "optimizer.state_dtype"),
    (ZOAdam, {"betas": (0.9, 1.0)}, "optimizer.betas"),
    (ZOAdam, {"adam_eps": 0.0}, "optimizer.adam_eps"),
])
def test_invalid_hyperparameters_are_one_line_errors(cls, kwargs, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        cls([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cls", [ZOSGDMomentum, ZOAdam])
def test_state_dict_round_trip_keeps_float32_state_and_continues_identically(cls):
    # torch's own load_state_dict casts floating state to the parameter dtype; ours must not
    def make():
        param = torch.nn.Parameter(torch.linspace(-1, 1, 32).bfloat16())
        return param, cls([param], lr=1e-3, eps=1e-2, seed=9)

    closure_of = lambda p: (lambda: ((p.detach().float() - 0.5) ** 2).sum())  # noqa: E731
    param, opt = make()
    for _ in range(3):
        opt.step(closure_of(param))
    saved, weights = opt.state_dict(), param.detach().clone()
    resumed_param, resumed = make()
    resumed_param.data.copy_(weights)
    resumed.load_state_dict(saved)
    assert all(v.dtype == torch.float32 for v in resumed.state[resumed_param].values() if isinstance(v, torch.Tensor))
    for _ in range(3):
        opt.step(closure_of(param))
        resumed.step(closure_of(resumed_param))
    assert torch.equal(param.detach(), resumed_param.detach())
