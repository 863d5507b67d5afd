"""Test helpers: tiny models and tasks built from the repository's own configs, data stand-ins."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("CURVZO_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))
# the smallest real job: what the job_cfg fixture (conftest.py) and command-line tests start from
BASE = ["model=tiny-opt", "task=sst2", "optimizer=mezo", "budget=smoke", "logger=jsonl", f"paths.data_dir={DATA_DIR}"]


# Where device-generic tests run: the CPU always; a CUDA device when there is one (``pytest -m cuda`` picks those
# alone: make bench-gpu runs them).
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device")])]


def tiny_model(name: str = "tiny-opt", **overrides):
    """Instantiate conf/model/<name>.yaml (a tiny random model) with optional overrides."""
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "model" / f"{name}.yaml")
    cfg.merge_with(overrides)
    return hydra.utils.instantiate(cfg)


def quadratic(dim: int = 50, seed: int = 0, dtype=torch.float64):
    """L(θ) = ½ θᵀAθ − bᵀθ with A symmetric positive definite; its gradient is Aθ − b."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=g, dtype=dtype)
    a = m @ m.T / dim + torch.eye(dim, dtype=dtype)
    b = torch.randn(dim, generator=g, dtype=dtype)
    theta = torch.nn.Parameter(torch.randn(dim, generator=g, dtype=dtype))
    loss = lambda: 0.5 * theta @ a @ theta - b @ theta  # noqa: E731
    return theta, a, b, loss


def train_quadratic(make_optimizer, steps: int, **problem):
    """Run ``steps`` steps of ``make_optimizer([theta])`` on ``quadratic(**problem)``; returns (weights, optimizer)."""
    theta, _, _, loss = quadratic(**problem)
    opt = make_optimizer([theta])
    for _ in range(steps):
        opt.step(loss)
    return theta.detach().clone(), opt


def tiny_net(seed: int = 0, dtype=torch.float32) -> torch.nn.Module:
    """A seeded 8-16-1 tanh MLP: matrices and biases, a few hundred parameters."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(dtype)


def net_loss(net):
    """A closure: the net's float32 MSE on a fixed random regression batch."""
    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, 1, generator=g)
    dtype = next(net.parameters()).dtype
    return lambda: torch.nn.functional.mse_loss(net(x.to(dtype)), y.to(dtype)).float()


# task data ---------------------------------------------------------------------------------------
CONF_TASK = REPO_ROOT / "conf" / "task"


def load_task(name: str, **overrides):
    """Instantiate conf/task/<name>.yaml, with constructor overrides (e.g. a stand-in ``hub_id``)."""
    return hydra.utils.instantiate(OmegaConf.load(CONF_TASK / f"{name}.yaml"), **overrides)


def data_error(name: str, data_dir: Path) -> str:
    """The one-line DataError that loading task ``name`` from ``data_dir`` raises."""
    from curvzo.errors import DataError

    with pytest.raises(DataError) as info:
        load_task(name).load_pools(str(data_dir))
    message = str(info.value)
    assert "\n" not in message
    return message


def write_hub_repo(root: Path, config: str | None, splits: dict[str, list[dict]]) -> Path:
    """A local stand-in for a hub parquet dataset: one parquet file per split and a README whose
    ``configs:`` header maps the config to its files (how aps/super_glue and friends declare theirs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    config_name = config or "default"
    lines = ["---", "configs:", f"- config_name: {config_name}", "  data_files:"]
    for split, rows in splits.items():
        (root / config_name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), root / config_name / f"{split}-00000-of-00001.parquet")
        lines += [f"  - split: {split}", f"    path: {config_name}/{split}-*"]
    (root / "README.md").write_text("\n".join(lines + ["---", ""]))
    return root


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def split_command(command: str) -> tuple[str, str, list[str]]:
    """(config dir, config name, overrides) of a `curvzo-run ...` command line, as Hydra's compose API takes them."""
    args = shlex.split(command)
    assert args.pop(0) == "curvzo-run", command
    conf = str(REPO_ROOT / "conf")
    config_dir, config_name, overrides = conf, "config", []
    while args:
        arg = args.pop(0)
        if arg == "-cd":  # --config-dir: the primary config comes from there, the groups from conf/
            config_dir = str(REPO_ROOT / args.pop(0))
            overrides.append(f"hydra.searchpath=[file://{conf}]")
        elif arg == "-cn":
            config_name = args.pop(0)
        elif arg != "-m":
            overrides.append(arg)
    return config_dir, config_name, overrides
