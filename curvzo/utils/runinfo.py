"""Run metadata for summaries: git commit, package versions, peak memory."""

from __future__ import annotations

import importlib.metadata
import resource
import subprocess
import sys
from pathlib import Path

import torch

_PACKAGES = ("torch", "transformers", "datasets", "peft", "hydra-core", "omegaconf", "wandb")


def git_commit() -> str | None:
    """The commit of the curvzo checkout, with ``-dirty`` when it has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = sys.version.split()[0]
    return versions


def reset_peak_memory() -> None:
    """Start a job's peak-memory window: the CUDA counter, and on Linux the process's RSS high-water
    mark (writing 5 to /proc/self/clear_refs), so each job of a multirun reports its own peak."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rss_high_water_gb() -> float:
    """VmHWM of this process since the last reset (Linux), else the lifetime peak from getrusage."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def peak_memory() -> dict[str, float | str]:
    """Peak CUDA allocation when a GPU is used, else the process's peak resident set size."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return {"peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30, "peak_mem_kind": "cuda_allocated"}
    return {"peak_mem_gb": _rss_high_water_gb(), "peak_mem_kind": "cpu_peak_rss"}
