"""Load the base for training (dtype, attention kernel, optional 4-bit), attach LoRA or unfreeze everything.

The score itself is not defined here: training calls `tuner.head.yes_no_logits`, the same code `Reranker`
serves with. This module only prepares the network.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from tuner.loading import ModelNotFoundError, _check_reachable, peft_quietly

log = logging.getLogger(__name__)

__all__ = [
    "DTYPES",
    "ModelNotFoundError",
    "apply_liger",
    "attach_lora",
    "compile_layers",
    "evenly_spaced",
    "load_base",
    "require_liger",
    "set_checkpoint_ratio",
    "trainable_summary",
]

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
    checkpoint_ratio: float = 1.0,
    liger_kernel: bool = False,
    device: str | torch.device | None = None,
):
    """Load a Qwen3 causal LM (the reranker's base) for training.

    Args:
        name_or_path: hub id or local directory (checked first: a clear `ModelNotFoundError` if unreachable).
        dtype: weight dtype of the unquantized modules.
        attn_implementation: `sdpa`, `eager`, `flash_attention_2` ...; `None` = transformers' default.
        load_in_4bit: quantize linear layers to 4 bit with bitsandbytes (QLoRA). Everything else stays in
            `dtype`: unlike peft's `prepare_model_for_kbit_training` no frozen weight is copied to fp32 (the
            tied 151669 x 2560 embedding alone would take 0.8 GiB more in the 4B model); RMSNorm computes in fp32
            inside Qwen3's own code, and the head is projected in fp32 by `tuner.head`.
        quant_type / double_quant / compute_dtype: bitsandbytes 4-bit options.
        gradient_checkpointing: recompute activations in backward (non-reentrant, which works with frozen
            inputs and LoRA).
        checkpoint_ratio: share of the decoder layers that are checkpointed (`set_checkpoint_ratio`).
        liger_kernel: patch RMSNorm, SwiGLU and RoPE with liger-kernel's fused Triton kernels (`apply_liger`).
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
        for param in model.parameters():  # a 4-bit base only trains adapters (what peft's k-bit prep does, minus
            param.requires_grad_(False)  # its fp32 upcast of every non-4-bit weight: see the docstring)
    if liger_kernel:
        apply_liger(model)
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # the name from transformers 5.2x on
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # the embeddings are frozen under LoRA; checkpointed blocks still need an input that requires grad
        model.enable_input_require_grads()
        set_checkpoint_ratio(model, checkpoint_ratio)
    model.train()
    return model


def set_checkpoint_ratio(model, ratio: float) -> list[int]:
    """Checkpoint only an evenly spaced share of the decoder layers (selective activation checkpointing).

    transformers checkpoints every layer once checkpointing is enabled; each layer reads its own
    `gradient_checkpointing` flag, so switching it off on some layers keeps their activations (faster backward,
    more memory). Recent transformers set the same flags for `every_n_layers`; setting them here works on every
    transformers 5.x and allows any share, not only 1/n. Returns the indices of the checkpointed layers.
    """
    from tuner.head import unwrap_backbone

    layers = unwrap_backbone(model).layers
    chosen = evenly_spaced(len(layers), ratio)
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i in chosen
    return chosen


def evenly_spaced(n: int, ratio: float) -> list[int]:
    """`round(ratio * n)` (at least 1) of the indices `0..n-1`, evenly spaced (ratio 0.5 of 36: 1, 3, 5, ..., 35)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"checkpoint_ratio must be in (0, 1], got {ratio}")
    keep = max(1, round(ratio * n))
    # index i is chosen when floor((i + 1) * keep / n) steps up
    return [i for i in range(n) if ((i + 1) * keep) // n > (i * keep) // n]


def apply_liger(model) -> None:
    """Swap RMSNorm, SwiGLU and RoPE of a Qwen3 model for liger-kernel's fused Triton kernels, in place.

    Its fused linear cross-entropy is not used: tuner never computes full-vocabulary logits (the head is two
    rows of lm_head on the last token), so there is nothing for it to fuse.
    """
    require_liger()
    from liger_kernel.transformers import apply_liger_kernel_to_qwen3

    apply_liger_kernel_to_qwen3(
        rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model
    )


def require_liger() -> None:
    """Raise a `ValueError` naming `model.liger_kernel` unless liger-kernel can run here (CUDA, installed)."""
    if not torch.cuda.is_available():
        raise ValueError("model.liger_kernel: liger-kernel's Triton kernels need a CUDA GPU (none is visible)")
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError as err:
        hint = "pip install liger-kernel"
        raise ValueError(f"model.liger_kernel: liger-kernel is not installed ({hint}): {err}") from None


def compile_layers(model, dynamic: bool = True) -> int:
    """`torch.compile` every decoder layer in place (regional compilation); returns how many.

    In place (`nn.Module.compile`) rather than `accelerate.utils.compile_regions`, which wraps each layer in an
    `OptimizedModule` and so renames every parameter (`..._orig_mod...`): adapter checkpoints would no longer load.
    One compiled layer serves all of them (same code, same guards), and `dynamic=True` avoids a recompile for
    every new sequence length. Gradient checkpointing is traced inside the compiled region. A layer compiled already
    is left as it is, so a second `Reranker(compile=True)` on the same model starts no second compile.
    """
    from tuner.head import unwrap_backbone

    layers = unwrap_backbone(model).layers
    for layer in layers:
        if getattr(layer, "_compiled_call_impl", None) is None:  # what `nn.Module.compile` sets
            layer.compile(dynamic=dynamic)
    return len(layers)


def uncompile_layers(model) -> int:
    """Undo `compile_layers`: the decoder layers run eagerly again (dynamo keeps its cache, so compiling them again
    is quick); returns how many were compiled. Lets a benchmark time eager paths after a compiled one."""
    from tuner.head import unwrap_backbone

    undone = 0
    for layer in unwrap_backbone(model).layers:
        if getattr(layer, "_compiled_call_impl", None) is not None:
            layer._compiled_call_impl = None  # what `nn.Module.compile` set: __call__ goes back to _call_impl
            undone += 1
    return undone


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

    if isinstance(target_modules, (list, tuple)):
        # peft refuses a list only when no name matches: a typo beside a good name ([q_proj, v_prj]) would train
        # the good one alone without a word. Matched as peft matches a list: the full name or its last parts.
        names = [name for name, _ in model.named_modules()]
        unmatched = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
        if unmatched:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise ValueError(
                f"Target modules {unmatched} not found in the base model (its linear layers: {', '.join(linear)})"
            )
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
    with peft_quietly():
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
