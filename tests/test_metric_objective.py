"""Training on the metric itself (task.train_objective=metric; MeZO §3.3 --non_diff), against direct computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from curvzo.analysis.collect import collect_runs
from curvzo.analysis.results_table import aggregate, differences, load_runs
from curvzo.errors import ConfigError
from curvzo.example import Example
from curvzo.generation import greedy_decode
from curvzo.job import optimizer_kwargs, prepare_optimizer, run_job, validate_config
from curvzo.metric_objective import CandidateAccuracy, GenerationF1, training_objective
from curvzo.metrics import f1_score
from curvzo.minibatch import MinibatchLoss
from curvzo.objectives import AnswerGeneration, CandidateClassification, GoldOptionLM
from curvzo.run import CONFIG_DIR
from curvzo.utils.instantiate import instantiate
from tests.helpers import DATA_DIR, tiny_model
from tests.test_cli_tasks import write_squad
from tests.test_objectives import COPA_LIKE, option_logprobs

SST2_LIKE = [
    Example("a gripping, funny film It was", (" terrible", " great"), 1),
    Example("dull and far too long It was", (" terrible", " great"), 0),
    Example("the cast is wonderful It was", (" terrible", " great"), 1),
    Example("nothing works here It was", (" terrible", " great"), 0),
    Example("a small miracle It was", (" terrible", " great"), 0),
]


@pytest.fixture(scope="module", params=["tiny-opt", "tiny-llama"])
def loaded(request):
    return tiny_model(request.param)


def argmax_hits(loaded, examples) -> list[float]:
    """1 where the option with the highest mean option-token log-probability is correct (one unpadded pass each)."""
    hits = []
    for ex in examples:
        scores = [sum(lp) / len(lp) for lp in (option_logprobs(loaded.model, loaded.tokenizer, ex.prompt, o)
                                              for o in ex.options)]
        hits.append(float(max(range(len(scores)), key=lambda i: (scores[i], -i)) in ex.correct_options))
    return hits


def closure_value(loaded, objective, examples, micro_batch_size=None) -> float:
    return float(MinibatchLoss(loaded.model, loaded.tokenizer, objective, 512, "cpu", micro_batch_size).closure(examples)())


def test_the_closure_is_minus_the_argmax_accuracy_whole_and_in_micro_batches(loaded):
    objective = training_objective(CandidateClassification(), "metric")
    assert isinstance(objective, CandidateAccuracy) and objective.train_objective == "metric"
    examples = SST2_LIKE + [Example("The capital of France is", (" Paris.", " Lyon.", " Nice."), 0, correct=(0, 1, 2))]
    hits = argmax_hits(loaded, examples)
    assert hits[-1] == 1.0  # every option correct: a hit whatever the argmax (ReCoRD's rule)
    expected = -sum(hits) / len(hits)
    assert closure_value(loaded, objective, examples) == expected
    assert closure_value(loaded, objective, examples, micro_batch_size=2) == expected  # the reduction ranks use
    # the metric the closure climbs is the one evaluation reports
    assert objective.evaluate(loaded.model, loaded.tokenizer, examples, 3, 512, "cpu")["acc"] == -expected


def test_multiple_choice_trains_on_every_candidate_and_evaluates_as_before(loaded):
    task_objective = GoldOptionLM()
    objective = training_objective(task_objective, "metric")
    batch = objective.training_batch(COPA_LIKE, loaded.tokenizer, 512)
    assert batch.encoded.input_ids.shape[0] == sum(len(ex.options) for ex in COPA_LIKE)  # not the gold option alone
    assert closure_value(loaded, objective, COPA_LIKE) == -sum(argmax_hits(loaded, COPA_LIKE)) / len(COPA_LIKE)
    evaluated = objective.evaluate(loaded.model, loaded.tokenizer, COPA_LIKE, 2, 512, "cpu")
    assert evaluated == task_objective.evaluate(loaded.model, loaded.tokenizer, COPA_LIKE, 2, 512, "cpu")
    assert (objective.metric, objective.metrics) == ("acc", ("acc",))


def test_the_f1_objective_decodes_from_the_prompt_alone_exactly_as_evaluation(loaded):
    task_objective = AnswerGeneration(max_new_tokens=6)
    objective = training_objective(task_objective, "metric")
    assert isinstance(objective, GenerationF1)
    prompts = ["Title: t\nContext: c\nQuestion: q?\nAnswer:", "Passage: p\nQuestion: r?\nAnswer:",
               "Context: the sky is blue\nQuestion: what colour?\nAnswer:"]
    generated = greedy_decode(loaded.model, loaded.tokenizer, prompts, 512, 6, "cpu")
    # golds built from the random model's own outputs, so that some F1s are neither 0 nor 1
    examples = [Example(prompts[0], (" gold one\n",), 0, answers=("gold one", generated[0])),
                Example(prompts[1], (" extra words\n",), 0, answers=(f"{generated[1]} extra words",)),
                Example(prompts[2], (" blue\n",), 0, answers=("blue",))]
    f1 = [f1_score(text, ex.answers) for text, ex in zip(generated, examples)]
    assert max(f1) > 0 and min(f1) < 1
    batch = objective.training_batch(examples, loaded.tokenizer, 512)
    assert [ex.prompt for ex in batch.examples] == prompts  # the gold answer is never part of the input
    assert closure_value(loaded, objective, examples) == pytest.approx(-sum(f1) / 3, abs=1e-12)
    assert closure_value(loaded, objective, examples, micro_batch_size=1) == pytest.approx(-sum(f1) / 3, abs=1e-12)
    # the decoding the objective scores is evaluation's own (at its default batching)
    assert task_objective.generate(loaded.model, loaded.tokenizer, examples, 1, 512, "cpu") == generated
    assert task_objective.decode(loaded.model, loaded.tokenizer, examples, 512, "cpu") == generated


def test_the_train_objective_value_is_checked():
    assert training_objective(GoldOptionLM(), "loss").__class__ is GoldOptionLM
    with pytest.raises(ConfigError, match=r"^task.train_objective must be one of loss, metric, got 'accuracy'$"):
        training_objective(GoldOptionLM(), "accuracy")


def test_first_order_training_and_unknown_values_are_refused_in_one_line(job_cfg):
    with pytest.raises(ConfigError, match=r"^task.train_objective=metric needs a zeroth-order optimizer: "
                                          r"fo_adam backpropagates, and no gradient flows through a metric$"):
        validate_config(job_cfg("task=sst2", "optimizer=fo_adam", "task.train_objective=metric"))
    with pytest.raises(ConfigError, match=r"^task.train_objective must be one of loss, metric, got 'f1'$"):
        validate_config(job_cfg("task=sst2", "optimizer=mezo", "task.train_objective=f1"))
    validate_config(job_cfg("task=sst2", "optimizer=none", "task.train_objective=metric"))  # nothing trains


# DiZO's divergence projection (every projection interval) rescales layers whatever the loss says; no
# projection falls in these three steps, so its gradient part alone is checked here
ZO_PRESETS = ["mezo", "curvzo", "curvzo_uniform", "curvzo_fixed", "curvzo_sparse", "curvzo_variance_optimal",
              "sparse_mezo", "zo_sgd_momentum", "zo_adam", "hizoo", "loren", "dizo"]


@pytest.mark.parametrize("preset", ZO_PRESETS)
def test_a_flat_metric_gives_a_zero_projected_gradient_and_no_update(job_cfg, preset):
    cfg = job_cfg("task=sst2", f"optimizer={preset}", "optimizer.lr=1e-2", "task.train_objective=metric")
    loaded = tiny_model("tiny-opt")
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    optimizer = instantiate(optimizer_kwargs(cfg), "optimizer")(params)
    prepare_optimizer(optimizer, loaded.model, 0)
    before = [p.detach().clone() for p in params]
    one_option = [Example(ex.prompt, (" great",), 0) for ex in SST2_LIKE]  # the argmax is always right: acc 1
    closure = MinibatchLoss(loaded.model, loaded.tokenizer, training_objective(CandidateClassification(), "metric"),
                            512, "cpu").closure(one_option)
    loaded.model.eval()
    for _ in range(3):
        assert float(optimizer.step(closure)) == -1.0
        assert optimizer.last_stats.get("zo/projected_grad", 0.0) == 0.0
    assert optimizer.forward_passes > 0 and optimizer.flat_steps == 3 - optimizer.empty_steps
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, params))


@pytest.mark.parametrize("task, objective, extra", [
    ("sst2", "CandidateAccuracy(CandidateClassification())", []),
    ("sst2", "CandidateAccuracy(CandidateClassification())", ["model=tiny-llama", "peft=lora", "optimizer=zo_adam"]),
    ("copa", "CandidateAccuracy(GoldOptionLM())", ["peft=prefix", "model=tiny-llama"]),
    ("squad", "GenerationF1(AnswerGeneration(max_new_tokens=4))", ["task.max_new_tokens=4", "model=tiny-llama"]),
])
def test_every_task_type_trains_on_its_metric_in_process(job_cfg, tmp_path, task, objective, extra):
    data = str(write_squad(tmp_path / "data")) if task == "squad" else DATA_DIR
    cfg = job_cfg(f"task={task}", "optimizer=mezo", "task.train_objective=metric", f"paths.data_dir={data}", *extra)
    out = tmp_path / "run"
    summary = run_job(cfg, out)
    assert summary["status"] == "finished" and summary["steps"] == 4
    assert (summary["train_objective"], summary["objective"]) == ("metric", objective)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(train) == 4 and all(-1.0 <= v <= 0.0 for v in train)  # minus a minibatch accuracy / F1
    if task != "squad":  # a batch of 16 examples: accuracies are multiples of 1/16
        assert all(abs(16 * v - round(16 * v)) < 1e-12 for v in train)
    metric = "f1" if task == "squad" else "acc"
    assert f"test_{metric}" in summary["test_at_best_dev"] and "test_loss" in summary["test_at_best_dev"]


def write_summary(root: Path, name: str, optimizer: str, train_objective: str | None, test: float, seed: int) -> None:
    run = root / name
    run.mkdir(parents=True)
    summary = {"status": "finished", "task": "sst2", "metric": "acc", "model": "m", "optimizer": optimizer,
               "peft": "full", "budget": "b", "lr": 1e-4, "eps": 1e-3, "seed": seed,
               "best": {"step": 4, "dev_acc": test}, "test_at_best_dev": {"step": 4, "test_acc": test},
               "zero_shot": {"test_acc": 0.5}, "steps": 4, "forward_passes": 8}
    if train_objective is not None:  # summaries written before the key have none: they trained on the loss
        summary["train_objective"] = train_objective
    (run / "summary.json").write_text(json.dumps(summary))


def test_the_tables_keep_the_two_objectives_apart(tmp_path):
    for seed, (loss_acc, metric_acc) in enumerate([(0.70, 0.60), (0.74, 0.62)]):
        write_summary(tmp_path, f"loss{seed}", "mezo", None if seed == 0 else "loss", loss_acc, seed)
        write_summary(tmp_path, f"metric{seed}", "mezo", "metric", metric_acc, seed)
    table = aggregate(load_runs(tmp_path))
    assert table[["optimizer", "train_objective", "seeds"]].values.tolist() == [["mezo", "loss", 2], ["mezo", "metric", 2]]
    assert table["test"].round(6).tolist() == [72.0, 61.0]
    diffs = differences(table, load_runs(tmp_path), "mezo")
    assert diffs[["train_objective", "seeds", "baseline_seeds"]].values.tolist() == [["metric", 2, 2]]
    assert diffs["diff"].round(6).tolist() == [-11.0]
    runs = collect_runs(tmp_path)
    assert sorted(set(runs["optimizer"])) == ["mezo", "mezo (metric objective)"]
    assert sorted(runs["train_objective"]) == ["loss", "loss", "metric", "metric"]


def test_select_by_last_reports_the_final_model(job_cfg, tmp_path):
    summary = run_job(job_cfg("task=sst2", "optimizer=mezo", "select_by=last", "optimizer.lr=1e3"), tmp_path / "run")
    assert summary["best"]["step"] == summary["test_at_best_dev"]["step"] == 4  # an lr that wrecks the model: still 4


def preset(name: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}"])


def test_the_paper_preset_is_mezo_table3s_f1_row():
    cfg = preset("metric_objective")
    assert (cfg.model.name_or_path, cfg.task.name, cfg.task.train_objective, cfg.optimizer._target_) == \
        ("facebook/opt-13b", "squad", "metric", "curvzo.optim.MeZO")
    assert (cfg.optimizer.lr, cfg.optimizer.eps, cfg.select_by, cfg.budget.max_steps) == (1e-2, 1e-1, "last", 20000)
    assert cfg.peft.adapter._target_ == "curvzo.peft_modes.prefix"
    local = preset("metric_objective-local")
    assert (local.task.name, local.task.train_objective, local.model.dtype, local.budget.max_forward_passes) == \
        ("sst2", "metric", "bfloat16", 400)


def test_dev_curves_keep_the_two_objectives_apart(tmp_path):
    from curvzo.analysis.dev_curves import curve_table, load_curves

    for name, objective, acc in (("loss", "loss", 0.7), ("metric", "metric", 0.6)):
        write_summary(tmp_path, name, "mezo", objective, acc, 0)
        (tmp_path / name / "metrics.jsonl").write_text(json.dumps({"step": 4, "eval/dev_acc": acc}) + "\n")
    table = curve_table(load_curves(tmp_path))
    assert table[["optimizer", 4]].values.tolist() == [["mezo", 70.0], ["mezo (metric objective)", 60.0]]
