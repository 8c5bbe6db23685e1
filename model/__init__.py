"""The Sugar model: interleaved samples, prompts, backbone, slice embeddings, kernels, teachers.

This layer imports nothing from index/, server/, training/ or the CLI.
"""

from .config import PromptFormat, SugarConfig, TinyConfig
from .sample import Sample, SampleError, SampleLimits, Slice

__all__ = [
    "PromptFormat",
    "Sample",
    "SampleError",
    "SampleLimits",
    "Slice",
    "SugarConfig",
    "TinyConfig",
]
