"""CurvZO's block sampling: water-filled inclusion probabilities, Poisson or fixed-size draws, budget.

Pure functions of small tensors (one entry per block), computed in float64 on the CPU so that the
probabilities sum to the budget to rounding (optimizers.md §11.3).
"""

from __future__ import annotations

import math

import torch

_F64 = torch.float64


def waterfill(weights: torch.Tensor, budget: float, cost: torch.Tensor | None = None) -> torch.Tensor:
    """pi_b = min(1, c * w_b) with c chosen so that sum_b cost_b * pi_b = budget (Prop. 3.4).

    ``cost`` defaults to 1 per block (a budget in blocks); pass the block sizes for a budget in
    coordinates. Needs w_b > 0 and 0 < budget <= sum(cost); budget = sum(cost) gives every pi = 1.
    """
    w = weights.to(_F64)
    a = torch.ones_like(w) if cost is None else cost.to(_F64)
    if w.numel() == 0 or bool((w <= 0).any()) or not bool(torch.isfinite(w).all()):
        raise ValueError("waterfill needs finite, strictly positive weights")
    total = float(a.sum())
    if not 0 < budget <= total * (1 + 1e-12):
        raise ValueError(f"waterfill budget {budget} is outside (0, {total}]")
    if budget >= total:
        return torch.ones_like(w)
    order = torch.argsort(w, descending=True, stable=True)
    w_sorted, a_sorted = w[order], a[order]
    # k saturated blocks: the k largest weights get pi = 1, the rest share budget - cost(top k)
    saturated_cost = torch.cat([w.new_zeros(1), torch.cumsum(a_sorted, 0)[:-1]])
    rest_mass = torch.flip(torch.cumsum(torch.flip(a_sorted * w_sorted, [0]), 0), [0])
    c = (budget - saturated_cost) / rest_mass
    feasible = (c * w_sorted <= 1.0) & (c > 0)
    k = int(torch.nonzero(feasible)[0])  # the smallest number of saturated blocks that works
    return torch.clamp(c[k] * w, max=1.0)


def inclusion_probabilities(
    scores: torch.Tensor,
    fraction: float,
    *,
    sampling: str = "curvature",
    power: float = 0.5,
    score_floor: float = 1e-12,
    explore: float = 0.1,
    pi_floor: float = 0.0,
    numel: torch.Tensor | None = None,
) -> torch.Tensor:
    """The pi_b of one step: uniform (pi = f) or curvature (water-filled S^power mixed with uniform).

    With ``numel`` the budget counts coordinates (sum_b d_b pi_b = f d) and the curvature rule is the
    variance-optimal one under that budget, pi_b = min(1, c w_b / sqrt(d_b)).
    """
    n = scores.numel()
    uniform = torch.full((n,), float(fraction), dtype=_F64)
    if sampling == "uniform":
        pi = uniform
    else:
        w = torch.clamp(scores.to(_F64), min=score_floor) ** power
        if numel is None:
            curvature = waterfill(w, fraction * n)
        else:
            d = numel.to(_F64)
            curvature = waterfill(w / d.sqrt(), fraction * float(d.sum()), cost=d)
        pi = (1.0 - explore) * curvature + explore * uniform
    if pi_floor > 0:
        pi = torch.clamp(pi, min=pi_floor)
    return torch.clamp(pi, max=1.0)


