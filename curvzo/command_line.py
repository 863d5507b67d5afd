"""Checks of a ``curvzo-run`` command line before Hydra runs it, each problem as one line.

Hydra reports an unknown group option, a typo'd key or an unusable output directory with a page of
text or a traceback; these checks compose the same config first (Hydra's compose API, the same
overrides) and name the problem, with a "did you mean" where one is close.
"""

from __future__ import annotations

import difflib
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
)

from curvzo.config_schema import schema_problem


def command_line_problem(argv: list[str], config_dir: str) -> str | None:
    """The first problem of this command line as one line, or None (Hydra then runs it)."""
    args, _ = get_args_parser().parse_known_args(argv)  # Hydra's own CLI parser (internal, stable since 1.1)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun:
        return None
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except Exception:  # malformed override: Hydra reports the syntax error itself
        return None
    search_dirs = [Path(d) for d in (args.config_dir, config_dir) if d]
    user_dirs = user_search_dirs(overrides)
    if user_dirs is None:  # a search path we cannot list (pkg://...): Hydra checks the command line itself
        return None
    return (unknown_group_option(overrides, search_dirs + user_dirs)
            or composition_problem(args, overrides, config_dir))


def user_search_dirs(overrides: list[Override]) -> list[Path] | None:
    """The directories a ``hydra.searchpath=[file://...]`` override adds, or None for one that is not a directory."""
    found: list[Path] = []
    for override in overrides:
        if override.key_or_group != "hydra.searchpath":
            continue
        entries = override.value()
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, str) or not entry.startswith("file://"):
                return None
            found.append(Path(entry.removeprefix("file://")))
    return found


def unknown_group_option(overrides: list[Override], search_dirs: list[Path]) -> str | None:
    """The first ``group=option`` naming no config file; Hydra's own report is a page."""
    for override in overrides:
        group_dirs = [d / override.key_or_group for d in search_dirs if (d / override.key_or_group).is_dir()]
        # hydra/* groups also hold plugin configs (hydra/launcher=submitit_slurm) that live in Hydra's
        # ConfigStore, not in our directories: Hydra checks those itself
        if override.key_or_group.startswith("hydra/"):
            continue
        if not group_dirs or override.is_delete() or override.value() is None:
            continue
        available = sorted({p.stem for d in group_dirs for p in d.glob("*.yaml")})
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]
        for value in values:
            if value not in available:
                return f"{override.key_or_group}={value}: no such option (choose from {', '.join(available)})"
    return None


def first_job(texts: list[str], overrides: list[Override]) -> list[str]:
    """The overrides of a sweep's first job (each sweep override at its first value)."""
    single = []
    for text, override in zip(texts, overrides):
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()), None)
            if value is None:
                raise ValueError("empty sweep")
            single.append(f"{override.get_key_element()}={value}")
        else:
            single.append(text)
    return single


def _compose(config_dir: str, name: str, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            return compose(name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def composition_problem(args, overrides: list[Override], config_dir: str) -> str | None:
    """Compose the (first) job as Hydra will; name an unknown key or an output directory that cannot be made."""
    if any(o.key_or_group.startswith("hydra.searchpath") for o in overrides):
        return None  # the user's own search path: Hydra composes it
    try:
        job = first_job(args.overrides, overrides)
    except (ValueError, TypeError):
        return None
    extra = [f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]"] if args.config_dir else []
    name = args.config_name or "config"
    try:
        cfg = _compose(config_dir, name, [*extra, *job])
    except HydraException as err:  # an unknown key, or a value of the wrong type for the schema (curvzo/config_schema.py)
        return unknown_key(err, config_dir, name, extra, job) or schema_problem(err)
    except Exception:  # anything else: Hydra's own report
        return None
    key = "hydra.sweep.dir" if args.multirun or cfg.hydra.mode is not None and cfg.hydra.mode.name == "MULTIRUN" \
        else "hydra.run.dir"
    try:
        directory = OmegaConf.select(cfg, key)
    except OmegaConfBaseException:
        return None
    return unusable_directory(key, directory) if directory else None


def unknown_key(err: HydraException, config_dir: str, name: str, extra: list[str], job: list[str]) -> str | None:
    """``<key>: no such key (did you mean ...?)`` for an override of a key the config does not have."""
    cause = err.__cause__
    full_key = getattr(cause, "full_key", None)
    if not isinstance(cause, (ConfigKeyError, ConfigAttributeError)) or not full_key or " not in " not in str(cause):
        return None
    parent, _, leaf = full_key.rpartition(".")
    kept = [o for o in job if o.lstrip("+~").split("=", 1)[0].split("@", 1)[0] != full_key]
    try:
        base = _compose(config_dir, name, [*extra, *kept])
        node = OmegaConf.select(base, parent) if parent else base
        keys = [str(k) for k in node] if isinstance(node, DictConfig) else []
    except Exception:
        keys = []
    close = difflib.get_close_matches(leaf, keys, n=1)
    where = f"{parent}." if parent else ""
    hint = f"did you mean {where}{close[0]}?" if close else f"{parent or 'the config'} has {', '.join(sorted(keys)[:12])}"
    return f"{full_key}: no such key ({hint})"


def unusable_directory(key: str, directory: str) -> str | None:
    """Why ``directory`` cannot be created or written, or None."""
    path = Path(directory).expanduser()
    if path.exists() and not path.is_dir():
        return f"{key}={directory}: a file is in the way, not a directory"
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{key}={directory}: cannot create it, {ancestor} is a file"
    try:
        with tempfile.TemporaryDirectory(dir=ancestor):
            pass
    except OSError as err:
        return f"{key}={directory}: cannot create it under {ancestor} ({err.strerror or err})"
    return None
