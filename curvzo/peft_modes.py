"""Which parameters are trained: the ``peft`` config group (only ``full`` in this release)."""

from __future__ import annotations

import torch


def full_finetuning(model: torch.nn.Module) -> torch.nn.Module:
    """Train every parameter, token embeddings included (optimizers.md §1.7)."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


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
