"""Three draws of z per step in both probes; the in-place probe's restore fused with the update, bit for bit."""

from __future__ import annotations

import pytest
import torch

from curvzo.optim import CurvZO, MeZO, StepContext
from curvzo.optim.directions import DirectionSampler
from curvzo.optim.hizoo import HiZOO
from curvzo.optim.sparse_mezo import SparseMeZO
from curvzo.optim.zo_adam import ZOAdam
from curvzo.optim.zo_sgd_momentum import ZOSGDMomentum
from tests.helpers import net_loss, tiny_net

METHODS = {
    "mezo": lambda groups, **kw: MeZO(groups, lr=1e-2, eps=1e-3, seed=3, **kw),
    "sparse_mezo": lambda groups, **kw: SparseMeZO(groups, lr=1e-2, eps=1e-3, seed=3, keep=0.5, **kw),
    "zo_sgd_momentum": lambda groups, **kw: ZOSGDMomentum(groups, lr=1e-2, eps=1e-3, momentum=0.9, seed=5, **kw),
    "zo_adam": lambda groups, **kw: ZOAdam(groups, lr=1e-3, eps=1e-3, seed=5, **kw),
    "hizoo": lambda groups, **kw: HiZOO(groups, lr=1e-3, eps=1e-3, hessian_smooth=1e-2, seed=1, **kw),
    "curvzo": lambda groups, **kw: CurvZO(groups, lr=1e-2, eps=1e-3, seed=2, **kw),
}


def _groups(net, weight_decay: float):
    """Matrices with weight decay, biases without (as parameter_groups builds them)."""
    decayed = [p for n, p in net.named_parameters() if n.endswith("weight")]
    plain = [p for n, p in net.named_parameters() if not n.endswith("weight")]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


@torch.no_grad()
def _straightforward_step(opt, closure) -> None:
    """+ε, −2ε, +ε over every perturbed block, then the update: the path the fused in-place step replaces."""
    step = opt.steps_taken
    opt.steps_taken += 1
    ctx = StepContext(step, opt.step_seed(step), closure, list(opt.blocks))
    if not opt.plan(ctx):
        return
    losses = opt.probe(ctx)
    opt.shift(ctx, +1.0)
    ctx.restore = False
    opt.update(ctx, losses)


@pytest.fixture
def count_draws(monkeypatch):
    """Counts how often any block's z is (re)generated."""
    calls = []
    original = DirectionSampler.run_jobs

    def run_jobs(self, jobs):
        calls.extend(job.block for job in jobs)
        return original(self, jobs)

    monkeypatch.setattr(DirectionSampler, "run_jobs", run_jobs)
    return calls


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_inplace_restore_inside_the_update_is_bit_identical_to_restoring_first(name, weight_decay, count_draws):
    fused_net, plain_net = tiny_net(seed=1), tiny_net(seed=1)
    fused = METHODS[name](_groups(fused_net, weight_decay), probe="inplace")
    plain = METHODS[name](_groups(plain_net, weight_decay), probe="inplace")
    fused_loss, plain_loss = net_loss(fused_net), net_loss(plain_net)
    for _ in range(4):
        count_draws.clear()
        fused.step(fused_loss)
        perturbed = fused.trajectory[-1].get("num_selected", len(fused.blocks))
        assert len(count_draws) == 3 * perturbed  # +ε, −2ε, then restore and update on one draw
        _straightforward_step(plain, plain_loss)
    for a, b in zip(fused_net.parameters(), plain_net.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(fused_net.parameters(), plain_net.parameters()):
        for key, value in fused.state[p].items():
            other = plain.state[q][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    assert not torch.equal(next(fused_net.parameters()), next(tiny_net(seed=1).parameters()))  # it moved


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_exact_probe_draws_each_perturbed_block_three_times(name, count_draws):
    net = tiny_net(seed=6)
    opt = METHODS[name](list(net.parameters()))
    loss = net_loss(net)
    for _ in range(5):
        count_draws.clear()
        opt.step(loss)
        perturbed = opt.trajectory[-1].get("num_selected", len(opt.blocks))  # CurvZO's draw may be empty: 0
        assert len(count_draws) == 3 * perturbed  # L(θ+εz), L(θ−εz), the update
        assert all(count_draws.count(b) == 3 for b in set(count_draws))
    assert opt.forward_passes > 0


def test_a_skipped_inplace_step_restores_without_updating(count_draws):
    net = tiny_net(seed=2)
    start = [p.detach().clone() for p in net.parameters()]
    opt = MeZO(net.parameters(), lr=1e-2, eps=1e-3, seed=0, probe="inplace")
    assert torch.isnan(torch.tensor(opt.step(lambda: torch.tensor(float("nan")))))
    assert len(count_draws) == 3 * len(opt.blocks)  # +ε, −2ε, +ε: no update pass
    for p, p0 in zip(net.parameters(), start):
        torch.testing.assert_close(p, p0, rtol=0, atol=1e-6)  # restored up to perturb/restore rounding
