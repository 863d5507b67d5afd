"""One written contract between the loop and the optimizers; hyperparameters in parameter groups; one RNG registry."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from curvzo.checkpoint import CheckpointError
from curvzo.optim import MeZO, StepContext, ZerothOrderOptimizer, replay_from_losses, replay_trajectory
from curvzo.optim.streams import RNG_CONTRACT_VERSION, Stream, mix64, stream_seed
from tests.helpers import REPO_ROOT, quadratic

LOOP_MODULES = ["curvzo/train.py", "curvzo/job.py", "curvzo/resume.py", "curvzo/bench/measure.py"]


@pytest.mark.parametrize("path", LOOP_MODULES)
def test_the_loop_relies_on_the_written_contract_and_never_probes_attributes(path):
    tree = ast.parse((REPO_ROOT / path).read_text())
    probes = [node.func.id for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")]
    assert probes == [], f"{path} probes optimizers with {probes}"


class SignZO(ZerothOrderOptimizer):
    """ZO-SGD-Sign (ZO-Bench): θ ← θ − η·sign(ℓ+ − ℓ−)·z. A whole new method is this class (and a YAML)."""

    def __init__(self, params, lr: float, eps: float = 1e-3, *, seed: int = 0, **options) -> None:
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": 0.0}, seed=seed, **options)

    def update(self, ctx: StepContext, losses: list[float]) -> None:
        sign = math.copysign(1.0, losses[0] - losses[1])
        self.update_pass(ctx, lambda ctx, block, span, z, work: self.sgd_span(ctx, block, span, z, work, sign))


@pytest.mark.parametrize("probe", ["exact", "inplace"])
def test_a_new_method_is_one_hook_and_gets_the_probe_guard_records_and_replay(probe):
    theta, _, _, loss = quadratic(dim=20, seed=1)
    start = theta.detach().clone()
    opt = SignZO([theta], lr=1e-2, seed=0, probe=probe)
    first = float(loss().detach())
    for _ in range(300):
        opt.step(loss)
    assert float(loss().detach()) < first - 10
    assert opt.forward_passes == 600 and len(opt.trajectory) == 300
    assert math.isnan(opt.step(lambda: torch.tensor(float("nan")))) and opt.last_outcome == "skipped"
    twin = torch.nn.Parameter(start.clone())
    replay_from_losses(SignZO([twin], lr=1e-3, seed=0, probe=probe), opt.trajectory)
    assert torch.equal(twin.detach(), theta.detach())


def test_hyperparameters_live_in_parameter_groups_each_with_its_own_eps():
    """Per-group ε: the probe moves each block by ε_b z_b and each block divides by its own ε_b, so on a
    quadratic (exact central differences) the step is θ_b − η (Σ_c ε_c g_c·z_c / ε_b) z_b."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64)), \
        torch.nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))
    start = [a.detach().clone(), b.detach().clone()]
    loss = lambda: 0.5 * (a * a).sum() + 2.0 * (b * b).sum()  # noqa: E731 (∇ = a, 4b)
    opt = MeZO([{"params": [a], "eps": 1e-3}, {"params": [b], "eps": 1e-1, "lr": 0.02}], lr=0.01, seed=3)
    assert [group["eps"] for group in opt.param_groups] == [1e-3, 1e-1]
    za = opt.directions.direction(a, opt.step_seed(0), 0).double()
    zb = opt.directions.direction(b, opt.step_seed(0), 1).double()
    opt.step(loss)
    half_difference = 1e-3 * float(start[0] @ za) + 1e-1 * float(4 * start[1] @ zb)
    torch.testing.assert_close(a.detach(), start[0] - 0.01 * half_difference / 1e-3 * za, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.detach(), start[1] - 0.02 * half_difference / 1e-1 * zb, rtol=0, atol=1e-12)


def test_every_random_stream_has_its_own_tag_and_the_data_order_did_not_change():
    assert len({int(s) for s in Stream}) == len(Stream)
    assert stream_seed(7, Stream.DATA_ORDER) == mix64(7, 2)  # v1's data order, kept
    assert stream_seed(7, Stream.STEP, 3) == mix64(7, 1, 3)


