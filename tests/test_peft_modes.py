"""PEFT modes (optimizers.md §1.7): LoRA r=8/alpha=16 on q_proj,v_proj and 5-token prefix tuning
initialised from real activations (princeton-nlp/MeZO large_models/{lora.py,prefix.py}), via peft."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from curvzo.errors import ConfigError
from curvzo.optim import CurvZO, MeZO
from curvzo.peft_modes import (
    full_finetuning,
    lora,
    parameter_groups,
    prefix,
    prefix_length,
)
from tests.helpers import tiny_model

MODELS = ("tiny-llama", "tiny-opt")
# (layer prefix of the attention modules, hidden, kv heads, head_dim) of conf/model/tiny-*.yaml
ATTENTION = {
    "tiny-llama": ("base_model.model.model.layers", 32, 2, 8),  # GQA: 4 query heads, 2 KV heads
    "tiny-opt": ("base_model.model.model.decoder.layers", 32, 2, 16),
}
LAYERS = 2


def base(name: str, **overrides) -> torch.nn.Module:
    return tiny_model(name, device="cpu", **overrides).model


def call(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int = 1) -> torch.Tensor:
    """The scoring call of curvzo/scoring.py: left padding, explicit positions, last K logits."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=keep, use_cache=False)
    return out.logits[:, -keep:]


def left_padded(*sequences: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)  # <pad> is id 0
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def random_prefix_ids(vocab: int, n: int = 5, seed: int = 0) -> torch.Tensor:
    """MeZO init_by_real_act's draw, from a generator seeded with the prefix seed."""
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


# LoRA -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected_numel", [("tiny-llama", 1792), ("tiny-opt", 2048)])
def test_lora_trains_exactly_the_q_v_adapters(name, expected_numel):
    layers, hidden, kv_heads, head_dim = ATTENTION[name]
    model = lora(base(name))
    names = set(trainable(model))
    expected = {f"{layers}.{i}.self_attn.{m}_proj.lora_{ab}.default.weight"
                for i in range(LAYERS) for m in ("q", "v") for ab in ("A", "B")}
    assert names == expected and len(names) == 8
    r = 8  # q: hidden -> hidden, v: hidden -> kv_heads * head_dim; each adapter r*(in + out)
    numel = LAYERS * (r * (hidden + hidden) + r * (hidden + kv_heads * head_dim))
    assert numel == expected_numel
    assert sum(p.numel() for p in trainable(model).values()) == expected_numel
    q = model.get_submodule(f"{layers}.0.self_attn.q_proj")
    assert q.scaling["default"] == 2.0  # alpha / r = 16 / 8
    assert isinstance(q.lora_dropout["default"], torch.nn.Identity)  # dropout 0


@pytest.mark.parametrize("name", MODELS)
def test_lora_starts_as_the_base_model(name):
    # frozen, as peft leaves it: on CPU, torch 2.13's F.linear on the non-contiguous logits_to_keep
    # slice rounds differently (~1e-7) when lm_head.weight requires grad, even under no_grad
    model = base(name).requires_grad_(False)
    ids, mask = left_padded([1, 50, 60, 70], [1, 40, 41, 42, 43, 44, 45])
    with torch.no_grad():
        before = call(model, ids, mask, keep=3)
        adapted = lora(model)
        after = call(adapted, ids, mask, keep=3)
    assert torch.equal(before, after)  # B = 0


def test_lora_parameter_group_names_and_bfloat16_adapters():
    model = lora(base("tiny-llama", dtype="bfloat16"))
    groups = parameter_groups(model, weight_decay=0.1)
    assert len(groups[0]["params"]) == 8 and groups[1]["params"] == []  # adapters carry no bias/LayerNorm
    assert all(".lora_" in n for n, _ in groups[0]["params"])
    assert {p.dtype for _, p in groups[0]["params"]} == {torch.float32}  # peft autocast_adapter_dtype


@pytest.mark.parametrize("kwargs", [
    {"rank": 0}, {"rank": 2.5}, {"alpha": -1}, {"dropout": 1.0}, {"dropout": -0.1},
    {"target_modules": ("q_proj", "nope")}, {"target_modules": ()},
])
def test_lora_bad_values_raise_one_line(kwargs):
    with pytest.raises(ConfigError) as error:
        lora(base("tiny-opt"), **kwargs)
    assert "\n" not in str(error.value)
    if "target_modules" in kwargs and kwargs["target_modules"]:
        assert "'nope'" in str(error.value) and "q_proj'" not in str(error.value)


# prefix ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected_numel", [("tiny-llama", 320), ("tiny-opt", 640)])
def test_prefix_is_the_models_own_cache_on_random_tokens(name, expected_numel):
    _, _, kv_heads, head_dim = ATTENTION[name]
    model = base(name)
    ids = random_prefix_ids(model.config.vocab_size, seed=0)
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    reference = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    peft_model = prefix(model, seed=0)
    prompt = peft_model.get_prompt(batch_size=1)
    assert len(prompt.layers) == LAYERS
    for layer, (keys, values) in zip(prompt.layers, reference):
        assert layer.keys.shape == (1, kv_heads, 5, head_dim)
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    params = trainable(peft_model)
    assert list(params) == ["prompt_encoder.default.embedding.weight"]
    weight = params["prompt_encoder.default.embedding.weight"]
    assert weight.dtype == torch.float32
    assert weight.numel() == 5 * LAYERS * 2 * kv_heads * head_dim == expected_numel
    assert prefix_length(peft_model) == 5


