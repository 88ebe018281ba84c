"""tuner: domain-adapt the Qwen3-Reranker cross-encoder with LoRA."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

# bitsandbytes (imported by peft/transformers whenever it is installed, QLoRA or not) warns at import on CPUs with
# AVX512-BF16 that an optional `kernels` package for its CPU 4-bit matmul is missing: advice for a path tuner never
# runs (QLoRA needs CUDA), printed into every `tuner train` and the demo. Its other warnings stay.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"
__all__ = ["DEFAULT_INSTRUCTION", "PromptEncoder", "Reranker", "__version__"]

if TYPE_CHECKING:
    from tuner.contract import DEFAULT_INSTRUCTION, PromptEncoder
    from tuner.scoring import Reranker


def __getattr__(name: str):
    # Lazy: `import tuner` (and the CLI's start-up) must not pay for importing torch and transformers.
    if name == "Reranker":
        from tuner.scoring import Reranker

        return Reranker
    if name in ("PromptEncoder", "DEFAULT_INSTRUCTION"):
        from tuner import contract

        return getattr(contract, name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