def variance_optimal(
    energy: torch.Tensor,
    traces: torch.Tensor,
    curvature_energy: torch.Tensor | None = None,
    *,
    floor: float = 1e-3,
    ceiling: float = 1.0,
    iterations: int = 200,
    tolerance: float = 1e-7,
) -> torch.Tensor:
    """The pi in [floor, ceiling]^n minimising M = E[g'Ag] of the Horvitz–Thompson step (optimizers.md §11.10).

    M(pi) = sum_b [T_b (Q + (1 - pi_b) G_b) + 2 H_b] / pi_b with Q = sum_j pi_j G_j, G_b = ``energy``,
    T_b = ``traces`` (tr A_b) and H_b = ``curvature_energy`` (g_b' A_b g_b; None: 0). Every pi costs two
    forward passes, so no budget binds: M is convex in log pi, and its stationarity condition
    pi_k^2 = (T_k (Q + G_k) + 2 H_k) / (G_k sum_b T_b / pi_b) is iterated (damped, in log space) from
    pi = ceiling (1: MeZO). The optimum lowers pi on the blocks whose share of gradient energy exceeds their
    share of curvature and keeps the rest at the ceiling.
    """
    G = energy.to(_F64).clamp(min=0.0)
    T = traces.to(_F64)
    H = torch.zeros_like(G) if curvature_energy is None else curvature_energy.to(_F64)
    if G.numel() == 0 or bool((T <= 0).any()) or not (bool(torch.isfinite(G).all()) and bool(torch.isfinite(T).all())):
        raise ValueError("variance_optimal needs finite energies and strictly positive traces")
    if not 0 < floor <= ceiling <= 1:
        raise ValueError(f"variance_optimal needs 0 < floor <= ceiling <= 1, got {floor} and {ceiling}")
    high, low = math.log(ceiling), math.log(floor)
    log_pi = torch.full_like(G, high)
    for _ in range(iterations):
        pi = log_pi.exp()
        Q = float((pi * G).sum())
        D = float((T / pi).sum())
        numerator = T * (Q + G) + 2 * H
        # G_k = 0: M only falls as pi_k rises, so pi_k = ceiling
        target = torch.where(G > 0, 0.5 * (torch.log(numerator) - torch.log(G * D)), torch.full_like(G, high))
        step = 0.5 * (target.clamp(low, high) - log_pi)
        log_pi = log_pi + step
        if float(step.abs().max()) < tolerance:
            break
    return log_pi.exp()


def predicted_moment(pi: torch.Tensor, energy: torch.Tensor, traces: torch.Tensor,
                     curvature_energy: torch.Tensor | None = None) -> float:
    """M(pi) = E[g'Ag] of the Horvitz–Thompson step with Poisson draws (optimizers.md §11.10); pi = 1 is MeZO."""
    pi, G, T = pi.to(_F64), energy.to(_F64), traces.to(_F64)
    H = torch.zeros_like(G) if curvature_energy is None else curvature_energy.to(_F64)
    Q = float((pi * G).sum())
    return float(((T * (Q + (1 - pi) * G) + 2 * H) / pi).sum())


def poisson_sample(pi: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Independent Bernoulli(pi_b) draws. The mask may be empty: forcing a block in would bias it by
    1 + P(empty)/pi_b (optimizers.md §11.10), so the caller skips such a step instead."""
    return torch.rand(pi.numel(), generator=generator, dtype=_F64) < pi


def fixed_size_sample(pi: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Systematic sampling over a random order: P(b selected) = pi_b, size floor or ceil of sum(pi)."""
    n = pi.numel()
    order = torch.randperm(n, generator=generator)
    edges = torch.cumsum(pi[order], 0)
    start = torch.rand(1, generator=generator, dtype=_F64)
    lower = torch.cat([edges.new_zeros(1), edges[:-1]])
    # block i is hit when some point start + j (j integer) falls in [lower_i, edges_i): pi_i <= 1 hits at most once
    hit = torch.floor(edges - start) > torch.floor(lower - start)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[hit]] = True
    return mask  # empty only when sum(pi) < 1 and the start falls past every edge


def support_and_entropy(scores: torch.Tensor) -> tuple[float, float]:
    """(d_eff, H): effective support (sum sqrt x)^2 / sum x in [1, n] and normalised entropy in [0, 1].

    Scores that are all zero (or not finite) read as uniform: nothing has told blocks apart yet.
    """
    x = scores.to(_F64)
    n = x.numel()
    total = float(x.sum())
    if n == 1:
        return 1.0, 1.0
    if not math.isfinite(total) or total <= 0:
        return float(n), 1.0
    q = x / total
    d_eff = float(q.sqrt().sum() ** 2)
    entropy = float(-torch.xlogy(q, q).sum()) / math.log(n)  # xlogy: 0 log 0 = 0
    return d_eff, entropy


def adaptive_budget(
    scores: torch.Tensor,
    fraction: float,
    *,
    budget_min: float,
    budget_max: float,
    alpha: float,
    beta: float,
    entropy_term: str = "one_minus_h",
) -> float:
    """The next budget fraction f (Eq. 20 as the spec reads it): wider support, bigger budget."""
    d_eff, entropy = support_and_entropy(scores)
    e = 1.0 - entropy if entropy_term == "one_minus_h" else entropy
    raw = budget_min + (budget_max - budget_min) * (alpha * d_eff / scores.numel() + (1.0 - alpha) * e)
    return min(budget_max, max(budget_min, (1.0 - beta) * fraction + beta * raw))
