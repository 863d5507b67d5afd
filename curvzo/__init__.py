"""curvzo: memory-efficient zeroth-order fine-tuning of LLMs, configured with Hydra."""

import os
import sys

__version__ = "0.1.0"

# A ZO step alternates torch's OpenMP work (the forward pass) with our own drawing threads (z for the
# next layer, the update). After each parallel region libgomp's idle threads spin for about 300k
# iterations by default, taking the cores the drawing threads need: measured on SmolLM2-135M, 2 cores,
# the exact probe's step went from 3.45 s to 3.09 s (bfloat16) and 4.2 s to 3.5 s (float32) with a
# short spin. libgomp reads this once, when torch loads it, so it only takes effect when curvzo is
# imported before torch (curvzo-run, `python -m curvzo...`); a value the user set always wins.
if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

# Hydra finds the config schema (curvzo/config_schema.py) in its ConfigStore: register it with the package,
# so every way in (curvzo-run, the compose API in tests and analysis) composes against it.
from curvzo.config_schema import register_schemas  # noqa: E402

register_schemas()
