"""CurvZO at equal cost, part (c): forward passes to converge on a heterogeneous quadratic, best lr per arm.

    curvzo-equal-cost --out analysis/results/equal-cost   # runs this after the closed forms (parts a and b)

The problem is spec §11.10's: a block-diagonal quadratic L(θ) = ½ Σ_b (θ_b − θ*_b)ᵀ A_b (θ_b − θ*_b) with
diagonal curvatures log-uniform over 1e-2..1e1, whose initial displacement sits mostly in a few blocks, so
that gradient energy is concentrated: the case block sampling is meant for. Every arm is an optimizer of
``curvzo.optim`` stepped through its public ``step(closure)``; forward passes are the optimizer's own count
(a CurvZO step whose draw is empty costs none). For each arm the lr is chosen from a geometric grid by the
mean number of passes to reach ``target`` × the initial loss over the seeds (a run that never gets there
counts as the cap), and reported with the loss it reaches after ``checkpoint`` passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from curvzo.optim import CurvZO, MeZO
from curvzo.optim.block_sampling import variance_optimal

_F64 = torch.float64


@dataclass(frozen=True)
class Quadratic:
    """½ Σ_b (θ_b − θ*_b)ᵀ diag(a_b) (θ_b − θ*_b), started at θ = 0 (θ* carries the displacement)."""

    curvatures: list[torch.Tensor]  # a_b, the diagonal of A_b
    optimum: list[torch.Tensor]  # θ*_b

    def loss(self, params: list[torch.Tensor]) -> torch.Tensor:
        return sum(0.5 * (a * (p - t).square()).sum() for a, p, t in zip(self.curvatures, params, self.optimum))

    def gradient_energy(self, params: list[torch.Tensor]) -> torch.Tensor:
        """G_b = ‖A_b (θ_b − θ*_b)‖² at ``params``."""
        return torch.stack([(a * (p - t)).square().sum() for a, p, t in zip(self.curvatures, params, self.optimum)])

    def traces(self) -> torch.Tensor:
        return torch.stack([a.sum() for a in self.curvatures])

    def curvature_energy(self, params: list[torch.Tensor]) -> torch.Tensor:
        """H_b = g_bᵀ A_b g_b."""
        return torch.stack([(a * (a * (p - t)).square()).sum()
                            for a, p, t in zip(self.curvatures, params, self.optimum)])


def heterogeneous_quadratic(seed: int, blocks: int = 24, block_size: int = 16, heavy: int = 3,
                            heavy_share: float = 0.9) -> Quadratic:
    """``heavy`` blocks hold ``heavy_share`` of the initial ‖θ − θ*‖²; curvatures log-uniform 1e-2..1e1."""
    g = torch.Generator().manual_seed(1000 + seed)
    curvatures = [10 ** (3 * torch.rand(block_size, generator=g, dtype=_F64) - 2) for _ in range(blocks)]
    shares = [heavy_share / heavy if b < heavy else (1 - heavy_share) / (blocks - heavy) for b in range(blocks)]
    optimum = []
    for share in shares:
        direction = torch.randn(block_size, generator=g, dtype=_F64)
        optimum.append(direction / direction.norm() * math.sqrt(share * blocks))
    return Quadratic(curvatures, optimum)


class OracleVarianceOptimal(CurvZO):
    """CurvZO whose π is the variance-optimal one for the true G_b, T_b, H_b at the current θ: the best any
    estimate of them could do (an analysis arm, not an optimizer a user can run)."""

    def __init__(self, params, problem: Quadratic, **kwargs) -> None:
        super().__init__(params, budget_mode="fixed", **kwargs)
        self.problem, self.tracked = problem, [p for p in params]

    def inclusion_probabilities(self) -> torch.Tensor:
        current = [p.detach().to(_F64) for p in self.tracked]
        return variance_optimal(self.problem.gradient_energy(current), self.problem.traces(),
                                self.problem.curvature_energy(current), floor=self.variance_optimal_floor)


# arm name -> how to build it from (params, problem, lr, seed)
ARMS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "mezo": lambda ps, q, lr, seed: MeZO(ps, lr=lr, eps=1e-3, seed=seed),
    "curvzo": lambda ps, q, lr, seed: CurvZO(ps, lr=lr, eps=1e-3, seed=seed),
    "curvzo_uniform": lambda ps, q, lr, seed: CurvZO(ps, lr=lr, eps=1e-3, seed=seed, sampling="uniform"),
    "curvzo_fixed": lambda ps, q, lr, seed: CurvZO(ps, lr=lr, eps=1e-3, seed=seed, budget_mode="fixed",
                                                   fixed_fraction=0.4),
    "curvzo_regression (ours)": lambda ps, q, lr, seed: CurvZO(ps, lr=lr, eps=1e-3, seed=seed, score="regression"),
    "curvzo_sparse (ours, no HT)": lambda ps, q, lr, seed: CurvZO(  # conf/optimizer/curvzo_sparse.yaml
        ps, lr=lr, eps=1e-3, seed=seed, score="regression", ht_correction=False, sampling_power=1.0),
    "curvzo_variance_optimal (ours)": lambda ps, q, lr, seed: CurvZO(  # conf/optimizer/curvzo_variance_optimal.yaml
        ps, lr=lr, eps=1e-3, seed=seed, score="regression", sampling="variance_optimal", score_beta=0.02,
        budget_mode="fixed"),
    "oracle variance-optimal π": lambda ps, q, lr, seed: OracleVarianceOptimal(ps, q, lr=lr, eps=1e-3, seed=seed),
}


@dataclass(frozen=True)
class Run:
    passes_to_target: int | None  # None: not reached within the cap
    loss_at_checkpoint: float  # relative to the initial loss, after ``checkpoint`` passes (inf: diverged)


def converge(arm: str, problem: Quadratic, lr: float, seed: int, cap: int, target: float, checkpoint: int) -> Run:
    """One run of ``arm`` from θ = 0 until the loss falls to ``target`` × initial (and ``checkpoint`` passes are
    past) or ``cap`` passes are spent."""
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in problem.optimum]
    opt = ARMS[arm](params, problem, lr, seed)
    closure = lambda: problem.loss(params)
    with torch.no_grad():
        initial = float(closure())
        reached, at_checkpoint = None, None
        steps = 0
        while opt.forward_passes < cap and (reached is None or at_checkpoint is None) and steps < 10 * cap:
            steps += 1  # the step bound: empty draws spend no passes, a rule that always drew nothing would spin
            opt.step(closure)
            relative = float(closure()) / initial
            if not math.isfinite(relative) or relative > 1e3:  # diverged: never reaches the target
                return Run(None, math.inf)
            if at_checkpoint is None and opt.forward_passes >= checkpoint:
                at_checkpoint = relative
            if reached is None and relative <= target:
                reached = opt.forward_passes
    return Run(reached, at_checkpoint if at_checkpoint is not None else relative)


def convergence_study(seeds: int = 5, lrs: tuple[float, ...] = (2.5e-4, 5e-4, 1e-3, 2e-3, 3e-3, 4e-3),
                      cap: int = 3000, target: float = 0.1, checkpoint: int = 1000,
                      arms: tuple[str, ...] | None = None) -> dict:
    """Every arm at every lr and seed; per arm the lr with the fewest mean passes to target (cap if missed)."""
    arms = tuple(ARMS) if arms is None else arms
    problems = [heterogeneous_quadratic(seed) for seed in range(seeds)]
    rows = []
    for arm in arms:
        best = None
        for lr in lrs:
            runs = [converge(arm, problems[s], lr, s, cap, target, checkpoint) for s in range(seeds)]
            passes = [r.passes_to_target if r.passes_to_target is not None else cap for r in runs]
            mean = sum(passes) / seeds
            if best is None or mean < best["mean_passes"]:
                best = {"arm": arm, "lr": lr, "passes": passes, "mean_passes": mean,
                        "std_passes": float(torch.tensor(passes, dtype=_F64).std()) if seeds > 1 else 0.0,
                        "reached": sum(r.passes_to_target is not None for r in runs),
                        "loss_at_checkpoint": [r.loss_at_checkpoint for r in runs]}
        rows.append(best)
    mezo = next((r["mean_passes"] for r in rows if r["arm"] == "mezo"), None)
    for row in rows:
        row["passes_vs_mezo"] = row["mean_passes"] / mezo if mezo else None
    return {"seeds": seeds, "lrs": list(lrs), "cap": cap, "target": target, "checkpoint": checkpoint, "rows": rows}


def convergence_markdown(result: dict) -> list[str]:
    """The table of part (c), as markdown lines."""
    lines = ["## Forward passes to converge (part c)", "",
             (f"Block-diagonal quadratic, 24 blocks × 16 coordinates, curvatures 1e-2..1e1, 3 blocks hold 90 % of the "
              f"initial displacement; passes until the loss is {result['target']:g} × its start, cap "
              f"{result['cap']} (a run that misses counts as the cap); lr per arm from "
              f"{{{', '.join(f'{lr:.3g}' for lr in result['lrs'])}}} by the mean over {result['seeds']} seeds."), "",
             (f"| arm | best lr | passes to target, mean ± std | reached | × MeZO's passes | loss after "
              f"{result['checkpoint']} passes (× start), mean |"), "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["rows"]:
        half = sum(row["loss_at_checkpoint"]) / len(row["loss_at_checkpoint"])
        ratio = f"{row['passes_vs_mezo']:.2f}" if row["passes_vs_mezo"] is not None else "—"
        lines.append(f"| {row['arm']} | {row['lr']:.3g} | {row['mean_passes']:.0f} ± {row['std_passes']:.0f} | "
                     f"{row['reached']}/{result['seeds']} | {ratio} | {half:.3g} |")
    return lines
