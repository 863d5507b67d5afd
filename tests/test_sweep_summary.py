"""The end-of-sweep report counts numbered and named job directories alike."""

import json

from curvzo.sweep_summary import sweep_report


def _job(root, name, status, error=None):
    job = root / name
    job.mkdir()
    (job / "status.json").write_text(json.dumps({"status": status, **({"error": error} if error else {})}))


def test_report_counts_numbered_jobs_in_numeric_order(tmp_path):
    for name in ("10", "2"):
        _job(tmp_path, name, "failed", error="boom")
    assert sweep_report(tmp_path) == ["sweep: 2 jobs, 2 failed", "  job 2 failed: boom", "  job 10 failed: boom",
                                      f"outputs: {tmp_path}"]


def test_report_counts_named_job_directories_and_skips_hidden_ones(tmp_path):
    # a custom hydra.sweep.subdir such as sweeps/equal_cost_smollm2's <task>_<optimizer>_seed<seed>
    _job(tmp_path, "sst2_mezo_seed0", "finished")
    _job(tmp_path, "sst2_curvzo_seed0", "interrupted")
    (tmp_path / ".hydra").mkdir()
    assert sweep_report(tmp_path) == ["sweep: 2 jobs, 1 finished, 1 interrupted", "  job sst2_curvzo_seed0 interrupted",
                                      f"outputs: {tmp_path}"]


def test_report_on_a_missing_directory(tmp_path):
    assert sweep_report(tmp_path / "nothing") == ["sweep: no jobs ran", f"outputs: {tmp_path / 'nothing'}"]
