"""tuner: domain-adapt the Qwen3-Reranker cross-encoder with LoRA."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