def test_replaying_a_trajectory_of_another_rng_contract_is_refused_in_one_line():
    theta, _, _, loss = quadratic(dim=4)
    opt = MeZO([theta], lr=1e-3, seed=0)
    opt.step(loss)
    assert opt.trajectory[0]["rng"] == RNG_CONTRACT_VERSION
    assert opt.trajectory[0]["step"] == 1  # numbered as metrics.jsonl numbers steps (contract v3)
    old = [{k: v for k, v in opt.trajectory[0].items() if k != "rng"}]  # written before contract v2
    for replay in (replay_from_losses, replay_trajectory):
        with pytest.raises(ValueError, match=rf"RNG contract v1; this code draws directions under v{RNG_CONTRACT_VERSION}") as err:
            replay(MeZO([torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))], lr=1e-3), old)
        assert "\n" not in str(err.value)


def test_resuming_a_checkpoint_of_another_rng_contract_is_a_checkpoint_error(tmp_path):
    from curvzo.checkpoint import Checkpoint
    from curvzo.resume import restore

    theta = torch.nn.Parameter(torch.zeros(4))
    opt = MeZO([theta], lr=1e-3)
    record = {"step": 0, "seed": 1, "projected_grad": 0.5, "lr": [1e-3], "losses": [1.0, 0.0]}
    checkpoint = Checkpoint(step=1, identity={}, data_fingerprint="", start_fingerprint="", weights_fingerprint="",
                            loop={"lrs": [1e-3]}, trajectory=[record])
    with pytest.raises(CheckpointError, match="RNG contract v1"):
        restore(checkpoint, [theta], opt, None)
    assert torch.equal(theta.detach(), torch.zeros(4))


def test_the_zo_config_keys_are_documented_and_shared_by_every_method():
    shared = (REPO_ROOT / "conf" / "zo" / "default.yaml").read_text()
    for key in ("probe: exact", "update_rounding: auto", "directions: gaussian"):
        assert key in shared
    for path in sorted((REPO_ROOT / "conf" / "optimizer").glob("*.yaml")):
        text = path.read_text()
        zeroth_order = "curvzo.optim." in text
        inherits = "defaults:\n  - curvzo" in text
        assert ("/zo@_here_: default" in text or inherits) == zeroth_order or inherits, path.name


def test_an_unknown_optimizer_option_is_refused():
    with pytest.raises(TypeError):
        MeZO([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, probe_mode="exact")
    from curvzo.errors import ConfigError
    for bad in ({"probe": "exactly"}, {"update_rounding": "up"}, {"directions": "uniform"}):
        with pytest.raises(ConfigError, match=f"optimizer.{next(iter(bad))} must be one of"):
            MeZO([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, **bad)


def test_rademacher_directions_train_too():
    theta, _, _, loss = quadratic(dim=20, seed=2)
    opt = MeZO([theta], lr=0.02, seed=0, directions="rademacher")
    first = float(loss().detach())
    for _ in range(300):
        opt.step(loss)
    assert float(loss().detach()) < 0.5 * first
    assert opt.describe()["directions"] == "rademacher"


def test_the_loop_contract_is_what_the_loop_reads():
    """Everything train.py, job.py and resume.py touch is declared on the base class."""
    declared = set(dir(ZerothOrderOptimizer)) | {"forward_passes", "skipped_steps", "flat_steps", "last_stats", "last_outcome",
                                                 "trajectory", "extra_batches", "probe_mode"}
    source = "\n".join((REPO_ROOT / p).read_text() for p in LOOP_MODULES)
    def is_optimizer(node) -> bool:  # `optimizer` or `self.optimizer` (not `cfg.optimizer`, a config node)
        return (isinstance(node, ast.Name) and node.id == "optimizer") or (
            isinstance(node, ast.Attribute) and node.attr == "optimizer" and isinstance(node.value, ast.Name)
            and node.value.id == "self")

    used = {node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)
            and is_optimizer(node.value)}
    torch_optimizer = set(dir(torch.optim.Optimizer)) | {"param_groups", "state", "defaults"}  # torch instance attributes
    assert used - declared - torch_optimizer == set(), used - declared
    assert Path(REPO_ROOT / "curvzo" / "optim" / "base.py").read_text().count("def step(") == 1
