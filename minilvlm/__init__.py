"""minilvlm: a small, fast trainer for vision-language models."""
from minilvlm import ops  # noqa: F401  (loads the native kernels or warns once)

__version__ = "0.1.0"
