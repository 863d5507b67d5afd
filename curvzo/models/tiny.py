"""Tiny random-init causal LMs with a byte-level tokenizer built in code: tests and demos, no downloads."""

from __future__ import annotations

import contextlib
import copy

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from curvzo.errors import ConfigError
from curvzo.models.common import (
    LoadedModel,
    check_max_length,
    model_max_positions,
    parse_dtype,
    prepare,
    resolve_device,
    warn_if_float16,
)

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2; byte b has id 3 + b


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what the ByteLevel pre-tokenizer emits)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def build_byte_tokenizer(max_length: int = 512) -> transformers.PreTrainedTokenizerFast:
    """A deterministic 259-token byte-level tokenizer: ``<pad>``, ``<s>``, ``</s>``, then 256 bytes.

    Every text round-trips through encode/decode; ``<s>`` is prepended as BOS.
    """
    byte_chars = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({byte_chars[b]: len(SPECIAL_TOKENS) + b for b in range(256)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    bos_id = vocab[BOS]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, bos_id)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )


def build_tiny_causal_lm(
    config: transformers.PretrainedConfig,
    dtype: str = "float32",
    device: str = "auto",
    seed: int = 0,
    max_length: int = 512,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LoadedModel:
    """A random-init ``AutoModelForCausalLM.from_config(config)`` with the byte tokenizer.

    ``config`` is a transformers config object (Hydra instantiates the nested ``_target_`` node);
    its vocabulary must cover the tokenizer's 259 ids, and its pad/bos/eos ids are set to the
    tokenizer's. The same ``seed`` gives the same weights; the global torch RNG is left untouched.
    ``bos_token_id`` / ``pad_token_id`` override the tokenizer's ids, as for real models.
    """
    if not isinstance(config, transformers.PretrainedConfig):
        raise ConfigError(
            f"model.config must be a transformers config (a `_target_: transformers.OPTConfig` node), "
            f"got {type(config).__name__}"
        )
    torch_dtype = parse_dtype(dtype)
    max_length = check_max_length(max_length)
    target = resolve_device(device)
    tokenizer = build_byte_tokenizer(max_length)
    if config.vocab_size < len(tokenizer):
        raise ConfigError(
            f"model.config.vocab_size={config.vocab_size} does not cover the byte tokenizer's "
            f"{len(tokenizer)} tokens"
        )
    positions = model_max_positions(config)
    if positions is not None and positions < max_length:
        raise ConfigError(
            f"model.max_length={max_length} exceeds the tiny config's {positions} positions"
        )
    config = copy.deepcopy(config)  # leave the caller's config as it was
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    # On a GPU the weights are drawn there: an OPT-2.7B-sized model drawn on the CPU and copied over costs
    # seconds per process (the GPU bench starts one per method). The same seed gives the same weights on
    # the same kind of device; CPU and CUDA generators differ.
    on_accelerator = target.type != "cpu"
    with torch.random.fork_rng(devices=[target] if target.type == "cuda" else []), \
            (target if on_accelerator else contextlib.nullcontext()):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
    warn_if_float16(torch_dtype)
    model.to(device=target, dtype=torch_dtype)
    n_params = sum(p.numel() for p in model.parameters())
    source = (
        f"tiny random {config.model_type} (hidden {config.hidden_size}, "
        f"{config.num_hidden_layers} layers, {n_params:,} params, seed {seed})"
    )
    return prepare(
        model,
        tokenizer,
        device=target,
        max_length=max_length,
        source=source,
        bos_token_id=bos_token_id,
        pad_token_id=pad_token_id,
    )
