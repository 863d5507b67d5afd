"""The exact probe never writes θ; it sees what the in-place probe sees; it costs one module's weights.

optimizers.md §1.3: L(θ ± εz) is evaluated with each module's perturbed weights materialised just
before that module runs and dropped after it, so only the update writes θ, in every dtype.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from curvzo.errors import ConfigError
from curvzo.optim import (
    LOREN,
    CurvZO,
    DiZO,
    HiZOO,
    MeZO,
    SparseMeZO,
    StepContext,
    ZOAdam,
    ZOSGDMomentum,
)
from curvzo.optim import directions as directions_module
from curvzo.peft_modes import lora, parameter_groups, prefix
from tests.helpers import DEVICES, tiny_model

METHODS = {
    "mezo": lambda p, **kw: MeZO(p, lr=1e-3, **kw),
    "curvzo": lambda p, **kw: CurvZO(p, lr=1e-3, **kw),
    "sparse_mezo": lambda p, **kw: SparseMeZO(p, lr=1e-3, keep=0.5, **kw),
    "hizoo": lambda p, **kw: HiZOO(p, lr=1e-3, hessian_smooth=1e-2, **kw),
    "loren": lambda p, **kw: LOREN(p, lr=1e-3, num_queries=3, **kw),
    "dizo": lambda p, **kw: DiZO(p, lr=1e-3, interval=5, inner_iterations=2, **kw),
    "zo_sgd_momentum": lambda p, **kw: ZOSGDMomentum(p, lr=1e-3, **kw),
    "zo_adam": lambda p, **kw: ZOAdam(p, lr=1e-3, **kw),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def lm_closure(model, seed: int = 0):
    """A forward-only loss over a fixed random batch of token ids, as the training loop calls it."""
    ids = torch.randint(3, 259, (4, 24), generator=torch.Generator().manual_seed(seed)).to(model.device)

    def closure():
        with torch.inference_mode():
            return model(input_ids=ids).logits.float().log_softmax(-1)[..., 7].mean().neg()
    return closure


def snapshot(params):
    return [p.detach().clone() for p in params]


@pytest.fixture
def no_updates(monkeypatch):
    """The test hook that switches the update off: every step probes, nothing writes θ afterwards."""
    for cls in {type(make([torch.nn.Parameter(torch.zeros(2))])) for make in METHODS.values()}:
        monkeypatch.setattr(cls, "update", lambda self, ctx, losses: None)
    monkeypatch.setattr(DiZO, "finish", lambda self, ctx, losses: None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("name", sorted(METHODS))
def test_fifty_steps_of_probes_leave_a_tiny_model_bit_identical(name, dtype, device, no_updates):
    loaded = tiny_model("tiny-opt", dtype=str(DTYPES[dtype]).removeprefix("torch."), device=device)
    model = loaded.model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    start = snapshot(params)
    opt = METHODS[name](parameter_groups(model, 0.0), seed=3)
    opt.bind_model(model)
    closure = lm_closure(model)
    losses = [opt.step(closure) for _ in range(50)]
    assert opt.forward_passes > 50 and any(x == x for x in losses)  # the probes really ran
    assert len({float(p.abs().sum()) for p in start}) > 1
    for p, p0 in zip(params, start):
        assert torch.equal(p, p0)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("name", sorted(METHODS))
def test_fifty_steps_of_probes_leave_a_plain_tensor_bit_identical(name, dtype, no_updates):
    g = torch.Generator().manual_seed(0)
    theta = torch.nn.Parameter((torch.randn(40, 30, generator=g) * 0.02).to(DTYPES[dtype]))
    target = torch.randn(40, 30, generator=g, dtype=torch.float64)
    start = theta.detach().clone()
    seen = []

    def closure():  # reads the tensor directly: no module owns it, so it is perturbed for the whole closure
        seen.append(float(theta.detach().double().sum()))
        return ((theta.detach().double() - target) ** 2).sum()

    opt = METHODS[name]([theta], seed=1)
    for _ in range(50):
        opt.step(closure)
    assert len(set(seen)) > 10  # the closure saw perturbed weights
    assert torch.equal(theta.detach(), start)


def _probe_losses(model, probe: str, steps: int = 3, make=METHODS["mezo"], lr: float = 1e-3) -> list[float]:
    opt = make(parameter_groups(model, 0.0), seed=7, probe=probe)
    opt.bind_model(model)
    closure = lm_closure(model, seed=1)
    for _ in range(steps):
        opt.step(closure)
    return [x for record in opt.trajectory for x in record["losses"]]


def _variant(name: str, mode: str, device: str = "cpu"):
    loaded = tiny_model(name, device=device)
    model = loaded.model.eval()
    if mode == "lora":
        model = lora(model, seed=0).eval()
    elif mode == "prefix":
        model = prefix(model, seed=0).eval()
    return model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["full", "lora", "prefix"])
@pytest.mark.parametrize("name", ["tiny-opt", "tiny-llama"])
def test_exact_and_inplace_probes_measure_the_same_losses_in_float32(name, mode, device):
    exact = _probe_losses(_variant(name, mode, device), "exact")
    inplace = _probe_losses(_variant(name, mode, device), "inplace")
    assert len(exact) == 6
    assert exact == pytest.approx(inplace, rel=1e-6)
    assert exact[0] == inplace[0]  # L(θ + εz): the same single rounding of θ + εz in both schemes


def test_tied_weights_are_perturbed_once_for_every_module_that_reads_them():
    model = _variant("tiny-opt", "full")
    head, embedding = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head is embedding  # OPT ties its LM head to the token embedding
    assert _probe_losses(model, "exact") == pytest.approx(_probe_losses(_variant("tiny-opt", "full"), "inplace"),
                                                          rel=1e-6)
    untied = _variant("tiny-opt", "full")
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())  # same values, two tensors
    assert _probe_losses(untied, "exact") != _probe_losses(_variant("tiny-opt", "full"), "exact")  # ... which differ


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_sees_the_same_losses_with_either_probe(name):
    exact = _probe_losses(_variant("tiny-opt", "full"), "exact", make=METHODS[name])
    inplace = _probe_losses(_variant("tiny-opt", "full"), "inplace", make=METHODS[name])
    assert len(exact) == len(inplace) > 0 and exact == pytest.approx(inplace, rel=1e-6)


class _AttentionNet(torch.nn.Module):
    """``nn.MultiheadAttention`` reads ``out_proj.weight`` directly, not by calling ``out_proj``."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(8, 2)

    def forward(self, x):
        return self.attention(x, x, x)[0].square().mean()


