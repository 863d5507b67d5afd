"""Test helpers: tiny models built from the repository's own model configs."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import torch
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]


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
