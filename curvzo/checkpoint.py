"""Checkpoint files: one safetensors file per run, written atomically, never unpickled.

A zeroth-order run is a list of seeds and scalars, so its checkpoint is the recorded trajectory
plus the loop's own state (step, best-dev selection, counters), kept as JSON in the safetensors
header: kilobytes, whatever the model size. Weights are replayed from the starting model on
resume (:mod:`curvzo.resume`). Tensors are stored only for what cannot be replayed: first-order
training's weights and optimizer state, or any run's when ``checkpoint.weights=true``.

Each checkpoint names what it belongs to: the run's identity config (everything that changes the
numbers), a fingerprint of the data sample, of the starting weights, and of the weights at its
step. Resuming against anything else is refused with the differing keys, never silently restarted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from curvzo.errors import CurvzoError

FILE_NAME = "checkpoint.safetensors"
FORMAT_VERSION = 1
# Config keys that steer how a run is executed, not what it computes: they may differ on resume.
RUN_CONTROL_KEYS = ("resume", "checkpoint", "logger", "paths", "direction_workers", "hydra")


class CheckpointError(CurvzoError):
    """A checkpoint that cannot be written, read, or used for this run."""


@dataclass
class Checkpoint:
    """Everything a run needs to continue bit-exactly after ``step`` steps."""

    step: int
    identity: dict  # the resolved config without RUN_CONTROL_KEYS
    data_fingerprint: str
    start_fingerprint: str  # trainable weights before step 1
    weights_fingerprint: str  # trainable weights (and optimizer state tensors) after ``step``
    loop: dict  # TrainingLoop.state(): counters, selection, data-order positions, lrs
    trajectory: list[dict] = field(default_factory=list)  # the ZO optimizer's per-step records
    optimizer_skeleton: Any = None  # the optimizer state_dict with tensors replaced by references
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # "param.<i>", "optim.<key>"

    def has_weights(self) -> bool:
        return any(key.startswith("param.") for key in self.tensors)


# --- fingerprints ---------------------------------------------------------------------------------
def tensor_fingerprint(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 over dtype, shape and raw bytes of each tensor, in order (bitwise identity)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().contiguous().view(-1)
        digest.update(f"{flat.dtype}{tuple(tensor.shape)};".encode())
        if flat.numel():
            digest.update(flat.cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def json_fingerprint(value: Any) -> str:
    """sha256 of a JSON-serialisable value (sorted keys), e.g. the data sample."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()


def run_identity(config: DictConfig) -> dict:
    """The resolved config minus the keys that may change between a run and its resume."""
    identity = {str(k): OmegaConf.to_container(config[k], resolve=True) if OmegaConf.is_config(config[k]) else config[k]
                for k in config if k not in RUN_CONTROL_KEYS}
    _drop_path_values(OmegaConf.to_container(config, resolve=False), identity)
    return identity


def _drop_path_values(raw: Any, resolved: Any) -> None:
    """Remove leaves set from ``paths`` (e.g. ``model.cache_dir: ${paths.cache_dir}``): machine-local."""
    if isinstance(raw, dict) and isinstance(resolved, dict):
        for key, value in raw.items():
            if isinstance(value, str) and "${paths." in value:
                resolved.pop(key, None)
            elif key in resolved:
                _drop_path_values(value, resolved[key])


def identity_differences(saved: Mapping, current: Mapping, prefix: str = "") -> list[str]:
    """``key: saved -> current`` for every leaf that differs (dotted keys, sorted)."""
    differences = []
    for key in sorted(set(saved) | set(current), key=str):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differences += identity_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return differences


# --- optimizer state as JSON + tensors (no pickle) ------------------------------------------------
def pack_state(value: Any, tensors: dict[str, torch.Tensor], path: str = "optim") -> Any:
    """A JSON skeleton of ``value`` whose tensors move into ``tensors`` under dotted keys."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach()
        return {"__tensor__": path}
    if isinstance(value, Mapping):
        return {"__dict__": [[pack_state(k, tensors, f"{path}.k{i}"), pack_state(v, tensors, f"{path}.{i}")]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [pack_state(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [pack_state(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"cannot store optimizer state of type {type(value).__name__} at {path}")


def unpack_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(unpack_state(v, tensors) for v in skeleton["__tuple__"])
        return {unpack_state(k, tensors): unpack_state(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unpack_state(v, tensors) for v in skeleton]
    return skeleton


# --- files ------------------------------------------------------------------------------------------
def save_checkpoint(directory: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write ``directory/checkpoint.safetensors`` atomically: a temporary file, fsync, then rename.

    A failure (unwritable directory, full disk) leaves the previous checkpoint as it was and
    raises one CheckpointError line.
    """
    target = Path(directory) / FILE_NAME
    tmp = target.with_name(f"{FILE_NAME}.tmp-{os.getpid()}")
    header = {k: v for k, v in asdict(checkpoint).items() if k != "tensors"}
    metadata = {"curvzo_format": str(FORMAT_VERSION), "curvzo": json.dumps(header)}
    tensors = {k: v.detach().contiguous().cpu() for k, v in checkpoint.tensors.items()}
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {target}: {err.strerror or err}") from None
    return target


def read_header(path: str | os.PathLike) -> dict:
    """The JSON part of a checkpoint (no tensors loaded); CheckpointError if unreadable."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= 100_000_000:
                raise ValueError("bad header size")
            metadata = json.loads(handle.read(size)).get("__metadata__") or {}
        if metadata.get("curvzo_format") != str(FORMAT_VERSION):
            raise ValueError(f"format {metadata.get('curvzo_format')!r}, expected {FORMAT_VERSION}")
        return json.loads(metadata["curvzo"])
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupted ({err}); move it away to start over") from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors and JSON only)."""
    header = read_header(path)
    try:
        tensors = load_file(str(path))
        return Checkpoint(**header, tensors=tensors)
    except (OSError, SafetensorError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupted ({err}); move it away to start over") from None


def find_checkpoint(search_root: str | os.PathLike, identity: Mapping) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of an unfinished run under ``search_root`` whose identity equals ``identity``.

    Returns (path or None, the differences of the newest non-matching checkpoint, for the error).
    """
    candidates = sorted(Path(search_root).rglob(FILE_NAME), key=lambda p: p.stat().st_mtime, reverse=True)
    closest: list[str] = []
    for path in candidates:
        if _finished(path.parent):
            continue  # a completed run is not something to resume
        try:
            saved = read_header(path)["identity"]
        except (CheckpointError, KeyError):
            continue
        differences = identity_differences(saved, identity)
        if not differences:
            return path, []
        if not closest:
            closest = [f"{path}: {differences[0]}"]
    return None, closest


def _finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "status.json").read_text(encoding="utf-8")).get("status") == "finished"
    except (OSError, ValueError):
        return False
