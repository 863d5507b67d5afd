"""`curvzo-run` on every task type and PEFT mode (subprocesses, tiny models): the issue's checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import curvzo_run, read_jsonl

pytestmark = pytest.mark.integration  # every test here runs curvzo-run in a subprocess


def run_job(tmp_path: Path, *overrides: str) -> tuple[dict, list[dict]]:
    out = tmp_path / "run"
    proc = curvzo_run(*overrides, f"hydra.run.dir={out}", "logger=jsonl")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "summary.json").read_text()), read_jsonl(out / "metrics.jsonl")


# the Done-when command, one per new local task (classification and multiple choice)
@pytest.mark.parametrize("task, objective", [
    ("wsc", "CandidateClassification()"),
    ("wic", "CandidateClassification()"),
    ("multirc", "CandidateClassification()"),
    ("copa", "GoldOptionLM()"),
])
def test_new_local_tasks_run_the_smoke_job(tmp_path, shared_data_dir, task, objective):
    summary, rows = run_job(tmp_path, "model=tiny-opt", f"task={task}", "optimizer=mezo", "budget=smoke",
                            f"paths.data_dir={shared_data_dir}")
    assert summary["status"] == "finished" and summary["steps"] == 4 and summary["forward_passes"] == 8
    assert (summary["task"], summary["metric"], summary["objective"]) == (task, "acc", objective)
    folder = {"wsc": "WSC", "wic": "WiC", "multirc": "MultiRC", "copa": "COPA"}[task]
    assert summary["data"]["source"].startswith(f"local super_glue/{folder}")
    assert [r["step"] for r in rows if "eval/dev_acc" in r] == [0, 2, 4]
    assert all(0 <= r["eval/test_acc"] <= 1 and r["eval/dev_loss"] > 0 for r in rows if "eval/test_acc" in r)
    assert all(r["train/loss"] > 0 for r in rows if "train/loss" in r)


def write_squad(root: Path) -> Path:
    """A small official-format SQuAD v1.1 pair of files (40 train and 20 dev questions)."""
    def document(n: int, offset: int) -> dict:
        qas = [{"id": f"q{offset + i}", "question": f" Who is number {offset + i}? ",
                "answers": [{"text": f"Person {offset + i}", "answer_start": 0},
                            {"text": f"the person {offset + i}", "answer_start": 0}]} for i in range(n)]
        return {"version": "1.1", "data": [{"title": "Numbers", "paragraphs": [
            {"context": "Every number has a person.", "qas": qas}]}]}
    task_dir = root / "squad"
    task_dir.mkdir(parents=True)
    (task_dir / "train-v1.1.json").write_text(json.dumps(document(40, 0)))
    (task_dir / "dev-v1.1.json").write_text(json.dumps(document(20, 100)))
    return root


def test_generation_task_trains_on_answers_and_reports_f1_and_em(tmp_path):
    data = write_squad(tmp_path / "data")
    summary, rows = run_job(tmp_path, "model=tiny-llama", "task=squad", "optimizer=mezo", "budget=smoke",
                            f"paths.data_dir={data}", "task.max_new_tokens=4")
    assert summary["status"] == "finished" and summary["metric"] == "f1"
    assert summary["objective"] == "AnswerGeneration(max_new_tokens=4)"
    evals = [r for r in rows if "eval/dev_f1" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    for row in evals:
        assert {"eval/dev_loss", "eval/dev_f1", "eval/dev_em", "eval/test_f1", "eval/test_em"} <= set(row)
        assert all(0 <= row[f"eval/{split}_{m}"] <= 1 for split in ("dev", "test") for m in ("f1", "em"))
    assert {"test_f1", "test_em", "test_loss"} <= set(summary["test_at_best_dev"])
    assert "test_acc" not in summary["test_at_best_dev"]


@pytest.mark.parametrize("peft, trainable, eps, lr", [
    # 2 layers x (q_proj 32->32 and v_proj 32->16, rank 8: A is 8 x 32, B is out x 8)
    ("lora", 2 * ((8 * 32 + 32 * 8) + (8 * 32 + 16 * 8)), 1e-2, 1e-4),
    # 5 tokens x 2 layers x (key, value) x 2 KV heads x head size 8
    ("prefix", 5 * 2 * 2 * 2 * 8, 1e-1, 1e-2),
])
def test_peft_modes_run_on_tiny_llama_with_their_mode_defaults(tmp_path, shared_data_dir, peft, trainable, eps, lr):
    summary, rows = run_job(tmp_path, "model=tiny-llama", "task=sst2", "optimizer=mezo", "budget=smoke",
                            f"peft={peft}", f"paths.data_dir={shared_data_dir}")
    assert summary["status"] == "finished" and summary["peft"] == peft
    assert summary["trainable_params"] == trainable
    assert (summary["eps"], summary["lr"]) == (eps, lr)
    assert [r["zo/forward_passes"] for r in rows if "train/loss" in r] == [2, 4, 6, 8]


# issue 22's Done-when commands: training on the metric itself from the command line
@pytest.mark.parametrize("task", ["sst2", "squad"])
def test_the_metric_objective_runs_from_the_command_line(tmp_path, shared_data_dir, task):
    data = write_squad(tmp_path / "data") if task == "squad" else shared_data_dir
    model = "tiny-llama" if task == "squad" else "tiny-opt"
    summary, rows = run_job(tmp_path, f"model={model}", f"task={task}", "optimizer=mezo", "task.train_objective=metric",
                            "budget=smoke", f"paths.data_dir={data}")
    assert summary["status"] == "finished" and summary["train_objective"] == "metric"
    assert all(-1 <= r["train/loss"] <= 0 for r in rows if "train/loss" in r)
    assert curvzo_run(f"model={model}", f"task={task}", "optimizer=fo_adam", "task.train_objective=metric",
                      "budget=smoke", f"paths.data_dir={data}", f"hydra.run.dir={tmp_path / 'fo'}").returncode == 2
    assert not (tmp_path / "fo").exists()
