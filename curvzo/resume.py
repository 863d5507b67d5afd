"""Resuming a run: which checkpoint, whether it belongs to this run, and restoring from it.

A zeroth-order run is restored by replaying its trajectory on the starting weights
(:func:`curvzo.optim.replay.replay_from_losses`): each recorded step runs again with its recorded
probe losses instead of forward passes, so weights and optimizer state come back bit for bit, and
the result is checked against the fingerprint stored at the checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from curvzo.checkpoint import (
    FILE_NAME,
    Checkpoint,
    CheckpointError,
    find_checkpoint,
    identity_differences,
    pack_state,
    read_header,
    tensor_fingerprint,
    unpack_state,
)
from curvzo.optim.base import ZerothOrderOptimizer
from curvzo.optim.replay import replay_from_losses
from curvzo.optim.streams import check_contract

log = logging.getLogger(__name__)


def resume_mode(value: Any) -> str:
    """``auto`` | ``true`` | ``false`` | a run directory (checked, one line if invalid)."""
    if value is True or value is False:
        return str(value).lower()
    if isinstance(value, str) and value.strip():
        return value
    raise CheckpointError(f"resume must be auto, true, false or a run directory, got {value!r}")


def locate_checkpoint(mode: str, output_dir: Path, search_root: Path, identity: dict) -> Path | None:
    """The checkpoint this run continues from, or None to start fresh (see ``resume`` in config.yaml)."""
    own = output_dir / FILE_NAME
    if mode == "false":
        if own.exists():
            raise CheckpointError(f"{output_dir} already holds a checkpoint: resume=true continues it, or choose "
                                  f"another hydra.run.dir")
        return None
    if mode == "auto":
        return own if own.exists() else None
    if mode == "true":
        if own.exists():
            return own
        found, closest = find_checkpoint(search_root, identity)
        if found is None:
            hint = f"; the newest one differs: {closest[0]}" if closest else ""
            raise CheckpointError(f"resume=true: no checkpoint of this config under {search_root}{hint}")
        return found
    path = Path(mode)
    path = path / FILE_NAME if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"resume={mode!r}: no checkpoint there ({str(path)!r} does not exist)")
    return path


# keys a resume may raise: a finished run continues for more steps from its last checkpoint
RAISABLE_KEYS = ("budget.max_steps",)


def check_identity(path: Path, identity: dict) -> dict:
    """The checkpoint's header if it was written by this config (up to a raised ``budget.max_steps``),
    else one CheckpointError line."""
    header = read_header(path)
    differences = [d for d in identity_differences(header.get("identity", {}), identity)
                   if not d.startswith(tuple(f"{key}:" for key in RAISABLE_KEYS))]
    max_steps = identity.get("budget", {}).get("max_steps")
    if isinstance(max_steps, int) and header.get("step", 0) > max_steps:
        raise CheckpointError(f"checkpoint {path} is at step {header['step']}, past budget.max_steps={max_steps}: "
                              f"a run continues for more steps, never fewer")
    if differences:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise CheckpointError(f"checkpoint {path} belongs to another run: {differences[0]}{more}")
    return header


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def weights_fingerprint(params: list[torch.Tensor], optimizer) -> str:
    """Bitwise fingerprint of the trainable weights and every tensor of the optimizer's state."""
    state_tensors: dict[str, torch.Tensor] = {}
    if optimizer is not None:
        pack_state(optimizer.state_dict(), state_tensors)
    return tensor_fingerprint([*params, *state_tensors.values()])


def build_checkpoint(step: int, loop_state: dict, *, identity: dict, data_fingerprint: str, start_fingerprint: str,
                     params: list[torch.Tensor], optimizer, store_weights: bool) -> Checkpoint:
    """The checkpoint of a live run after ``step`` (tensors only with ``store_weights``)."""
    # the global RNGs drive dropout in first-order training (ZO probes run in eval mode): a few KB
    tensors: dict[str, torch.Tensor] = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    skeleton = None
    if store_weights:
        tensors.update({f"param.{i}": p.detach() for i, p in enumerate(params)})
        skeleton = pack_state(optimizer.state_dict(), tensors)
    return Checkpoint(
        step=step, identity=identity, data_fingerprint=data_fingerprint, start_fingerprint=start_fingerprint,
        weights_fingerprint=weights_fingerprint(params, optimizer), loop=loop_state,
        trajectory=list(optimizer.trajectory) if isinstance(optimizer, ZerothOrderOptimizer) else [],
        optimizer_skeleton=skeleton, tensors=tensors,
    )


@torch.no_grad()
def restore(checkpoint: Checkpoint, params: list[torch.Tensor], optimizer, scheduler) -> str:
    """Bring weights, optimizer and scheduler to the checkpoint's step; returns how ("loaded"/"replayed")."""
    zeroth_order = isinstance(optimizer, ZerothOrderOptimizer)
    if zeroth_order:
        try:
            check_contract(checkpoint.trajectory, "the checkpoint's trajectory")
        except ValueError as err:
            raise CheckpointError(str(err)) from None
    if checkpoint.has_weights():
        for i, p in enumerate(params):
            saved = checkpoint.tensors.get(f"param.{i}")
            if saved is None or saved.shape != p.shape or saved.dtype != p.dtype:
                raise CheckpointError(f"checkpoint weights do not fit trainable tensor {i} {tuple(p.shape)}")
            p.copy_(saved)
        optimizer.load_state_dict(unpack_state(checkpoint.optimizer_skeleton, checkpoint.tensors))
        if zeroth_order:
            optimizer.trajectory = list(checkpoint.trajectory)
        how = "loaded"
    elif zeroth_order:
        replay_from_losses(optimizer, checkpoint.trajectory)
        if _as_json(optimizer.trajectory) != _as_json(checkpoint.trajectory):
            raise CheckpointError("replaying the checkpoint's trajectory gave other steps than it recorded "
                                  "(code or model changed since it was written?)")
        how = "replayed"
    else:
        raise CheckpointError("checkpoint has no weights, and a first-order run cannot be replayed")
    if "rng.cpu" in checkpoint.tensors:
        torch.set_rng_state(checkpoint.tensors["rng.cpu"])
    cuda_states = [checkpoint.tensors[k] for k in sorted(checkpoint.tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    for group, lr in zip(optimizer.param_groups, checkpoint.loop["lrs"]):
        group["lr"] = lr
    if scheduler is not None and checkpoint.loop.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint.loop["scheduler"])
    if weights_fingerprint(params, optimizer) != checkpoint.weights_fingerprint:
        raise CheckpointError(f"the weights {how} from the checkpoint differ from those it recorded at step "
                              f"{checkpoint.step} (code or model changed since it was written?)")
    return how


def _as_json(records: list[dict]) -> str:
    return json.dumps(records, sort_keys=True)  # NaN-safe equality: NaN == NaN as text
