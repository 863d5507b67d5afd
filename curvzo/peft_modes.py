"""Which parameters are trained: the ``peft`` config group (full, LoRA, prefix; optimizers.md §1.7).

Each mode takes the loaded causal LM and returns the model to train, with ``requires_grad`` set on
exactly the trainable tensors (ZO optimizers perturb and update only those). LoRA and prefix tuning go
through ``peft`` (0.21), matching princeton-nlp/MeZO large_models/{lora.py,prefix.py}.
"""

from __future__ import annotations

import contextlib
import math

import torch

from curvzo.errors import ConfigError


def full_finetuning(model: torch.nn.Module) -> torch.nn.Module:
    """Train every parameter, token embeddings included (optimizers.md §1.7)."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _check_positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"peft.{name} must be a positive integer, got {value!r}")
    return value


@contextlib.contextmanager
def _seeded_init(seed: int):
    """peft initialises adapters (LoRA A, the prefix embedding) from the global RNG: fork it and seed
    it, so the init is a function of ``seed`` and the caller's RNG stream is left as it was."""
    with torch.random.fork_rng(devices=[]):  # peft builds adapter tensors on the CPU, then moves them
        torch.manual_seed(int(seed))
        yield


def lora(
    model: torch.nn.Module,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules=("q_proj", "v_proj"),
    seed: int = 0,
) -> torch.nn.Module:
    """LoRA adapters (MeZO large_models/lora.py: r=8, alpha=16 on q_proj and v_proj, no dropout).

    Only the ``lora_A`` / ``lora_B`` tensors train; the base weights are frozen. B starts at zero
    (peft's default, as in MeZO), so the adapted model starts as the base model. ``seed`` seeds the
    Kaiming init of A without touching the global RNG.
    """
    from peft import LoraConfig, get_peft_model

    _check_positive_int("rank", rank)
    _check_positive_int("alpha", alpha)
    if (not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not math.isfinite(dropout)
            or not 0.0 <= dropout < 1.0):
        raise ConfigError(f"peft.dropout must be in [0, 1), got {dropout!r}")
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    targets = [str(t) for t in target_modules]
    if not targets:
        raise ConfigError("peft.target_modules must name at least one module")
    # peft matches a key when a module's full name equals it or ends with ".<key>"; check first,
    # since peft's own error for a missing target is many lines long
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError(
            f"peft.target_modules {missing} match no module of {type(model).__name__} "
            f"(e.g. q_proj, k_proj, v_proj, out_proj/o_proj)"
        )
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=rank,
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules=targets,
        bias="none",
    )
    was_training = model.training
    with _seeded_init(seed):
        # autocast_adapter_dtype (peft default): float16/bfloat16 base -> float32 adapters
        peft_model = get_peft_model(model, config)
    # peft leaves its wrapper and new modules (LoRA dropout) in train mode: keep the caller's mode
    return peft_model.train(was_training)


def prefix(
    model: torch.nn.Module,
    num_virtual_tokens: int = 5,
    init_from_real_activations: bool = True,
    seed: int = 0,
) -> torch.nn.Module:
    """Prefix tuning (MeZO large_models/prefix.py): ``num_virtual_tokens`` key/value pairs per layer,
    no reparametrisation, initialised from the base model's own keys/values on random tokens.

    Only the prefix embedding trains (float32 whatever the model dtype). With
    ``init_from_real_activations`` (MeZO ``init_by_real_act``), ``num_virtual_tokens`` token ids are
    drawn uniformly from the vocabulary by a generator seeded with ``seed`` (never the global RNG),
    the base model runs on them, and each layer's cached keys/values become that layer's prefix.
    """
    from peft import PrefixTuningConfig, get_peft_model

    _check_positive_int("num_virtual_tokens", num_virtual_tokens)
    config = PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, prefix_projection=False
    )
    was_training = model.training
    with _seeded_init(seed):
        peft_model = get_peft_model(model, config)
    peft_model.train(was_training)  # peft leaves its wrapper in train mode: keep the caller's mode
    embedding = peft_model.prompt_encoder[peft_model.active_adapter].embedding
    # the optimizers keep their math in float32; peft's get_prompt casts to the model dtype on use
    embedding.float()
    if init_from_real_activations:
        _init_prefix_from_real_activations(peft_model, seed)
    return peft_model


@torch.no_grad()
def _init_prefix_from_real_activations(peft_model, seed: int) -> None:
    """Write the base model's per-layer K/V on random tokens into the prefix embedding."""
    config = peft_model.active_peft_config
    base = peft_model.get_base_model()
    n, layers = config.num_virtual_tokens, config.num_layers
    # peft maps heads/token_dim to the KV heads for GQA (utils/other.py _prepare_prompt_learning_config)
    heads, head_dim = config.num_attention_heads, config.token_dim // config.num_attention_heads
    embedding = peft_model.prompt_encoder[peft_model.active_adapter].embedding
    device = embedding.weight.device
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    # MeZO prefix.py: torch.randint(0, model.config.vocab_size, (1, num_prefix))
    vocab = base.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (1, n), generator=generator).to(device)
    was_training = base.training
    base.eval()  # MeZO's model is in eval mode: no dropout in the activations
    try:
        cache = base(input_ids=ids, use_cache=True).past_key_values
    finally:
        base.train(was_training)
    if len(cache.layers) != layers:
        raise ConfigError(f"prefix init: the model cached {len(cache.layers)} layers, peft expects {layers}")
    # peft get_prompt (peft_model.py): weight [n, L*2*H*D] -> view [n, L*2, H, D] -> permute to
    # [L*2, H, n, D] -> split into (key, value) per layer; the cache holds [1, H, n, D] per layer
    kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])  # [L, 2, H, n, D]
    expected = (layers, 2, heads, n, head_dim)
    if tuple(kv.shape) != expected:
        raise ConfigError(f"prefix init: cached K/V of shape {tuple(kv.shape)}, peft expects {expected}")
    weight = kv.permute(3, 0, 1, 2, 4).reshape(n, layers * 2 * heads * head_dim)
    embedding.weight.copy_(weight.to(embedding.weight.dtype))


def prefix_length(model: torch.nn.Module) -> int:
    """Virtual tokens a peft prefix-tuning model puts before every sequence; 0 for any other model.

    peft's forward always replaces ``past_key_values`` with the prefix, so decoding with a KV cache
    calls the base model: cache = ``get_prompt(batch)``, mask = P ones + mask, positions + P.
    """
    peft_config = getattr(model, "peft_config", None)
    active = getattr(model, "active_adapter", None)
    if not isinstance(peft_config, dict) or active not in peft_config:
        return 0
    config = peft_config[active]
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    return int(config.num_virtual_tokens) if peft_type == "PREFIX_TUNING" else 0


NO_DECAY_KEYS = ("bias", "layer_norm", "layernorm")  # MeZO trainer: no weight decay on these


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable (name, tensor) pairs in ``named_parameters()`` order (tied weights once); with
    weight decay, a second group exempts biases and LayerNorms (optimizers.md §1.8). The names
    reach optimizers as ``param_names`` (DiZO picks its projected tensors by name)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not weight_decay:
        return [{"params": named}]
    decay = [(n, p) for n, p in named if not any(k in n.lower() for k in NO_DECAY_KEYS)]
    exempt = [(n, p) for n, p in named if any(k in n.lower() for k in NO_DECAY_KEYS)]
    return [{"params": decay}, {"params": exempt, "weight_decay": 0.0}]
