"""The single door through which configs become objects (allow-listed ``_target_``s).

Routing every instantiation through here keeps Hydra 1.4's ``_target_`` allow-list a one-line
change and turns instantiation failures into one-line ``ConfigError``s.
"""

from __future__ import annotations

import difflib
import inspect
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


def accepted_keys(target: Any) -> set[str] | None:
    """The keyword arguments ``target`` takes, following ``**kwargs`` up a class's ``__init__`` chain
    (an optimizer forwards its options to the base class); None when they are open-ended."""
    functions = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    names: set[str] = set()
    for function in functions:
        try:
            parameters = inspect.signature(function).parameters
        except (ValueError, TypeError):
            return None
        names |= {n for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return names
    return None


def check_keys(node: DictConfig, where: str) -> None:
    """Refuse a key the target does not take (``+optimizer.lrr=5``), with a "did you mean"."""
    target = node.get("_target_")
    if target is None:
        return
    try:
        keys = accepted_keys(hydra.utils.get_object(str(target)))
    except (ImportError, AttributeError, ValueError):
        return  # the call reports it
    if keys is None:
        return
    for key in map(str, node):
        if key.startswith("_") or key in keys:
            continue
        close = difflib.get_close_matches(key, sorted(keys - {"self", "params"}), n=1)
        hint = f" (did you mean {where}.{close[0]}?)" if close else ""
        raise ConfigError(f"{where}.{key}: not an option of {str(target).rsplit('.', 1)[-1]}{hint}")


def instantiate(node: DictConfig, where: str, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` behind the allow-list; unknown keys and errors become one-line ConfigErrors."""
    check_targets(node, where)
    check_keys(node, where)
    try:
        return hydra.utils.instantiate(node, *args, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, CurvzoError):
            raise cause from None
        message = str(cause) if cause is not None else str(err)
        raise ConfigError(f"{where}: {message.splitlines()[0] if message else type(err).__name__}") from None
