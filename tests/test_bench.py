"""The benchmark: its reference step computes what our step computes, and its report's arithmetic.

Speed is never asserted here (this machine is noisy); `make bench` measures it.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from curvzo.bench.__main__ import main as bench_main
from curvzo.bench.gpu import CUDA_TEST_FILES
from curvzo.bench.gpu import main as gpu_main
from curvzo.bench.reference import ReferenceMeZO, reference_batch, reference_loss
from curvzo.bench.report import compare, to_markdown, with_ratios
from curvzo.example import Example
from curvzo.objectives import CandidateClassification
from curvzo.optim.mezo import MeZO
from tests.helpers import REPO_ROOT, tiny_model

EXAMPLES = [
    Example("The movie was wonderful. It was", (" terrible", " great"), 1),  # multi-token options
    Example("Answer:", ("A", "B", "C"), 2),  # single-token options: one shared sequence in our encoding
    Example("Bad. It was", (" terrible", " great"), 0),
]


@pytest.fixture(params=["tiny-opt", "tiny-llama"])
def name(request):
    return request.param


def test_reference_loss_equals_ours_with_more_sequences_and_full_logits(name):
    loaded = tiny_model(name)
    objective = CandidateClassification()
    ours = objective.training_batch(EXAMPLES, loaded.tokenizer, 512)
    ref = reference_batch(EXAMPLES, loaded.tokenizer, 512)
    assert ref.input_ids.shape[0] == 7 and ours.input_ids.shape[0] == 5  # the 3-option example shares one sequence
    with torch.inference_mode():
        torch.testing.assert_close(reference_loss(loaded.model, ref), objective.loss(loaded.model, ours),
                                   rtol=1e-5, atol=1e-6)


def test_reference_step_gives_our_losses_and_update(name):
    ours_model, ref_model = tiny_model(name).model, tiny_model(name).model  # same seed, same weights
    loaded = tiny_model(name)
    objective = CandidateClassification()
    ours_batch = objective.training_batch(EXAMPLES, loaded.tokenizer, 512)
    ref_batch = reference_batch(EXAMPLES, loaded.tokenizer, 512)
    ours = MeZO(ours_model.parameters(), lr=1e-2, eps=1e-3, seed=7)
    ref = ReferenceMeZO(ref_model.parameters(), lr=1e-2, eps=1e-3, seed=7)
    before = [p.detach().clone() for p in ours_model.parameters()]
    for _ in range(3):
        loss = ours.step(lambda: objective.loss(ours_model, ours_batch))
        ref_loss = ref.step(lambda: reference_loss(ref_model, ref_batch))
        assert ref_loss == pytest.approx(loss, rel=1e-5)
    # the projected gradient divides loss differences by 2ε, so float rounding in the loss reaches the
    # update amplified: compare the weights' change, which must agree to 0.1% of its size
    for a, b, start in zip(ours_model.parameters(), ref_model.parameters(), before):
        change = (a - start).abs().max()
        assert change > 1e-4  # every tensor took the update: the comparison is not vacuous
        assert (a - b).abs().max() <= 1e-3 * change
    assert ours.forward_passes == ref.forward_passes == 6


def _row(method, forward_s, peak, step_s=None, passes=None, dtype="float32", probe=None, state_gb=0.0, device="cpu"):
    row = {"method": method, "device": device, "dtype": dtype, "tokens": 100, "forward_s": forward_s,
           "peak_mem_gb": peak, "peak_mem_kind": "cpu_peak_rss", "probe": probe}
    if step_s is not None:
        row.update(step_s=step_s, forward_passes_per_step=passes, probe=probe or "exact", state_bytes=state_gb * 2**30)
    return row


def _markdown(rows: list[dict]) -> str:
    return to_markdown({"machine": {"cpu": "x", "cores": 2, "torch_threads": 2, "gpu": None, "torch": "t", "python": "p"},
                        "command": "c", "model": "m", "task": "sst2", "batch_size": 16, "repeats": 1, "steps": 1,
                        "rows": rows})


def test_ratios_and_targets_in_the_report():
    rows = with_ratios([{**_row("inference", 0.5, 1.0), "draw_s": 0.05}, _row("reference", 0.6, 1.5, 3.0, 2),
                        {**_row("mezo", 0.5, 1.05, 1.2, 2), "z_draws_per_step": 3.0},
                        _row("curvzo", 0.5, 1.2, 1.3, 2)])
    by = {r["method"]: r for r in rows}
    assert by["mezo"]["overhead"] == pytest.approx(1.2) and by["mezo"]["speedup_vs_reference"] == pytest.approx(2.5)
    # the floor: two passes of 0.5 s and three draws of 0.05 s, nothing else: 1.15 s, 1.15x the passes
    assert by["mezo"]["overhead_floor"] == pytest.approx(1.15) and "overhead_floor" not in by["curvzo"]
    assert by["mezo"]["memory_ratio"] == pytest.approx(1.05) and by["mezo"]["tokens_per_s"] == pytest.approx(200 / 1.2)
    assert by["inference"]["tokens_per_s"] == pytest.approx(200)
    text = _markdown(rows)
    assert ("| mezo | float32 | exact | 2 | 0.500 | 1.200 | 1.20 | 1.30 | 3 | 1.15 | 1.05 | 0.000 | 1.05 | 1.10 | yes | "
            "167 | 2.50 | — |") in text
    assert "one Gaussian draw over every weight took 0.050 s (float32 row)" in text
    assert "[float32] MeZO step vs reference step: 2.50x faster (goal >= 2.5x): met" in text
    assert "[float32] MeZO step / (2 x forward): 1.20 (goal <= 1.3 on cpu): met" in text
    assert "CurvZO step 1.300 s vs MeZO 1.200 s (goal: never slower): **not met**" in text


def test_ratios_use_the_inference_row_of_their_own_dtype_and_compare_with_float32():
    rows = with_ratios([_row("inference", 1.0, 1.0), _row("mezo", 1.0, 1.05, 3.0, 2),
                        _row("mezo", 1.0, 1.05, 3.3, 2, probe="inplace"),
                        _row("inference", 0.5, 0.6, dtype="bfloat16"), _row("mezo", 0.5, 0.63, 1.5, 2, dtype="bfloat16"),
                        _row("mezo", 0.5, 0.65, 2.0, 2, dtype="bfloat16", probe="inplace")])
    half = [r for r in rows if r["dtype"] == "bfloat16" and r["method"] == "mezo"]
    assert [r["memory_ratio"] for r in half] == pytest.approx([1.05, 0.65 / 0.6])
    assert [r["speedup_vs_float32"] for r in half] == pytest.approx([2.0, 3.3 / 2.0])  # same probe in float32
    text = _markdown(rows)
    assert "[bfloat16] MeZO step 2.00x faster than float32 (goal >= 1.8x on cpu): met" in text
    assert "[float32] MeZO exact probe 3.000 s vs in-place 3.300 s (goal: not slower): met" in text
    assert "[bfloat16] MeZO step / (2 x forward): 1.50 (goal <= 1.3 on cpu): **not met**" in text


def test_every_method_is_held_to_its_own_overhead_and_memory_goal():
    rows = with_ratios([_row("inference", 1.0, 2.0), _row("mezo", 1.0, 2.1, 2.5, 2), _row("loren", 1.0, 2.2, 14.0, 10),
                        _row("zo_adam", 1.0, 4.1, 2.5, 2, state_gb=2.0), _row("hizoo", 1.0, 4.5, 3.0, 3, state_gb=2.0),
                        _row("inference", 1.0, 2.0, device="cuda:0", dtype="bfloat16"),
                        _row("curvzo", 1.0, 2.2, 2.1, 2, device="cuda:0", dtype="bfloat16")])
    by = {(r["method"], r["dtype"]): r for r in rows}
    assert by["loren", "float32"]["overhead_goal"] == 1.5 and by["loren", "float32"]["meets_goals"]  # 14 / 10 = 1.4
    assert by["mezo", "float32"]["memory_goal"] == pytest.approx(1.1) and by["mezo", "float32"]["meets_goals"]
    # ZO-Adam's 2 GB of moments are its declared state: 4.1 <= 2 + 2 + 0.2, HiZOO's 4.5 is not
    assert by["zo_adam", "float32"]["memory_goal"] == pytest.approx(2.1) and by["zo_adam", "float32"]["meets_goals"]
    assert not by["hizoo", "float32"]["meets_goals"]
    gpu = by["curvzo", "bfloat16"]  # CUDA: 1.1 and 1.05 for MeZO and CurvZO
    assert (gpu["overhead_goal"], gpu["memory_goal"], gpu["meets_goals"]) == (1.1, 1.05, False)  # 2.2 / 2.0 = 1.1
    assert "Per-method goals (issue 21): 3 of 5 rows meet both" in _markdown(rows)


def test_compare_reports_each_rows_change_and_what_is_new_or_gone():
    base = {"command": "python -m curvzo.bench --out old", "rows": with_ratios([
        _row("inference", 1.0, 2.0), _row("mezo", 1.0, 2.1, 2.6, 2), _row("dizo", 1.0, 2.1, 3.0, 2)])}
    new = {"rows": with_ratios([_row("inference", 0.9, 2.0), _row("mezo", 1.0, 2.0, 2.08, 2),
                                _row("loren", 1.0, 2.5, 14.0, 10)])}
    text = compare(new, base)
    assert "Change against `python -m curvzo.bench --out old`" in text
    assert "| mezo | float32 | exact | 2.600 → 2.080 | 0.80 | 1.30 → 1.04 | 1.05 → 1.00 |" in text
    assert "| inference | float32 | — | 1.000 → 0.900 (forward) | 0.90 |" in text
    assert "| loren | float32 | exact | new row |" in text and "Only in the base run: dizo [float32, exact]" in text


def test_a_bad_compare_file_is_one_line_before_anything_is_measured(tmp_path, capsys):
    (tmp_path / "base.json").write_text("[1, 2]")
    with pytest.raises(SystemExit) as err:
        bench_main(["--out", str(tmp_path / "b"), "--compare", str(tmp_path / "base.json")])
    assert err.value.code == 2 and "--compare" in capsys.readouterr().err and not (tmp_path / "b").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without CUDA")
def test_the_gpu_bench_says_in_one_line_that_there_is_no_cuda(tmp_path, capsys):
    assert gpu_main(["--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bench-gpu needs a CUDA device") and not (tmp_path / "g").exists()


def test_the_gpu_bench_runs_every_test_file_that_has_cuda_cases():
    imports_devices = re.compile(r"^from tests\.helpers import .*\bDEVICES\b", re.MULTILINE)
    uses_devices = sorted(str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "tests").glob("test_*.py")
                          if imports_devices.search(path.read_text()))
    assert uses_devices and sorted(CUDA_TEST_FILES) == uses_devices


@pytest.mark.integration  # the whole bench end to end
def test_bench_writes_json_and_table(tmp_path, shared_data_dir):
    out = tmp_path / "bench"
    code = bench_main(["--out", str(out), "--model", "tiny-opt", "--methods", "reference,mezo,mezo:inplace", "--repeats",
                       "1", "--steps", "1", "--data-dir", str(shared_data_dir)])
    assert code == 0
    result = json.loads((out / "bench.json").read_text())
    assert [(r["method"], r["probe"]) for r in result["rows"]] == [("inference", None), ("reference", None),
                                                                    ("mezo", "exact"), ("mezo", "inplace")]
    mezo = result["rows"][2]
    assert mezo["forward_passes_per_step"] == 2 and mezo["batch_size"] == 16 and mezo["step_s"] > 0
    assert mezo["z_draws_per_step"] == 3 and result["rows"][0]["draw_s"] > 0  # MeZO: two probes and the update
    assert "z_draws_per_step" not in result["rows"][1]  # the reference draws with its own generator
    assert result["rows"][1]["sequences"] == 32 and mezo["sequences"] <= 32  # a sequence per candidate in the reference
    assert "| mezo | float32 | exact | 2 |" in (out / "bench.md").read_text()


@pytest.mark.integration  # the whole bench end to end
def test_the_in_process_bench_loads_once_and_keeps_a_failed_rows_neighbours(tmp_path, shared_data_dir, capsys):
    out = tmp_path / "b"
    code = bench_main(["--out", str(out), "--model", "tiny-opt", "--methods", "mezo,fo_adam,curvzo", "--repeats", "1",
                       "--steps", "1", "--data-dir", str(shared_data_dir), "--in-process"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: fo_adam: ValueError: ")
    result = json.loads((out / "bench.json").read_text())
    assert result["in_process"] is True and [r["method"] for r in result["rows"]] == ["inference", "mezo", "curvzo"]
    assert all(r["forward_passes_per_step"] == 2 and r["step_s"] > 0 for r in result["rows"][1:])
    assert "each dtype in one process" in (out / "bench.md").read_text()


@pytest.mark.integration  # the whole bench end to end
def test_a_failed_measurement_is_one_line_and_the_others_are_kept(tmp_path, shared_data_dir, capsys):
    out = tmp_path / "b"
    code = bench_main(["--out", str(out), "--model", "tiny-opt", "--methods", "fo_adam,curvzo_uniform", "--repeats",
                       "1", "--steps", "1", "--data-dir", str(shared_data_dir)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith("error: fo_adam: ") and "needs gradients" in errors[0]
    result = json.loads((out / "bench.json").read_text())
    # curvzo_uniform has no tuned lr: measured at a stand-in lr, since the lr does not change a step's cost
    assert [r["method"] for r in result["rows"]] == ["inference", "curvzo_uniform"] and len(result["failed"]) == 1
    assert "Failed measurements:\n- fo_adam: " in (out / "bench.md").read_text()


def test_dtypes_probes_and_method_probes_make_the_plan():
    from curvzo.bench.__main__ import parse_args

    args = parse_args(["--out", "x", "--dtypes", "float32,bfloat16", "--probes", "exact,inplace",
                       "--methods", "reference,mezo,curvzo:exact"])
    assert args.dtypes == ["float32", "bfloat16"]
    assert args.plan == [("reference", None), ("mezo", "exact"), ("mezo", "inplace"), ("curvzo", "exact")]
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--methods", "mezo:sideways"])
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--probes", "exactly"])


def test_side_by_side_arms_run_in_one_process(shared_data_dir, capsys):
    from curvzo.bench.ab import main as ab_main
    from curvzo.bench.ab import parse_arm

    assert parse_arm("mezo:inplace:directions=rademacher") == (
        "mezo", ["optimizer.probe=inplace", "optimizer.directions=rademacher"])
    assert ab_main(["--model", "tiny-opt", "--arms", "mezo:exact,mezo:inplace,curvzo", "--steps", "1",
                    "--data-dir", str(shared_data_dir)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["arm"] for r in result["rows"]] == ["mezo:exact", "mezo:inplace", "curvzo"]
    assert result["rows"][0]["vs_first"] == 1.0 and all(r["step_s"] > 0 for r in result["rows"])


@pytest.mark.integration  # make dry runs
def test_make_bench_measures_both_dtypes_and_bench_gpu_is_one_command():
    dry = subprocess.run(["make", "-n", "bench", "bench-gpu"], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=False)
    assert dry.returncode == 0, dry.stderr
    assert "-m curvzo.bench --out outputs/bench --data-dir ../shared/data --dtypes float32,bfloat16" in dry.stdout
    assert "-m curvzo.bench.gpu --out outputs/bench-gpu --data-dir ../shared/data" in dry.stdout
