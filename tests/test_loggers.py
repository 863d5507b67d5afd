"""W&B never stops training and its runs are always finished; metrics.jsonl is written regardless."""

from __future__ import annotations

import json
import logging

import pytest
import wandb
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import curvzo.job
from curvzo.job import run_job
from curvzo.loggers import JsonlLogger, WandbLogger
from curvzo.run import CONFIG_DIR
from curvzo.train import TrainingLoop
from curvzo.wandb_run import WandbRun

RUN = WandbRun(mode="offline", project="curvzo", entity=None, name="mezo-sst2-seed0", group=None, job_type="train",
               run_id="0123abcd")


class FakeRun:
    """Stands in for a wandb Run; ``log`` starts failing after ``fail_after`` calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.logged: list[dict] = []
        self.finished_with: list[int] = []
        self.config = type("Cfg", (), {"update": lambda *a, **k: None})()
        self.summary = type("Summ", (), {"update": lambda *a, **k: None})()

    def define_metric(self, *args, **kwargs) -> None:
        pass

    def log(self, payload: dict, step: int) -> None:
        if self.fail_after is not None and len(self.logged) >= self.fail_after:
            raise ConnectionError("wandb backend went away\nlong traceback text")
        self.logged.append({"step": step, **payload})

    def finish(self, exit_code: int = 0) -> None:
        self.finished_with.append(exit_code)


def warnings_from(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "curvzo.loggers" and r.levelno == logging.WARNING]


def test_failing_init_is_one_warning_and_nothing_else(monkeypatch, tmp_path, caplog):
    def refuse(**kwargs):
        raise RuntimeError("api key required\nmore lines")

    monkeypatch.setattr(wandb, "init", refuse)
    logger = WandbLogger(tmp_path, RUN)
    for step in range(3):
        logger.log_dict({"train/loss": 1.0}, step)
    logger.log_summary({"status": "finished"})
    logger.close()
    assert warnings_from(caplog) == ["W&B logging disabled for this run: api key required"]


def test_failing_log_stops_sending_but_the_run_is_still_finished(monkeypatch, tmp_path, caplog):
    run = FakeRun(fail_after=2)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)
    logger = WandbLogger(tmp_path, RUN)
    for step in range(5):
        logger.log_dict({"train/loss": float(step)}, step)
    logger.close("failed")
    assert [r["step"] for r in run.logged] == [0, 1]
    assert len(warnings_from(caplog)) == 1 and "went away" in warnings_from(caplog)[0]
    assert run.finished_with == [1]
    logger.close()  # closing twice finishes once
    assert run.finished_with == [1]


def test_jsonl_logger_writes_non_finite_values_as_json(tmp_path):
    logger = JsonlLogger(tmp_path)
    logger.log_dict({"train/loss": float("nan"), "zo/projected_grad": float("inf")}, step=3)
    logger.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 3, "train/loss": None, "zo/projected_grad": "inf"}


@pytest.fixture
def smoke_cfg(shared_data_dir, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", return_hydra_config=True, overrides=[
            "model=tiny-opt", "task=sst2", "optimizer=mezo", "optimizer.lr=1e-3", "budget=smoke",
            f"paths.data_dir={shared_data_dir}", f"paths.cache_dir={tmp_path / 'cache'}"])
    HydraConfig.instance().set_config(cfg)  # the run's choices (model, task, ...) come from here
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it to the job
    yield cfg
    GlobalHydra.instance().clear()


def test_training_finishes_when_wandb_fails_mid_run(monkeypatch, smoke_cfg, tmp_path, caplog):
    run = FakeRun(fail_after=1)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)
    summary = run_job(smoke_cfg, tmp_path / "out")
    assert summary["status"] == "finished" and summary["steps"] == 4
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]  # the local log is complete
    assert len(run.logged) == 1 and run.finished_with == [0]
    assert len(warnings_from(caplog)) == 1


def test_a_crash_in_training_still_finishes_wandb_and_writes_summary(monkeypatch, smoke_cfg, tmp_path):
    run = FakeRun()
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)

    class CrashingLoop(TrainingLoop):
        def run(self):
            self.result.steps = 2
            raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(curvzo.job, "TrainingLoop", CrashingLoop)
    with pytest.raises(RuntimeError, match="device-side"):
        run_job(smoke_cfg, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == 2
    assert run.finished_with == [1]


# how a job appears in W&B (issue 18) -------------------------------------------------------------------------------------
def test_init_gets_the_jobs_name_group_tags_and_id(monkeypatch, smoke_cfg, tmp_path):
    seen = {}
    monkeypatch.setattr(wandb, "init", lambda **kwargs: seen.update(kwargs) or FakeRun())
    for variable in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE"):
        monkeypatch.delenv(variable, raising=False)
    summary = run_job(smoke_cfg, tmp_path / "out")
    assert seen["mode"] == "offline" and seen["project"] == "curvzo" and seen["job_type"] == "train"
    assert seen["name"] == "mezo-sst2-tiny-opt-lr0.001-smoke-seed0"  # the fixture's overrides, paths left out
    assert seen["id"] == summary["wandb_run_id"] and seen["resume"] == "allow" and len(seen["id"]) == 8
    assert {"optimizer/mezo", "task/sst2", "model/tiny-opt", "peft/full", "budget/smoke"} <= set(seen["tags"])


def test_the_environment_wins_over_the_config(monkeypatch, smoke_cfg, tmp_path):
    monkeypatch.setattr(wandb, "init", lambda **kwargs: pytest.fail("WANDB_MODE=disabled must not start W&B"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert run_job(smoke_cfg, tmp_path / "out")["status"] == "finished"

    seen = {}
    monkeypatch.setattr(wandb, "init", lambda **kwargs: seen.update(kwargs) or FakeRun())
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "team-env")
    run_job(smoke_cfg, tmp_path / "out2")
    assert (seen["mode"], seen["project"], seen["entity"]) == ("offline", "from-env", "team-env")


def test_online_without_credentials_falls_back_to_offline_with_one_line(monkeypatch, tmp_path, caplog):
    from curvzo.wandb_run import has_credentials, resolve_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not has_credentials()
    with caplog.at_level(logging.WARNING):
        assert resolve_mode("online", tmp_path / "run") == "offline"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and f"wandb sync {tmp_path / 'run'}/wandb/offline-run-*" in lines[0]
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    (tmp_path / "netrc").chmod(0o600)
    assert has_credentials() and resolve_mode("online", tmp_path) == "online"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    assert resolve_mode("online", tmp_path) == "online"


def test_run_names_come_from_the_overrides_and_groups_from_the_sweep(smoke_cfg):
    from curvzo.wandb_run import group_name, run_name

    choices = {"optimizer": "mezo", "task": "sst2", "model": "tiny-opt", "peft": "lora", "budget": "smoke"}
    overrides = ["optimizer=mezo", "task=sst2", "optimizer.lr=1e-3", "peft=lora", "seed=0",
                 "paths.data_dir=/data", "hydra.sweep.dir=x", "+logger.wandb.tags=[a]"]
    assert run_name(smoke_cfg, choices, overrides) == "mezo-sst2-lr0.001-lora-seed0"
    smoke_cfg.optimizer.lr = 1e-6
    assert run_name(smoke_cfg, choices, ["optimizer.lr=1e-6", "seed=0"]) == "mezo-sst2-lr1e-06-seed0"
    assert group_name(None, choices, "sweeps/table1-smoke", "multirun/x") == "table1-smoke"
    assert group_name(None, {**choices, "experiment": "table1-local"}, "config", None) == "table1-local"
    assert group_name(None, choices, "config", "multirun/2026-12-03/10-00-00") == "10-00-00"
    assert group_name("mine", choices, "sweeps/table1-smoke", None) == "mine" and group_name(None, choices, "config", None) is None
