"""The restore fused with the update: bit-identical to the straightforward four-pass step, one z draw fewer."""

from __future__ import annotations

import pytest
import torch

from curvzo.optim import CurvZO, MeZO
from curvzo.optim.directions import DirectionSampler
from curvzo.optim.hizoo import HiZOO
from curvzo.optim.sparse_mezo import SparseMeZO
from curvzo.optim.zo_adam import ZOAdam
from curvzo.optim.zo_sgd_momentum import ZOSGDMomentum
from tests.helpers import net_loss, tiny_net


def _groups(net, weight_decay: float):
    """Matrices with weight decay, biases without (as parameter_groups builds them)."""
    decayed = [p for n, p in net.named_parameters() if n.endswith("weight")]
    plain = [p for n, p in net.named_parameters() if not n.endswith("weight")]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


@torch.no_grad()
def _straightforward_step(opt, closure, step: int) -> None:
    """+ε, −2ε, +ε, then the update: four regenerations of z, the path the fused step replaces."""
    seed = opt.step_seed(step)
    opt.shift(seed, +opt.eps)
    loss_plus = float(closure())
    opt.shift(seed, -2 * opt.eps)
    loss_minus = float(closure())
    opt.shift(seed, +opt.eps)
    opt.apply_update(seed, (loss_plus - loss_minus) / (2 * opt.eps))


@pytest.fixture
def count_draws(monkeypatch):
    """Counts how often any block's z is (re)generated."""
    calls = []
    original = DirectionSampler.spans

    def spans(self, tensor, seed, block):
        calls.append(block)
        return original(self, tensor, seed, block)

    monkeypatch.setattr(DirectionSampler, "spans", spans)
    return calls


@pytest.mark.parametrize("make", [
    lambda groups: MeZO(groups, lr=1e-2, eps=1e-3, seed=3),
    lambda groups: SparseMeZO(groups, lr=1e-2, eps=1e-3, seed=3, keep=0.5),
], ids=["mezo", "sparse_mezo"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fused_step_is_bit_identical_to_the_straightforward_path(make, weight_decay, count_draws):
    fused_net, plain_net = tiny_net(seed=1), tiny_net(seed=1)
    fused, plain = make(_groups(fused_net, weight_decay)), make(_groups(plain_net, weight_decay))
    fused_loss, plain_loss = net_loss(fused_net), net_loss(plain_net)
    for step in range(4):
        count_draws.clear()
        fused.step(fused_loss)
        assert len(count_draws) == 3 * len(fused.blocks)  # three draws of each block's z, not four
        _straightforward_step(plain, plain_loss, step)
    for a, b in zip(fused_net.parameters(), plain_net.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(next(fused_net.parameters()), next(tiny_net(seed=1).parameters()))  # it moved


def test_a_skipped_step_restores_without_updating(count_draws):
    net = tiny_net(seed=2)
    start = [p.detach().clone() for p in net.parameters()]
    opt = MeZO(net.parameters(), lr=1e-2, eps=1e-3, seed=0)
    assert torch.isnan(torch.tensor(opt.step(lambda: torch.tensor(float("nan")))))
    assert len(count_draws) == 3 * len(opt.blocks)  # +ε, −2ε, +ε: no update pass
    for p, p0 in zip(net.parameters(), start):
        torch.testing.assert_close(p, p0, rtol=0, atol=1e-6)  # restored up to perturb/restore rounding


@pytest.mark.parametrize("make", [
    lambda groups: ZOSGDMomentum(groups, lr=1e-2, eps=1e-3, momentum=0.9, seed=5),
    lambda groups: ZOAdam(groups, lr=1e-3, eps=1e-3, seed=5),
], ids=["zo_sgd_momentum", "zo_adam"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_stateful_steps_restore_inside_the_update_bit_for_bit(make, weight_decay, count_draws):
    fused_net, plain_net = tiny_net(seed=4), tiny_net(seed=4)
    fused, plain = make(_groups(fused_net, weight_decay)), make(_groups(plain_net, weight_decay))
    plain.restore_chunk = lambda view, z, block: None  # the straightforward path restores everything first
    fused_loss, plain_loss = net_loss(fused_net), net_loss(plain_net)
    for step in range(4):
        count_draws.clear()
        fused.step(fused_loss)
        assert len(count_draws) == 3 * len(fused.blocks)
        with torch.no_grad():
            seed = plain.step_seed(step)
            loss_plus, loss_minus = plain.two_point_probe(plain_loss, seed, plain.eps)  # +ε, −2ε, +ε
            for block in plain.blocks:
                if block.group["weight_decay"]:
                    block.param.mul_(1.0 - block.group["lr"] * block.group["weight_decay"])
                plain.update_block(block, seed, (loss_plus - loss_minus) / (2 * plain.eps))
    for a, b in zip(fused_net.parameters(), plain_net.parameters()):
        assert torch.equal(a, b)
    for key, value in fused.state[next(fused_net.parameters())].items():
        other = plain.state[next(plain_net.parameters())][key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


def test_curvzo_draws_each_sampled_block_three_times(count_draws):
    net = tiny_net(seed=6)
    opt = CurvZO(net.parameters(), lr=1e-2, eps=1e-3, seed=2)
    loss = net_loss(net)
    for _ in range(5):
        count_draws.clear()
        opt.step(loss)
        selected = opt.trajectory[-1]["num_selected"]
        assert selected > 0 and len(count_draws) == 3 * selected
        assert all(count_draws.count(b) == 3 for b in set(count_draws))  # +ε, −2ε, restore with the update


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_hizoo_restores_inside_the_update_bit_for_bit(weight_decay, count_draws):
    fused_net, plain_net = tiny_net(seed=7), tiny_net(seed=7)
    fused = HiZOO(_groups(fused_net, weight_decay), lr=1e-3, eps=1e-3, seed=1)
    plain = HiZOO(_groups(plain_net, weight_decay), lr=1e-3, eps=1e-3, seed=1)
    plain.restore_chunk = lambda view, z, h, block: None  # the straightforward path restores everything first
    fused_loss, plain_loss = net_loss(fused_net), net_loss(plain_net)
    for step in range(4):
        count_draws.clear()
        fused.step(fused_loss)
        assert len(count_draws) == 3 * len(fused.blocks)  # +ε, −2ε, then restore, H and update together
        with torch.no_grad():
            seed, eps = plain.step_seed(step), plain.eps
            center = float(plain_loss())
            plain.preconditioned_shift(seed, +eps)
            loss_plus = float(plain_loss())
            plain.preconditioned_shift(seed, -2 * eps)
            loss_minus = float(plain_loss())
            plain.preconditioned_shift(seed, +eps)
            for block in plain.blocks:
                if block.group["weight_decay"]:
                    block.param.mul_(1.0 - block.group["lr"] * block.group["weight_decay"])
            curvature = abs(loss_plus + loss_minus - 2 * center) / (2 * eps * eps)
            plain.update_blocks(seed, (loss_plus - loss_minus) / (2 * eps), curvature, plain.smoothing(step))
    for a, b in zip(fused_net.parameters(), plain_net.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(fused_net.parameters(), plain_net.parameters()):
        assert torch.equal(fused.state[p]["hessian"], plain.state[q]["hessian"])
