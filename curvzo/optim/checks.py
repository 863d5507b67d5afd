"""Hyperparameter checks shared by every optimizer: each bad value is one ConfigError line."""

from __future__ import annotations

import math
from typing import Any

import torch

from curvzo.errors import ConfigError

STATE_DTYPES = ("fp32", "param")  # optimizer state in float32 (our default) or in the weights' dtype (official codes)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive(name: str, value: Any) -> float:
    """Return ``value`` if it is a finite number > 0, else raise a one-line ConfigError."""
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"optimizer.{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: Any) -> float:
    """Return ``value`` if it is a finite number >= 0, else raise a one-line ConfigError."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"optimizer.{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_fraction(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` if it lies in (0, 1] (or [0, 1] with ``allow_zero``), else a one-line ConfigError."""
    if not _is_number(value) or not ((value >= 0 if allow_zero else value > 0) and value <= 1):
        raise ConfigError(f"optimizer.{name} must be in {'[0, 1]' if allow_zero else '(0, 1]'}, got {value!r}")
    return float(value)


def check_unit_interval(name: str, value: Any) -> float:
    """Return ``value`` if it lies in [0, 1) (a momentum or decay rate), else a one-line ConfigError."""
    if not _is_number(value) or not 0 <= value < 1:
        raise ConfigError(f"optimizer.{name} must be in [0, 1), got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else a one-line ConfigError listing them."""
    if value not in choices:
        raise ConfigError(f"optimizer.{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_int_at_least(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an integer >= ``minimum``, else a one-line ConfigError."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"optimizer.{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"optimizer.{name} must be true or false, got {value!r}")
    return value


def state_buffer(param: torch.Tensor, state_dtype: str, fill: float = 0.0) -> torch.Tensor:
    """A state tensor shaped like ``param``: float32 for ``fp32``, the parameter's dtype for ``param``."""
    dtype = torch.float32 if state_dtype == "fp32" else param.dtype
    return torch.full_like(param, fill, dtype=dtype, memory_format=torch.contiguous_format)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in any torch optimizer's per-parameter ``state``."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))
