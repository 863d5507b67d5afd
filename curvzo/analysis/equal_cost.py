"""CurvZO at equal cost: the closed forms of optimizers.md §11.10 against Monte Carlo, and the variance-optimal π.

    curvzo-equal-cost --out analysis/results/equal-cost   # ~20 min on one core: (a) and (b) ~1 min, (c) the rest

On a block-diagonal quadratic with gradient g (blocks g_b, d_b coordinates, A_b the curvature of block b),
every step costs two forward passes whatever the inclusion probabilities π are, so what decides progress
per forward pass at the best lr is the curvature-weighted second moment M = E[ĝᵀAĝ] of the step's
estimate. For Poisson sampling with the 1/π (Horvitz–Thompson) factor and ε → 0 (spec §11.10):

    E‖ĝ_b‖² = [(d_b + 2) G_b + d_b (Q − π_b G_b)] / π_b,       G_b = ‖g_b‖², Q = Σ_j π_j G_j
    M       = Σ_b [T_b (Q + (1 − π_b) G_b) + 2 H_b] / π_b,      T_b = tr A_b, H_b = g_bᵀ A_b g_b

π ≡ 1 is MeZO. This module computes both, measures them through the optimizers' public API (CurvZO with a
given π, MeZO) on a linear loss whose two-point difference is exact, and finds the π that minimises M.
The efficiency of a π relative to MeZO is M(1) / M(π): the ratio of their best-lr progress per pass.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from curvzo.analysis.equal_cost_convergence import (
    convergence_markdown,
    convergence_study,
)
from curvzo.optim import CurvZO, MeZO
from curvzo.optim.block_sampling import variance_optimal, waterfill

_F64 = torch.float64


@dataclass(frozen=True)
class BlockProblem:
    """A block-diagonal quadratic seen at one point: the gradient blocks and the curvature blocks."""

    gradients: list[torch.Tensor]  # g_b, float64
    curvatures: list[torch.Tensor]  # A_b (d_b x d_b, symmetric), float64

    @property
    def sizes(self) -> torch.Tensor:
        return torch.tensor([float(g.numel()) for g in self.gradients], dtype=_F64)

    @property
    def energy(self) -> torch.Tensor:
        """G_b = ‖g_b‖²."""
        return torch.stack([g.square().sum() for g in self.gradients])

    @property
    def traces(self) -> torch.Tensor:
        """T_b = tr A_b."""
        return torch.stack([a.diagonal().sum() for a in self.curvatures])

    @property
    def curvature_energy(self) -> torch.Tensor:
        """H_b = g_bᵀ A_b g_b."""
        return torch.stack([g @ a @ g for g, a in zip(self.gradients, self.curvatures)])


def random_problem(blocks: int = 6, block_size: int = 8, seed: int = 0, heavy: int = 2,
                   heavy_share: float = 0.9) -> BlockProblem:
    """Diagonal curvatures log-uniform over 1e-2..1e1 and gradients whose energy sits mostly (``heavy_share``)
    in the first ``heavy`` blocks: the heterogeneous case sparse sampling is meant for."""
    g = torch.Generator().manual_seed(seed)
    curvatures = [torch.diag(10 ** (3 * torch.rand(block_size, generator=g, dtype=_F64) - 2)) for _ in range(blocks)]
    raw = [torch.randn(block_size, generator=g, dtype=_F64) for _ in range(blocks)]
    shares = [heavy_share / heavy if b < heavy else (1 - heavy_share) / (blocks - heavy) for b in range(blocks)]
    gradients = [r / r.norm() * math.sqrt(s) for r, s in zip(raw, shares)]
    return BlockProblem(gradients, curvatures)


def second_moments(problem: BlockProblem, pi: torch.Tensor) -> torch.Tensor:
    """E‖ĝ_b‖² per block, closed form."""
    pi = pi.to(_F64)
    G, d = problem.energy, problem.sizes
    Q = float((pi * G).sum())
    return ((d + 2) * G + d * (Q - pi * G)) / pi


def curvature_moment(problem: BlockProblem, pi: torch.Tensor) -> float:
    """M = E[ĝᵀAĝ], closed form."""
    pi = pi.to(_F64)
    G, T, H = problem.energy, problem.traces, problem.curvature_energy
    Q = float((pi * G).sum())
    return float(((T * (Q + (1 - pi) * G) + 2 * H) / pi).sum())


def efficiency(problem: BlockProblem, pi: torch.Tensor) -> float:
    """Best-lr progress per forward pass relative to MeZO: M(π ≡ 1) / M(π)."""
    return curvature_moment(problem, torch.ones(len(problem.gradients), dtype=_F64)) / curvature_moment(problem, pi)


class GivenProbabilities(CurvZO):
    """CurvZO whose inclusion probabilities are fixed (the study varies π itself, not the scores behind it)."""

    def __init__(self, params, pi: torch.Tensor, **kwargs) -> None:
        super().__init__(params, budget_mode="fixed", **kwargs)
        self.given_pi = pi.to(_F64)

    def inclusion_probabilities(self) -> torch.Tensor:
        return self.given_pi.clone()


@dataclass
class MonteCarlo:
    """Sample means and their standard errors over the draws."""

    second_moments: torch.Tensor
    second_moments_se: torch.Tensor
    curvature_moment: float
    curvature_moment_se: float


def monte_carlo(problem: BlockProblem, pi: torch.Tensor | None, draws: int, seed: int = 0,
                eps: float = 1e-3) -> MonteCarlo:
    """ĝ measured through ``step``: on L(θ) = gᵀθ the two-point difference is exact, so with lr = 1 the step
    moves θ by −ĝ. ``pi`` None is MeZO; otherwise CurvZO (Poisson, 1/π) with that π."""
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in problem.gradients]
    if pi is None:
        opt = MeZO(params, lr=1.0, eps=eps, seed=seed)
    else:
        opt = GivenProbabilities(params, pi, lr=1.0, eps=eps, seed=seed)

    def loss() -> torch.Tensor:
        return sum(torch.dot(g, p) for g, p in zip(problem.gradients, params))

    per_block = torch.zeros(draws, len(params), dtype=_F64)
    weighted = torch.zeros(draws, dtype=_F64)
    with torch.no_grad():
        for t in range(draws):
            before = [p.detach().clone() for p in params]
            opt.step(loss)
            estimate = [b - p.detach() for b, p in zip(before, params)]
            per_block[t] = torch.stack([e.square().sum() for e in estimate])
            weighted[t] = sum(e @ a @ e for e, a in zip(estimate, problem.curvatures))
    return MonteCarlo(per_block.mean(0), per_block.std(0) / math.sqrt(draws), float(weighted.mean()),
                      float(weighted.std() / math.sqrt(draws)))


def variance_optimal_pi(problem: BlockProblem, floor: float = 1e-3) -> torch.Tensor:
    """The π in [floor, 1]^n that minimises M (no budget constraint: every π costs two passes per step)."""
    return variance_optimal(problem.energy, problem.traces, problem.curvature_energy, floor=floor)


def study(seeds: int = 5, draws: int = 4000) -> dict:
    """Closed form vs Monte Carlo for MeZO and several π, and the efficiency of each π, over problem seeds."""
    rows = []
    for seed in range(seeds):
        problem = random_problem(seed=seed)
        n = len(problem.gradients)
        G, d = problem.energy, problem.sizes
        candidates = {
            "mezo (pi = 1)": torch.ones(n, dtype=_F64),
            "uniform f = 0.4": torch.full((n,), 0.4, dtype=_F64),
            "pi ∝ sqrt(G_b / d_b), f = 0.4": _scaled(torch.sqrt(G / d), 0.4 * n),
            "uniform f = 0.9": torch.full((n,), 0.9, dtype=_F64),
            "variance-optimal": variance_optimal_pi(problem),
            "variance-optimal, ceiling 0.9": variance_optimal(G, problem.traces, problem.curvature_energy,
                                                              floor=1e-3, ceiling=0.9),
        }
        for name, pi in candidates.items():
            measured = monte_carlo(problem, None if name.startswith("mezo") else pi, draws, seed=seed)
            closed = curvature_moment(problem, pi)
            rows.append({"seed": seed, "pi": name, "pi_values": [round(float(x), 4) for x in pi],
                         "M_closed": closed, "M_monte_carlo": measured.curvature_moment,
                         "M_se": measured.curvature_moment_se,
                         "z": (measured.curvature_moment - closed) / measured.curvature_moment_se,
                         "efficiency_vs_mezo": efficiency(problem, pi)})
    return {"draws": draws, "seeds": seeds, "rows": rows}


def _scaled(weights: torch.Tensor, budget: float) -> torch.Tensor:
    return waterfill(weights.clamp(min=1e-12), budget)


def to_markdown(result: dict, command: str) -> str:
    lines = ["# CurvZO at equal cost: closed form vs Monte Carlo, and the variance-optimal π", "",
             f"Command: `{command}` ({result['seeds']} problem seeds, {result['draws']} draws each)", "",
             "M = E[ĝᵀAĝ] (spec §11.10); efficiency = M(MeZO) / M(π), progress per forward pass at the best lr.", "",
             "| seed | π | M closed form | M Monte Carlo ± se | z | efficiency vs MeZO |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for row in result["rows"]:
        lines.append(f"| {row['seed']} | {row['pi']} | {row['M_closed']:.4g} | {row['M_monte_carlo']:.4g} ± "
                     f"{row['M_se']:.2g} | {row['z']:+.2f} | {row['efficiency_vs_mezo']:.3f} |")
    by_pi: dict[str, list[float]] = {}
    for row in result["rows"]:
        by_pi.setdefault(row["pi"], []).append(row["efficiency_vs_mezo"])
    lines += ["", "| π | mean efficiency vs MeZO over seeds |", "| --- | ---: |"]
    lines += [f"| {name} | {sum(v) / len(v):.3f} |" for name, v in by_pi.items()]
    if "convergence" in result:
        lines += ["", *convergence_markdown(result["convergence"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="curvzo-equal-cost", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for equal_cost.json and equal_cost.md")
    parser.add_argument("--seeds", type=int, default=5, help="problem seeds (default 5)")
    parser.add_argument("--draws", type=int, default=4000, help="Monte Carlo steps per π (default 4000)")
    parser.add_argument("--convergence-seeds", type=int, default=5,
                        help="problem seeds of part (c), forward passes to converge (default 5; 0 skips it)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.draws < 2 or args.convergence_seeds < 0:
        parser.error("--seeds must be >= 1, --draws >= 2 and --convergence-seeds >= 0")
    result = study(args.seeds, args.draws)
    if args.convergence_seeds:
        result["convergence"] = convergence_study(args.convergence_seeds)
    command = " ".join(["curvzo-equal-cost", *(argv if argv is not None else sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "equal_cost.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "equal_cost.md").write_text(to_markdown(result, command), encoding="utf-8")
    print(f"wrote {args.out / 'equal_cost.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
