"""curvzo: memory-efficient zeroth-order fine-tuning of LLMs, configured with Hydra."""

__version__ = "0.1.0"
