"""The single door through which configs become objects (allow-listed ``_target_``s).

Routing every instantiation through here keeps Hydra 1.4's ``_target_`` allow-list a one-line
change and turns instantiation failures into one-line ``ConfigError``s.
"""

from __future__ import annotations

import re
from typing import Any

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from curvzo.errors import ConfigError, CurvzoError

# Our own classes, torch optimizers, and the config classes of transformers/peft (architectures and
# adapters); nothing else a config could name (os.system, builtins.eval, ...) is ever imported.
_ALLOWED = re.compile(r"^(curvzo\.[\w.]+|torch\.optim\.[\w.]+|(transformers|peft)\.\w+Config)$")


def _targets(node: Any, path: str = "") -> list[tuple[str, str]]:
    """All (dotted key, target) pairs in a plain container."""
    found = []
    if isinstance(node, dict):
        for key, child in node.items():
            if key == "_target_" and child is not None:
                found.append((f"{path}_target_", str(child)))
            else:
                found.extend(_targets(child, f"{path}{key}."))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found.extend(_targets(child, f"{path}{i}."))
    return found


def check_targets(node: DictConfig, where: str) -> None:
    """Refuse ``_target_``s outside the allow-list before anything is imported."""
    for key, target in _targets(OmegaConf.to_container(node, resolve=False)):
        if not _ALLOWED.match(target):
            raise ConfigError(f"{where}.{key}: {target!r} is not an allowed target (allowed: curvzo.*, torch.optim.*, "
                              f"transformers.*Config, peft.*Config)")


def instantiate(node: DictConfig, where: str, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` behind the allow-list; errors become one-line ConfigErrors."""
    check_targets(node, where)
    try:
        return hydra.utils.instantiate(node, *args, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, CurvzoError):
            raise cause from None
        message = str(cause) if cause is not None else str(err)
        raise ConfigError(f"{where}: {message.splitlines()[0] if message else type(err).__name__}") from None