@pytest.mark.parametrize("name", MODELS)
def test_prefix_model_equals_base_model_after_the_random_tokens(name):
    """The init makes prefix + x the base model on (random tokens, x): checks peft's position offset."""
    model = base(name)
    x = [1, 50, 60, 70, 80]
    joint = torch.cat([random_prefix_ids(model.config.vocab_size, seed=3), torch.tensor([x])], dim=1)
    with torch.no_grad():
        expected = model(input_ids=joint, use_cache=False).logits[:, -4:]
        ids, mask = left_padded(x, [1, 40, 41, 42, 43, 44, 45, 46])
        got = call(prefix(model, seed=3), ids, mask, keep=4)[:1]
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_prefix_seed_decides_the_init_and_the_global_rng_is_untouched():
    rng = torch.get_rng_state()
    first = trainable(prefix(base("tiny-llama"), seed=0))["prompt_encoder.default.embedding.weight"]
    same = trainable(prefix(base("tiny-llama"), seed=0))["prompt_encoder.default.embedding.weight"]
    other = trainable(prefix(base("tiny-llama"), seed=1))["prompt_encoder.default.embedding.weight"]
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(first, same)
    assert not torch.equal(first, other)


def test_prefix_embedding_stays_float32_on_a_bfloat16_model():
    model = prefix(base("tiny-opt", dtype="bfloat16"))
    (weight,) = trainable(model).values()
    assert weight.dtype == torch.float32
    ids, mask = left_padded([1, 50, 60], [1, 40, 41, 42, 43])
    with torch.no_grad():
        logits = call(model, ids, mask)
    assert logits.dtype == torch.bfloat16 and bool(logits.isfinite().all())


def test_prefix_without_real_activations_and_bad_length():
    model = prefix(base("tiny-opt"), num_virtual_tokens=3, init_from_real_activations=False)
    assert prefix_length(model) == 3
    assert trainable(model)["prompt_encoder.default.embedding.weight"].shape == (3, LAYERS * 2 * 32)
    with pytest.raises(ConfigError):
        prefix(base("tiny-opt"), num_virtual_tokens=0)


def test_prefix_length_is_zero_for_other_modes():
    assert prefix_length(base("tiny-opt")) == 0
    assert prefix_length(full_finetuning(base("tiny-opt"))) == 0
    assert prefix_length(lora(base("tiny-opt"))) == 0


# every mode -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [full_finetuning, lora, prefix])
@pytest.mark.parametrize("name", MODELS)
def test_padding_never_leaks(name, mode):
    model = mode(base(name))
    short, long = [1, 50, 60, 70], [1, 40, 41, 42, 43, 44, 45, 46, 47]
    with torch.no_grad():
        alone = call(model, *left_padded(short))
        batched = call(model, *left_padded(short, long))
    assert batched.shape == (2, 1, 264)
    assert torch.allclose(alone[0], batched[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", [lora, prefix])
def test_peft_keeps_the_models_eval_mode(mode):
    model = mode(base("tiny-opt"), **({"dropout": 0.1} if mode is lora else {}))  # loaders return eval
    assert [n for n, m in model.named_modules() if m.training] == []


def test_full_finetuning_trains_everything():
    model = full_finetuning(base("tiny-opt"))
    assert all(p.requires_grad for p in model.parameters())
    (group,) = parameter_groups(model, 0.0)
    assert len(group["params"]) == len(list(model.parameters()))  # tied lm_head counted once


# one ZO step touches only the adapters -----------------------------------------------------------------

def loss_closure(model):
    ids, mask = left_padded([1, 50, 60, 70], [1, 40, 41, 42, 43, 44, 45])
    labels = torch.tensor([72, 48])

    def closure() -> torch.Tensor:
        with torch.inference_mode():
            return F.cross_entropy(call(model, ids, mask)[:, -1].float(), labels)
    return closure


def snapshot(model) -> dict[str, torch.Tensor]:
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"buffer:{n}": b.clone() for n, b in model.named_buffers()})
    return state


@pytest.mark.parametrize("optimizer", ["mezo", "curvzo"])
@pytest.mark.parametrize("mode", [lora, prefix])
@pytest.mark.parametrize("name", MODELS)
def test_one_zo_step_changes_only_adapters(name, mode, optimizer):
    model = mode(base(name))
    adapters = set(trainable(model))
    before = snapshot(model)
    groups = parameter_groups(model, 0.0)
    if optimizer == "mezo":
        opt = MeZO(groups, lr=1e-2, eps=1e-2, seed=0)
    else:
        opt = CurvZO(groups, lr=1e-2, eps=1e-2, seed=0)
    assert [b.name for b in opt.blocks] == [n for n, _ in model.named_parameters() if n in adapters]
    assert len(opt.blocks) == (8 if mode is lora else 1)
    loss = opt.step(loss_closure(model))
    assert loss == loss  # finite, not skipped
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= adapters  # every frozen weight and buffer bit-identical
    if optimizer == "mezo":
        assert changed == adapters
    else:
        assert len(changed) == opt.trajectory[-1]["num_selected"] >= 1
