"""What every loader shares: the `LoadedModel` result, dtype/device parsing and tokenizer set-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import transformers

from curvzo.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# Warnings shown once per process (keys of the messages already logged).
_warned: set[str] = set()


@dataclass
class LoadedModel:
    """A causal LM ready for zeroth-order training and evaluation."""

    model: transformers.PreTrainedModel  # in eval mode, on its device(s)
    tokenizer: transformers.PreTrainedTokenizerBase  # padding_side="left", pad token set
    device: torch.device  # where inputs go (the input embeddings' device under a device_map)
    max_length: int  # context budget used by the encoder (MeZO: 2048)
    source: str  # one line for the run summary


def one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace so an error message fits on one line; cut it at ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``float32|bfloat16|float16`` (or ``fp32|bf16|fp16``) to a torch dtype; else ConfigError."""
    if isinstance(name, torch.dtype) and name in _DTYPES.values():
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(
            f"model.dtype={name!r} is not supported; choose one of float32, bfloat16, float16 "
            "(or fp32, bf16, fp16)"
        )
    return _DTYPES[key]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; anything else is checked."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"model.device={device!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"model.device={device!r} but CUDA is not available; use auto or cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(
                f"model.device={device!r} but only {torch.cuda.device_count()} GPU(s) are visible"
            )
    return resolved


def warn_once(key: str, message: str) -> None:
    """``logging.warning`` the message the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def warn_if_float16(dtype: torch.dtype) -> None:
    if dtype == torch.float16:
        warn_once(
            "float16",
            "model.dtype=float16: perturb/restore in fp16 does not return the weights exactly "
            "(MeZO#42, ZO-LLM#13); prefer bfloat16 or float32 when exactness matters",
        )


def check_max_length(max_length: Any) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise ConfigError(f"model.max_length={max_length!r} must be a positive integer")
    return max_length


def model_max_positions(config: transformers.PretrainedConfig) -> int | None:
    """The position-table size of a config, where it has one."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def input_device(model: transformers.PreTrainedModel) -> torch.device:
    """The device that input ids must be on: that of the input embeddings."""
    return model.get_input_embeddings().weight.device


def _prepends(tokenizer: transformers.PreTrainedTokenizerBase, token_id: int | None) -> bool:
    if token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == token_id


def _set_bos(tokenizer: transformers.PreTrainedTokenizerBase, bos_token_id: int) -> None:
    """Make ``bos_token_id`` the BOS id, also in the ids the tokenizer prepends (MeZO's OPT fix).

    Setting ``tokenizer.bos_token_id`` only renames the BOS token; a fast tokenizer whose
    post-processor prepends the old BOS keeps doing so. ``add_bos_token = True`` rebuilds the
    post-processor from the new BOS (``TokenizersBackend.update_post_processor``).
    """
    old = tokenizer.bos_token_id
    prepended = _prepends(tokenizer, old)
    tokenizer.bos_token_id = bos_token_id
    if prepended and bos_token_id != old:
        if hasattr(tokenizer, "update_post_processor"):
            tokenizer.add_bos_token = True  # the setter rebuilds the post-processor
        if not _prepends(tokenizer, bos_token_id):
            raise ModelLoadError(
                f"could not make the tokenizer ({type(tokenizer).__name__}) prepend bos_token_id="
                f"{bos_token_id}; it still prepends id {old}"
            )


def prepare(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    *,
    device: torch.device,
    max_length: int,
    source: str,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LoadedModel:
    """Set up the tokenizer (left padding, pad token, MeZO id overrides) and put the model in eval."""
    vocab = len(tokenizer)
    for key, value in (("bos_token_id", bos_token_id), ("pad_token_id", pad_token_id)):
        valid = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab
        if value is not None and not valid:
            raise ConfigError(f"model.{key}={value!r} must be a token id in [0, {vocab})")
    tokenizer.padding_side = "left"
    if bos_token_id is not None:
        _set_bos(tokenizer, bos_token_id)
    if pad_token_id is not None:
        tokenizer.pad_token_id = pad_token_id
    elif tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"the tokenizer of {source} has neither a pad nor an eos token; set model.pad_token_id"
            )
        tokenizer.pad_token = tokenizer.eos_token
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    positions = model_max_positions(model.config)
    if positions is not None and max_length > positions:
        warn_once(
            f"max_length:{source}",
            f"model.max_length={max_length} exceeds the {positions} positions of {source}",
        )
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, max_length=max_length, source=source)
