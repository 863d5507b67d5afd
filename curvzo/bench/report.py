"""The benchmark's derived ratios, the machine it ran on, and its markdown table with the targets."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# Issue 7's goals (reported, never asserted): SmolLM2-135M, SST-2, batch 16.
TARGET_SPEEDUP = 2.5  # our MeZO step vs the reference step
TARGET_OVERHEAD = {"cpu": 1.3, "cuda": 1.1}  # step time / (forward passes x forward time)
TARGET_MEMORY = 1.1  # peak training memory / peak inference memory


def machine_info() -> dict:
    """CPU model and cores, GPU name when present, torch version and threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def with_ratios(rows: list[dict]) -> list[dict]:
    """Add overhead (step / (passes x forward)), memory ratio, tokens/s and speed-up vs reference."""
    inference = next(r for r in rows if r["method"] == "inference")
    reference = next((r for r in rows if r["method"] == "reference"), None)
    out = []
    for row in rows:
        row = dict(row)
        row["memory_ratio"] = row["peak_mem_gb"] / inference["peak_mem_gb"]
        if "step_s" in row:
            passes = row["forward_passes_per_step"]
            row["overhead"] = row["step_s"] / (passes * row["forward_s"])
            row["tokens_per_s"] = row["tokens"] * passes / row["step_s"]
            if reference is not None:
                row["speedup_vs_reference"] = reference["step_s"] / row["step_s"]
        else:
            row["tokens_per_s"] = row["tokens"] / row["forward_s"]
        out.append(row)
    return out


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _targets(result: dict) -> list[str]:
    rows = {r["method"]: r for r in result["rows"]}
    mezo, curvzo = rows.get("mezo"), rows.get("curvzo")
    kind = "cuda" if rows["inference"]["device"].startswith("cuda") else "cpu"
    lines = []

    def check(ok: bool) -> str:
        return "met" if ok else "**not met**"

    if mezo and "speedup_vs_reference" in mezo:
        s = mezo["speedup_vs_reference"]
        lines.append(f"- MeZO step vs reference step: {s:.2f}x faster (goal >= {TARGET_SPEEDUP}x): {check(s >= TARGET_SPEEDUP)}")
    if mezo:
        o, goal = mezo["overhead"], TARGET_OVERHEAD[kind]
        lines.append(f"- MeZO step / (2 x forward): {o:.2f} (goal <= {goal} on {kind}): {check(o <= goal)}")
        m = mezo["memory_ratio"]
        lines.append(f"- MeZO peak training memory / inference: {m:.2f} (goal <= {TARGET_MEMORY}): {check(m <= TARGET_MEMORY)}")
    if mezo and curvzo:
        c, s = curvzo["step_s"], mezo["step_s"]
        lines.append(f"- CurvZO step {c:.3f} s vs MeZO {s:.3f} s (goal: never slower): {check(c <= s)}")
    return lines


def to_markdown(result: dict) -> str:
    """The table, the machine, the command and the targets."""
    machine = result["machine"]
    where = machine["gpu"] or f"{machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads"
    header = ["method", "passes/step", "forward s", "step s", "step / (passes x forward)", "peak GB",
              "peak / inference", "tokens/s", "vs reference"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for r in result["rows"]:
        lines.append("| " + " | ".join([
            r["method"],
            _fmt(r.get("forward_passes_per_step"), ".2g"),
            _fmt(r["forward_s"], ".3f"),
            _fmt(r.get("step_s"), ".3f"),
            _fmt(r.get("overhead"), ".2f"),
            _fmt(r["peak_mem_gb"], ".2f"),
            _fmt(r["memory_ratio"], ".2f"),
            _fmt(r["tokens_per_s"], ".0f"),
            _fmt(r.get("speedup_vs_reference"), ".2f"),
        ]) + " |")
    first = result["rows"][0]
    caption = (f"Benchmark: {result['model']} ({first['dtype']}, {first['device']}), {result['task']}, batch "
               f"{result['batch_size']} ({first['tokens']} tokens), median of {result['steps']} steps and "
               f"{result['repeats']} forward passes after a warm-up; peak memory: {first['peak_mem_kind']} "
               f"after loading, one process per row.")
    parts = [caption, "\n".join(lines), f"Machine: {where}; torch {machine['torch']}, Python {machine['python']}.",
             f"Command: `{result['command']}`"]
    if result.get("failed"):
        parts.append("Failed measurements:\n" + "\n".join(f"- {line}" for line in result["failed"]))
    targets = _targets(result)
    if targets:
        parts.append("Targets:\n" + "\n".join(targets))
    return "\n\n".join(parts) + "\n"
