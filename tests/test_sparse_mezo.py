"""Sparse-MeZO: the masked update by hand, bit-packed masks, thresholds, the MeZO reduction."""

from __future__ import annotations

import math

import pytest
import torch

from curvzo.errors import ConfigError
from curvzo.optim import DirectionSampler, MeZO, SparseMeZO, replay_from_losses
from curvzo.optim.sparse_mezo import magnitude_threshold, pack_bits, packed_mask, unpack_bits
from tests.helpers import quadratic, train_quadratic


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1003])
def test_pack_and_unpack_round_trip_at_one_bit_per_entry(numel):
    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) < 0.3
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel / 8)
    assert torch.equal(unpack_bits(packed, numel), mask)


@pytest.mark.parametrize("start,stop", [(0, 1003), (8, 64), (3, 11), (5, 6), (996, 1003)])
def test_masking_a_span_is_the_product_with_the_unpacked_mask_bit_for_bit(start, stop):
    theta = torch.nn.Parameter(torch.randn(1003, generator=torch.Generator().manual_seed(5)))
    opt = SparseMeZO([theta], lr=0.01, keep=0.3)
    mask = unpack_bits(opt.state[theta]["mask"], 1003)
    z = torch.randn(stop - start, generator=torch.Generator().manual_seed(6))
    expected = z * mask[start:stop]  # masked entries become a zero with z's sign, as before
    masked = opt.transform(None, opt.blocks[0], slice(start, stop), z.clone())
    assert torch.equal(masked, expected) and torch.equal(masked.signbit(), expected.signbit())


def test_threshold_keeps_the_requested_fraction_of_small_magnitudes():
    values = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    h = magnitude_threshold(values, 0.25)
    assert int((values.abs() <= h).sum()) == 250
    assert float(values.abs().sort().values[249]) == h