def test_a_parameter_read_outside_its_module_is_a_one_line_error_and_inplace_still_works():
    torch.manual_seed(0)
    net = _AttentionNet()
    x = torch.randn(5, 1, 8)
    start = snapshot(net.parameters())
    opt = MeZO(net.parameters(), lr=1e-2)
    opt.bind_model(net)
    with pytest.raises(ConfigError) as err:
        opt.step(lambda: net(x))
    message = str(err.value)
    assert "\n" not in message and "outside its own module" in message and "optimizer.probe=inplace" in message
    for p, p0 in zip(net.parameters(), start):
        assert torch.equal(p, p0)  # nothing was written on the way out
    inplace = MeZO(net.parameters(), lr=1e-2, probe="inplace")
    inplace.bind_model(net)
    assert math.isfinite(inplace.step(lambda: net(x))) and inplace.forward_passes == 2


def test_the_escape_names_the_parameter():
    torch.manual_seed(0)
    net = _AttentionNet()
    named = [{"params": list(net.named_parameters())}]
    opt = MeZO(named, lr=1e-2)
    opt.bind_model(net)
    with pytest.raises(ConfigError, match=r"cannot perturb attention\.out_proj\.weight"):
        opt.step(lambda: net(torch.randn(5, 1, 8)))


def _peak_bytes(fn) -> int:
    """Peak of the CPU allocator's live bytes during ``fn`` (torch profiler memory events), from zero."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_probe_costs_one_layer_of_weights_beyond_inference(dtype):
    model = tiny_model("tiny-llama", dtype=dtype).model.eval()
    closure = lm_closure(model)
    inference = _peak_bytes(closure)  # activations of one forward pass; the weights are already there
    largest_block = max(p.numel() for p in model.parameters())
    # a unit is a module that owns tensors or, in a stack of layers, one layer (its modules together)
    layer = model.model.layers[0]
    largest_unit = max(sum(p.numel() * p.element_size() for p in layer.parameters()),
                       *(sum(p.numel() * p.element_size() for p in m.parameters(recurse=False)) for m in model.modules()))
    # half-precision weights are perturbed through a float32 copy of a span of θ and the float32 z
    # (at most 2 x 16 MiB whatever the model's size); float32 weights draw z straight into the scratch
    buffers = 0 if dtype == "float32" else 2 * 4 * min(largest_block, directions_module.SPAN_NUMEL)
    opt = MeZO(model.parameters(), lr=1e-3, probe="exact")
    opt.bind_model(model)
    ctx = StepContext(0, opt.step_seed(0), closure, list(opt.blocks))
    directions_module._LOCAL.free.clear()  # cold buffer pools: their memory counts
    probe = _peak_bytes(lambda: opt.exact_loss(ctx, +1.0))
    assert opt.prober.unit_bytes() == largest_unit
    assert inference < probe <= inference + largest_unit + buffers
    whole = MeZO(model.parameters(), lr=1e-3, probe="exact")  # no model bound: every tensor perturbed at once
    directions_module._LOCAL.free.clear()
    unbound = _peak_bytes(lambda: whole.exact_loss(ctx, +1.0))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert unbound >= inference + weights  # what binding the model saves
