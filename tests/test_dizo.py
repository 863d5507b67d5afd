"""DiZO: the projection by hand, which tensors are projected, accounting, anchors, the MeZO reduction."""

from __future__ import annotations

import pytest
import torch

from curvzo.errors import ConfigError
from curvzo.optim import DiZO, MeZO, replay_from_losses
from curvzo.optim.directions import mix64
from curvzo.optim.dizo import projected_names


def attention_layer(seed: int = 0, dtype=torch.float64) -> list[tuple[str, torch.nn.Parameter]]:
    """Named tensors shaped like one attention layer (q, k, v matrices and a bias)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"layers.0.self_attn.q_proj.weight": (4, 4), "layers.0.self_attn.k_proj.weight": (4, 4),
              "layers.0.self_attn.v_proj.weight": (4, 4), "layers.0.self_attn.k_proj.bias": (4,)}
    return [(name, torch.nn.Parameter(torch.randn(*shape, generator=g, dtype=dtype))) for name, shape in shapes.items()]


def loss_of(named, seed: int = 1):
    """A smooth nonlinear loss of all tensors (fixed random targets)."""
    g = torch.Generator().manual_seed(seed)
    targets = [torch.randn(p.shape, generator=g, dtype=p.dtype) for _, p in named]
    return lambda: sum(((p.detach() - t) ** 2).sum() + 0.1 * (p.detach() ** 4).sum() for (_, p), t in zip(named, targets))


def test_projected_names_follow_the_general_rule():
    opt = ["model.decoder.layers.0.self_attn.k_proj.weight", "model.decoder.layers.0.self_attn.k_proj.bias",
           "model.decoder.layers.0.self_attn.q_proj.weight", "model.decoder.layers.0.self_attn.v_proj.weight"]
    bert = ["encoder.layer.0.attention.self.key.weight", "encoder.layer.0.attention.self.value.weight",
            "encoder.layer.0.attention.self.query.weight"]
    t5 = ["encoder.block.0.layer.0.SelfAttention.k.weight", "encoder.block.0.layer.0.SelfAttention.o.weight"]
    lora = ["model.layers.0.self_attn.q_proj.lora_A.default.weight", "model.layers.0.self_attn.q_proj.base_layer.weight",
            "model.layers.0.self_attn.v_proj.lora_B.default.weight"]
    shape = lambda names: [torch.Size([2] if n.endswith("bias") else [2, 2]) for n in names]  # noqa: E731
    assert projected_names(opt, shape(opt), "auto") == [opt[0], opt[3]]  # K and V weights, as the code
    assert projected_names(opt, shape(opt), ["q_proj", "v_proj"]) == [opt[2], opt[3]]
    assert projected_names(bert, shape(bert), "auto") == bert[:2]
    assert projected_names(t5, shape(t5), "auto") == t5[:1]
    assert projected_names(lora, shape(lora), "auto") == [lora[0], lora[2]]  # every LoRA matrix
    assert projected_names(["h.0.attn.c_attn.weight"], [torch.Size([2, 6])], "auto") == []


def test_a_rule_that_matches_nothing_is_a_one_line_error():
    with pytest.raises(ConfigError, match="optimizer.projected=auto matches no trainable matrix") as err:
        DiZO([("h.0.attn.c_attn.weight", torch.nn.Parameter(torch.zeros(2, 6)))], lr=1e-3)
    assert "\n" not in str(err.value)


def test_one_projection_matches_the_hand_computation():
    named = attention_layer()
    closure = loss_of(named)
    anchor = {n: p.detach().clone() for n, p in named}
    extra = iter([loss_of(named, seed=2), loss_of(named, seed=3)])
    opt = DiZO(named, lr=0.05, interval=1, inner_iterations=2, projection_eps=0.1, projection_step_size=2.0,
               clip_range=0.2, seed=3)
    opt.extra_closures = extra
    # the MeZO half of the step, replayed on a copy
    copy = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named]
    MeZO([p for _, p in copy], lr=0.05, seed=3).step(loss_of(copy))
    moved = {n: p.detach().clone() for n, p in copy}
    opt.step(closure)

    kv = ["layers.0.self_attn.k_proj.weight", "layers.0.self_attn.v_proj.weight"]
    norms = torch.tensor([float(torch.linalg.vector_norm((moved[n] - anchor[n]).float())) for n in kv], dtype=torch.float64)
    gamma = norms.clone()
    gen = torch.Generator().manual_seed(mix64(3, 6, 0))
    params = dict(named)
    for j, seed in enumerate((2, 3)):
        u = torch.randn(2, generator=gen, dtype=torch.float64).clamp(-0.2 * norms / 0.1, 0.2 * norms / 0.1)
        targets = loss_of(named, seed=seed)

        def loss_at(ratios):
            saved = {n: params[n].detach().clone() for n in kv}
            for n, r in zip(kv, ratios.tolist()):
                params[n].data = anchor[n] + r * (moved[n] - anchor[n])
            value = float(targets())
            for n in kv:
                params[n].data = saved[n]
            return value

        slope = (loss_at((gamma + 0.1 * u) / norms) - loss_at((gamma - 0.1 * u) / norms)) / 0.2
        gamma = torch.clamp(gamma - 2.0 * norms * slope * u, 0.8 * norms, 1.2 * norms)
    ratios = (gamma / norms).tolist()
    assert opt.trajectory[-1]["projection"]["ratios"] == pytest.approx(ratios, rel=1e-6)
    for n, r in zip(kv, ratios):
        torch.testing.assert_close(params[n].detach(), anchor[n] + r * (moved[n] - anchor[n]), rtol=1e-6, atol=1e-6)
    for n in ("layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.bias"):
        torch.testing.assert_close(params[n].detach(), moved[n], rtol=0, atol=1e-12)  # not projected


def test_ratios_stay_in_the_clip_range_and_passes_are_counted():
    named = attention_layer(dtype=torch.float32)
    opt = DiZO(named, lr=0.05, interval=3, inner_iterations=2, projection_step_size=50.0, clip_range=0.1, seed=0)
    for _ in range(7):
        opt.step(loss_of(named))
    assert opt.forward_passes == 7 * 2 + 2 * (2 * 2)  # two projections (after steps 3 and 6), 2J probes each
    assert opt.projections == 2
    ratios = [r for rec in opt.trajectory if "projection" in rec for r in rec["projection"]["ratios"]]
    assert len(ratios) == 4 and all(0.9 - 1e-9 <= r <= 1.1 + 1e-9 for r in ratios)
    assert any(abs(r - 1) > 0.05 for r in ratios)  # a large step size reaches the clip


def test_projection_probes_draw_fresh_batches():
    named = attention_layer()
    drawn = []

    def fresh():
        while True:
            drawn.append(len(drawn))
            yield loss_of(named, seed=10 + len(drawn))

    opt = DiZO(named, lr=0.05, interval=2, inner_iterations=3, seed=0)
    opt.set_extra_batches(fresh())
    for _ in range(4):
        opt.step(loss_of(named))
    assert len(drawn) == 2 * 3  # J fresh minibatches per projection


def test_no_projection_within_the_run_equals_mezo_bit_for_bit():
    runs = []
    for make in (lambda p: MeZO([q for _, q in p], lr=0.05, seed=2), lambda p: DiZO(p, lr=0.05, interval=100, seed=2)):
        named = attention_layer(dtype=torch.float32)
        opt = make(named)
        for _ in range(10):
            opt.step(loss_of(named))
        runs.append(torch.cat([p.detach().flatten() for _, p in named]))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("anchor_device", ["param", "cpu"])
def test_anchor_holds_only_the_projected_tensors(anchor_device):
    named = attention_layer(dtype=torch.bfloat16)
    opt = DiZO(named, lr=1e-3, anchor_device=anchor_device)
    anchored = [n for n, p in named if "anchor" in opt.state[p]]
    assert anchored == ["layers.0.self_attn.k_proj.weight", "layers.0.self_attn.v_proj.weight"]
    assert all(opt.state[p]["anchor"].dtype == torch.bfloat16 and opt.state[p]["anchor"].device.type == "cpu"
               for n, p in named if n in anchored)
    info = opt.describe()
    assert info["state_bytes"] == 2 * 16 * 2 and info["anchor_numel"] == 32
    assert info["anchor_fraction_of_trainable"] == pytest.approx(32 / 52)


def test_freeze_embeddings_leaves_the_first_tensor_alone():
    named = [("embed_tokens.weight", torch.nn.Parameter(torch.randn(5, 4, dtype=torch.float64)))] + attention_layer()
    start = named[0][1].detach().clone()
    opt = DiZO(named, lr=0.05, interval=2, inner_iterations=1, freeze_embeddings=True, seed=0)
    for _ in range(4):
        opt.step(loss_of(named))
    assert torch.equal(named[0][1].detach(), start)
    assert not torch.equal(named[2][1].detach(), attention_layer()[1][1].detach())


@pytest.mark.parametrize("kwargs, needle", [
    ({"interval": 0}, "optimizer.interval"),
    ({"inner_iterations": 1.5}, "optimizer.inner_iterations"),
    ({"clip_range": 1.5}, "optimizer.clip_range"),
    ({"projected": "kv"}, "optimizer.projected"),
    ({"anchor_device": "disk"}, "optimizer.anchor_device"),
])
def test_invalid_hyperparameters_are_one_line_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        DiZO(attention_layer(), lr=1e-3, **kwargs)


def test_same_seed_same_weights_and_different_seed_differs():
    runs = []
    for seed in (5, 5, 6):
        named = attention_layer(dtype=torch.float32)
        opt = DiZO(named, lr=0.005, interval=2, inner_iterations=2, projection_step_size=0.02, seed=seed)
        for _ in range(6):
            opt.step(loss_of(named))
        runs.append((torch.cat([p.detach().flatten() for _, p in named]), opt.trajectory[-1]["projection"]["ratios"]))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0], runs[2][0]) and runs[0][1] != runs[2][1]


def test_replay_from_losses_retraces_steps_and_projections_bit_for_bit():
    named = attention_layer(dtype=torch.float32)
    start = [p.detach().clone() for _, p in named]
    opt = DiZO(named, lr=0.005, interval=2, inner_iterations=2, projection_step_size=0.02, seed=1)
    opt.extra_closures = iter([loss_of(named, seed=20 + i) for i in range(10)])
    for _ in range(5):
        opt.step(loss_of(named))
    copy = [(n, torch.nn.Parameter(s.clone())) for (n, _), s in zip(named, start)]
    replay_from_losses(DiZO(copy, lr=0.005, interval=2, inner_iterations=2, projection_step_size=0.02, seed=1),
                       opt.trajectory)
    assert all(torch.equal(p.detach(), q.detach()) for (_, p), (_, q) in zip(named, copy))


def test_next_step_cost_is_announced_truthfully():
    named = attention_layer(dtype=torch.float32)
    opt = DiZO(named, lr=0.005, interval=3, inner_iterations=2, seed=0)
    announced, spent = [], []
    for _ in range(7):
        announced.append(opt.forward_passes_next_step())
        before = opt.forward_passes
        opt.step(loss_of(named))
        spent.append(opt.forward_passes - before)
    assert announced == spent == [2, 2, 6, 2, 2, 6, 2]