def _weights(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if kind == "normal":
        return torch.randn(5000, generator=g) * 0.02
    if kind == "ties":  # few distinct magnitudes, signed zeros among them
        return torch.randint(-3, 4, (5000,), generator=g).float() * torch.tensor([1.0, -1.0]).repeat(2500)
    if kind == "bfloat16":
        return (torch.randn(5000, generator=g) * 0.02).bfloat16()
    return torch.randn(5000, generator=g, dtype=torch.float64) * 1e-3  # float64: thresholded in float32


@pytest.mark.parametrize("kind", ["normal", "ties", "bfloat16", "float64"])
@pytest.mark.parametrize("keep", [1e-4, 0.25, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("chunk", [64, 1 << 20])
def test_the_chunked_threshold_is_the_kth_smallest_magnitude_and_the_mask_is_packed_whole(kind, keep, chunk):
    values = _weights(kind)
    magnitudes = values.float().abs() if kind != "float64" else values.abs().float()
    k = max(1, math.ceil(keep * values.numel()))
    h = magnitude_threshold(values, keep, chunk=chunk)
    assert h == float(magnitudes.kthvalue(k).values)
    packed, kept = packed_mask(values, h, chunk=chunk)
    mask = values.abs().float() <= h
    assert torch.equal(packed, pack_bits(mask)) and kept == int(mask.sum()) >= k


def test_masks_rebuilt_every_step_are_written_into_the_buffers_allocated_at_the_start():
    net = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.Linear(20, 3))
    opt = SparseMeZO(net.parameters(), lr=1e-2, eps=1e-3, keep=0.5, mask_source="step", seed=0)
    buffers = {id(p): opt.state[p]["mask"].data_ptr() for p in net.parameters()}
    x = torch.randn(8, 30, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        before = [p.detach().clone() for p in net.parameters()]
        opt.step(lambda: net(x).square().mean())
    for p, start in zip(net.parameters(), before):
        assert not torch.equal(p.detach(), start)
        assert opt.state[p]["mask"].data_ptr() == buffers[id(p)]
        expected = start.abs().float() <= opt.state[p]["threshold"]  # rebuilt from the weights the last step began at
        assert torch.equal(opt.state[p]["mask"], pack_bits(expected))


def test_a_mask_chunk_must_be_whole_bytes():
    with pytest.raises(ValueError, match="multiple of 8"):
        packed_mask(torch.ones(20), 1.0, chunk=12)


def test_one_step_matches_the_hand_computation_across_chunk_boundaries():
    theta, a, b, loss = quadratic(dim=101, seed=2)
    start = theta.detach().clone()
    opt = SparseMeZO([theta], lr=0.01, eps=1e-3, keep=0.3, seed=1)
    opt.directions = DirectionSampler(sub_chunk=16, span=32)  # 4 spans: the mask slices must line up with z's
    mask = (start.abs().float() <= magnitude_threshold(start, 0.3)).double()
    z = mask * opt.directions.direction(theta, opt.step_seed(0), 0).double()
    opt.step(loss)
    g = float(z @ (a @ start - b))
    assert opt.trajectory[0]["projected_grad"] == pytest.approx(g, rel=1e-8)
    torch.testing.assert_close(theta.detach(), start - 0.01 * g * z, rtol=0, atol=1e-12)


def test_large_weights_never_move_and_the_kept_fraction_is_keep():
    theta, _, _, loss = quadratic(dim=400, seed=3)
    start = theta.detach().clone()
    opt = SparseMeZO([theta], lr=0.01, keep=0.25, seed=0)
    mask = opt.mask(opt.blocks[0])
    for _ in range(20):
        opt.step(loss)
    moved = theta.detach() != start
    assert int(mask.sum()) == 100 and opt.kept_fraction() == 0.25 and opt.last_stats["sparse/kept_fraction"] == 0.25
    assert not moved[~mask].any() and moved[mask].float().mean() > 0.99


@pytest.mark.parametrize("mask_source", ["pretrained", "step"])
def test_the_mask_is_the_same_in_all_four_passes_of_a_step(mask_source):
    # entries sit right at the threshold and eps is large, so a mask recomputed mid-step would flip
    theta = torch.nn.Parameter(torch.linspace(-1, 1, 64, dtype=torch.float64))
    opt = SparseMeZO([theta], lr=1e-3, eps=0.05, keep=0.5, mask_source=mask_source, seed=0)
    supports = []

    def closure():
        supports.append((theta.detach() != base).clone())
        return (theta.detach() ** 2).sum()

    for _ in range(5):
        base = theta.detach().clone()
        threshold = opt.state[theta]["threshold"]
        expected = opt.mask(opt.blocks[0]) if mask_source == "pretrained" else base.abs().float() <= threshold
        opt.step(closure)
        plus, minus = supports[-2:]
        assert torch.equal(plus, expected) and torch.equal(minus, expected)
        moved = theta.detach() != base
        assert not moved[~expected].any()


def test_step_mask_follows_the_weights_and_pretrained_does_not():
    theta = torch.nn.Parameter(torch.linspace(-1, 1, 64, dtype=torch.float64))
    target = torch.linspace(1, -1, 64, dtype=torch.float64)  # weights cross the threshold on the way
    closure = lambda: ((theta.detach() - target) ** 2).sum()  # noqa: E731
    masks = {}
    for source in ("pretrained", "step"):
        theta.data = torch.linspace(-1, 1, 64, dtype=torch.float64)
        opt = SparseMeZO([theta], lr=2e-3, eps=1e-3, keep=0.5, mask_source=source, seed=0)
        first = opt.mask(opt.blocks[0]).clone()
        for _ in range(300):
            opt.step(closure)
        masks[source] = (first, opt.mask(opt.blocks[0]))
    assert torch.equal(*masks["pretrained"]) and not torch.equal(*masks["step"])


def test_keep_one_equals_mezo_bit_for_bit():
    problem = {"dim": 50, "seed": 4, "dtype": torch.float32}
    mezo, _ = train_quadratic(lambda p: MeZO(p, lr=0.01, seed=7), 10, **problem)
    sparse, _ = train_quadratic(lambda p: SparseMeZO(p, lr=0.01, keep=1.0, seed=7), 10, **problem)
    assert torch.equal(mezo, sparse)


@pytest.mark.parametrize("apply_to, masked", [("all", 2), ("matrices", 1)])
def test_state_is_one_bit_per_masked_parameter_and_one_threshold_per_tensor(apply_to, masked):
    params = [torch.nn.Parameter(torch.randn(10, 13).half()), torch.nn.Parameter(torch.randn(21).half())]
    opt = SparseMeZO(params, lr=1e-3, apply_to=apply_to)
    assert [("mask" in opt.state[p], "threshold" in opt.state[p]) for p in params] == [(True, True), (masked == 2,) * 2]
    assert opt.state[params[0]]["mask"].numel() == math.ceil(130 / 8)
    assert opt.state_bytes() == math.ceil(130 / 8) + (math.ceil(21 / 8) if masked == 2 else 0)
    info = opt.describe()
    assert len(info["thresholds"]) == masked and info["state_bytes"] == opt.state_bytes()


def test_replay_from_losses_is_bit_exact():
    theta, _, _, loss = quadratic(dim=30, dtype=torch.float32)
    start = theta.detach().clone()
    opt = SparseMeZO([theta], lr=1e-2, keep=0.5, mask_source="step", seed=2)
    for _ in range(8):
        opt.step(loss)
    again = torch.nn.Parameter(start.clone())
    replay_from_losses(SparseMeZO([again], lr=1e-2, keep=0.5, mask_source="step", seed=2), opt.trajectory)
    assert torch.equal(again.detach(), theta.detach())


@pytest.mark.parametrize("kwargs, needle", [
    ({"keep": 0.0}, "optimizer.keep"),
    ({"mask_source": "random"}, "optimizer.mask_source"),
    ({"apply_to": "linear"}, "optimizer.apply_to"),
])
def test_invalid_hyperparameters_are_one_line_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        SparseMeZO([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, **kwargs)
