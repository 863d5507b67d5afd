"""Updates that survive half precision: stochastic rounding is unbiased, seeded and replayable (optimizers.md §1.4)."""

from __future__ import annotations

import math

import pytest
import torch

from curvzo.optim import MeZO, ZOAdam, replay_from_losses
from curvzo.optim.rounding import resolve_rounding, store
from curvzo.peft_modes import parameter_groups
from tests.helpers import DEVICES, tiny_model

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _weights(dtype, n: int = 20_000, seed: int = 0) -> torch.Tensor:
    """Weights of magnitude 0.01-0.1 (ulp ≥ 6e-5 in bfloat16, 7.6e-6 in float16), random signs."""
    g = torch.Generator().manual_seed(seed)
    return ((0.01 + torch.rand(n, generator=g) * 0.09) * torch.randn(n, generator=g).sign()).to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", sorted(HALF))
def test_stochastic_rounding_is_unbiased_where_nearest_rounding_loses_the_update(dtype, device):
    theta = _weights(HALF[dtype]).to(device)
    delta = 1e-6 * torch.randn(theta.numel(), generator=torch.Generator().manual_seed(1)).to(device)  # below half an ulp
    exact = theta.double() + delta.double()
    nearest = theta.clone()
    store(nearest, theta.float() + delta, "nearest", seed=5, block=0, start=0)
    assert torch.equal(nearest, theta)  # round-to-nearest throws every update away
    rounded = theta.clone()
    store(rounded, theta.float() + delta, "stochastic", seed=5, block=0, start=0)
    error = rounded.double() - exact  # per element: mean 0 if unbiased
    moved = (rounded != theta).float().mean()
    assert 0 < moved < 0.2  # a few elements jump by an ulp, the rest stay
    assert abs(float(error.mean())) <= 3 * float(error.std()) / math.sqrt(error.numel())
    # a drift in one direction (1e-6 on every weight) survives on average: mean(θ_new − θ) = 1e-6 ± 3 SE
    drift = theta.clone()
    store(drift, theta.float() + 1e-6, "stochastic", seed=6, block=0, start=0)
    step = drift.double() - theta.double()
    assert abs(float(step.mean()) - 1e-6) <= 3 * float(step.std()) / math.sqrt(step.numel())
    assert float(step.mean()) > 3 * float(step.std()) / math.sqrt(step.numel())  # and it is seen


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_stochastic_rounding_keeps_representable_values_and_picks_a_neighbour(dtype):
    theta = _weights(HALF[dtype])
    same = theta.clone()
    store(same, theta.float(), "stochastic", seed=3, block=1, start=0)
    assert torch.equal(same, theta)  # nothing to round: nothing changes
    value = theta.float() * (1 + 3e-3)  # between two neighbours, several ulps away for some
    rounded = theta.clone()
    store(rounded, value.clone(), "stochastic", seed=3, block=1, start=0)
    down = value.to(HALF[dtype])
    assert torch.all((rounded.float() - value).abs() <= (rounded.float() - down.float()).abs().clamp(min=0)
                     + (value - down.float()).abs() + 1e-12)


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_rounding_bits_are_a_pure_function_of_step_block_and_position(dtype):
    theta = _weights(HALF[dtype], n=3 * 65536 + 17)
    value = theta.float() + 1e-6
    whole = theta.clone()
    store(whole, value.clone(), "stochastic", seed=9, block=4, start=0, workers=3)
    pieces = theta.clone()
    for start in range(0, theta.numel(), 65536):  # span by span, one thread: the same bits
        stop = min(start + 65536, theta.numel())
        store(pieces[start:stop], value[start:stop].clone(), "stochastic", seed=9, block=4, start=start)
    assert torch.equal(whole, pieces)
    other = theta.clone()
    store(other, value.clone(), "stochastic", seed=10, block=4, start=0)
    assert not torch.equal(whole, other)


def test_auto_rounds_half_stochastically_and_float32_to_nearest():
    assert resolve_rounding("auto", torch.bfloat16) == "stochastic" == resolve_rounding("auto", torch.float16)
    assert resolve_rounding("auto", torch.float32) == "nearest" == resolve_rounding("stochastic", torch.float32)
    assert resolve_rounding("nearest", torch.bfloat16) == "nearest"


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_a_half_precision_mezo_update_matches_the_float32_update_on_average(dtype):
    """The same step (same z, same projected gradient) on half and float32 copies of the same weights."""
    theta_half = torch.nn.Parameter(_weights(HALF[dtype]))
    theta_fp32 = torch.nn.Parameter(theta_half.detach().float())
    constant = lambda: iter([1.0, 0.0])  # noqa: E731 (ℓ+ − ℓ− = 1: g = 1/(2ε), the same in both runs)
    for param, rounding in ((theta_half, "auto"), (theta_fp32, "auto")):
        losses = constant()
        MeZO([param], lr=1e-9, eps=1e-3, seed=2, update_rounding=rounding).step(lambda: torch.tensor(next(losses)))
    start = _weights(HALF[dtype]).double()
    update_fp32, update_half = theta_fp32.detach().double() - start, theta_half.detach().double() - start
    assert float(update_fp32.abs().max()) < 5e-5 < 2.0**-14  # below half an ulp of |θ| ≈ 0.02
    diff = update_half - update_fp32
    assert abs(float(diff.mean())) <= 3 * float(diff.std()) / math.sqrt(diff.numel())
    nearest = torch.nn.Parameter(_weights(HALF[dtype]))
    losses = constant()
    MeZO([nearest], lr=1e-9, eps=1e-3, seed=2, update_rounding="nearest").step(lambda: torch.tensor(next(losses)))
    assert torch.equal(nearest.detach(), _weights(HALF[dtype]))  # the official behaviour loses it


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make", [lambda g: MeZO(g, lr=1e-4, seed=4), lambda g: ZOAdam(g, lr=1e-5, seed=4)],
                         ids=["mezo", "zo_adam"])
def test_replaying_a_bfloat16_run_is_bit_exact(make, device):
    def build():
        model = tiny_model("tiny-llama", dtype="bfloat16", device=device).model.eval()
        return model, [p for p in model.parameters() if p.requires_grad]

    model, params = build()
    opt = make(parameter_groups(model, 0.0))
    opt.bind_model(model)
    ids = torch.randint(3, 259, (4, 16), generator=torch.Generator().manual_seed(0)).to(device)

    def closure():
        with torch.inference_mode():
            return model(input_ids=ids).logits.float().log_softmax(-1)[..., 5].mean().neg()

    for _ in range(8):
        opt.step(closure)
    twin_model, twin_params = build()
    twin = make(parameter_groups(twin_model, 0.0))
    twin.bind_model(twin_model)
    assert replay_from_losses(twin, opt.trajectory) == 8
    moved = 0
    for p, q, start in zip(params, twin_params, build()[1]):
        assert torch.equal(p, q)
        moved += int((p != start).sum())
    assert moved > 0
