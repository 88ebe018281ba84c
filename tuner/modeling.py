"""Load the base for training (dtype, attention kernel, optional 4-bit), attach LoRA or unfreeze everything.

The score itself is not defined here: training calls `tuner.head.yes_no_logits`, the same code `Reranker`
serves with. This module only prepares the network.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from tuner.loading import ModelNotFoundError, _check_reachable

log = logging.getLogger(__name__)

__all__ = ["DTYPES", "ModelNotFoundError", "attach_lora", "load_base", "trainable_summary"]

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_base(
    name_or_path: str | Path,
    dtype: str = "bfloat16",
    attn_implementation: str | None = "sdpa",
    load_in_4bit: bool = False,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: str = "bfloat16",
    gradient_checkpointing: bool = False,
    device: str | torch.device | None = None,
):
    """Load a Qwen3 causal LM (the reranker's base) for training.

    Args:
        name_or_path: hub id or local directory (checked first: a clear `ModelNotFoundError` if unreachable).
        dtype: weight dtype of the unquantized modules.
        attn_implementation: `sdpa`, `eager`, `flash_attention_2` ...; `None` = transformers' default.
        load_in_4bit: quantize linear layers to 4 bit with bitsandbytes (QLoRA) and prepare for k-bit training
            (norms and embeddings in fp32, input grads enabled).
        quant_type / double_quant / compute_dtype: bitsandbytes 4-bit options.
        gradient_checkpointing: recompute activations in backward (non-reentrant, which works with frozen
            inputs and LoRA).
        device: where to put the model; default: this process's CUDA device if any, else CPU.

    Returns:
        The model (train mode, `use_cache` off).
    """
    from transformers import AutoModelForCausalLM

    name = str(name_or_path)
    _check_reachable(name)
    if device is None:
        if torch.cuda.is_available():
            import os

            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        else:
            device = torch.device("cpu")
    kwargs: dict[str, Any] = {"dtype": _dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=_dtype(compute_dtype),
        )
        # 4-bit weights are placed at load time; one device per process (DDP), never "auto" sharding.
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    if not load_in_4bit:
        model.to(device)
    model.config.use_cache = False  # no KV cache in training (and checkpointing forbids it)
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # the embeddings are frozen under LoRA; checkpointed blocks still need an input that requires grad
        model.enable_input_require_grads()
    model.train()
    return model


def attach_lora(
    model,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | list[str] = "all-linear",
    use_rslora: bool = False,
    use_dora: bool = False,
):
    """Wrap `model` in a PEFT LoRA model; only the adapter trains (base weights frozen, bit-identical).

    `all-linear` adapts every linear layer of the decoder but not lm_head (tied to the embeddings in
    Qwen3-Reranker; its yes/no rows stay the contract's head).
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        use_rslora=use_rslora,
        use_dora=use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_summary(model) -> str:
    """`trainable 1.2M / 4.0B (0.03%)`."""
    total = trainable = 0
    for p in model.parameters():
        n = p.numel()
        # bitsandbytes packs two 4-bit values per byte element
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n

    def fmt(n: int) -> str:
        for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= size:
                return f"{n / size:.2f}{unit}"
        return str(n)

    return f"trainable {fmt(trainable)} / {fmt(total)} ({100 * trainable / max(total, 1):.3f}%)"
