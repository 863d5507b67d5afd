"""Drawing the sub-chunks of z (and the rounding bits) on worker threads: bit-identical to one thread, every method."""

from __future__ import annotations

import threading

import pytest
import torch

from curvzo.optim import CurvZO, MeZO
from curvzo.optim.directions import DirectionSampler
from curvzo.optim.dizo import DiZO
from curvzo.optim.hizoo import HiZOO
from curvzo.optim.loren import LOREN
from curvzo.optim.sparse_mezo import SparseMeZO
from curvzo.optim.zo_adam import ZOAdam
from curvzo.optim.zo_sgd_momentum import ZOSGDMomentum
from tests.helpers import net_loss


def _net(seed: int) -> torch.nn.Module:
    """Eight blocks, several of them longer than the 64-number test sub-chunk."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 24), torch.nn.Tanh(), torch.nn.Linear(24, 24), torch.nn.Tanh(),
                               torch.nn.Linear(24, 24), torch.nn.Tanh(), torch.nn.Linear(24, 1))


def _groups(net):
    decayed = [p for n, p in net.named_parameters() if n.endswith("weight")]
    plain = [p for n, p in net.named_parameters() if not n.endswith("weight")]
    return [{"params": decayed, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}]


METHODS = {
    "mezo": lambda g: MeZO(g, lr=1e-2, eps=1e-3, seed=3),
    "sparse_mezo": lambda g: SparseMeZO(g, lr=1e-2, eps=1e-3, seed=3, keep=0.5),
    "curvzo": lambda g: CurvZO(g, lr=1e-2, eps=1e-3, seed=3),
    "hizoo": lambda g: HiZOO(g, lr=1e-3, eps=1e-3, seed=3),
    "zo_sgd_momentum": lambda g: ZOSGDMomentum(g, lr=1e-2, eps=1e-3, momentum=0.9, seed=3),
    "zo_adam": lambda g: ZOAdam(g, lr=1e-3, eps=1e-3, seed=3),
    "dizo": lambda g: DiZO(g, lr=1e-2, eps=1e-3, seed=3, interval=2, inner_iterations=2),
    "loren": lambda g: LOREN(g, lr=1e-3, eps=1e-3, num_queries=3, seed=3),
}


def _run(make, workers: int, steps: int = 5, dtype=torch.float32):
    net = _net(seed=1).to(dtype)
    opt = make(_groups(net))
    opt.directions = DirectionSampler(sub_chunk=64, span=256)  # several seeded sub-chunks per span, one per thread
    opt.direction_workers = workers
    loss = net_loss(net)
    losses = [opt.step(loss) for _ in range(steps)]
    return net, opt, losses


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_worker_threads_give_bit_identical_weights_state_and_trajectory(name, dtype):
    serial_net, serial, serial_losses = _run(METHODS[name], workers=1, dtype=dtype)
    threaded_net, threaded, threaded_losses = _run(METHODS[name], workers=3, dtype=dtype)
    assert serial_losses == threaded_losses
    for a, b in zip(serial_net.parameters(), threaded_net.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(serial_net.parameters(), threaded_net.parameters()):
        for key, value in serial.state[p].items():
            other = threaded.state[q][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    assert serial.trajectory == threaded.trajectory
    start = _net(seed=1).to(dtype)
    assert any(not torch.equal(p, q) for p, q in zip(serial_net.parameters(), start.parameters()))  # it moved


@pytest.mark.parametrize("numel,sub_chunk", [(0, 8), (5, 8), (64, 8), (100, 8), (1000, 7), (3 << 16, None)])
def test_piece_spans_are_the_pieces_the_threads_are_handed(numel, sub_chunk):
    sampler = DirectionSampler(sub_chunk=sub_chunk, workers=2)
    tensor = torch.zeros(numel)
    handed = sampler.for_each_piece(tensor, 0, 0, lambda span, z: (span.start, span.stop))
    assert [(s.start, s.stop) for s in sampler.piece_spans(tensor)] == handed
    assert sum(stop - start for start, stop in handed) == numel


def test_several_threads_draw_directions(monkeypatch):
    threads = set()
    original = DirectionSampler._draw

    def draw(self, piece, seed):
        threads.add(threading.current_thread().name)
        return original(self, piece, seed)

    monkeypatch.setattr(DirectionSampler, "_draw", draw)
    _run(METHODS["mezo"], workers=3, steps=3)
    assert len(threads) > 1 and all(name.startswith("curvzo-rng") or name == threading.current_thread().name
                                    for name in threads)
    threads.clear()
    _run(METHODS["mezo"], workers=1, steps=1)
    assert threads == {threading.current_thread().name}  # one worker: no pool, the caller's thread


def test_direction_workers_from_the_config_must_be_a_positive_integer():
    from curvzo.errors import ConfigError
    from curvzo.job import prepare_optimizer

    net = _net(seed=0)
    opt = METHODS["mezo"](_groups(net))
    prepare_optimizer(opt, net, 2)
    assert opt.direction_workers == 2
    prepare_optimizer(opt, net, 0)  # 0: the default, one per intra-op thread (at most 4)
    assert 1 <= opt.direction_workers <= 4
    for bad in (-1, 1.5, "two", True):
        with pytest.raises(ConfigError, match="direction_workers"):
            prepare_optimizer(opt, net, bad)
