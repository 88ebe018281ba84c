"""Loading a reranker checkpoint in any of tuner's formats: base, PEFT adapter, merged, 1-label seq-cls.

Imports torch, transformers and peft only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from tuner.contract import load_tokenizer, prepare_tokenizer

log = logging.getLogger(__name__)

TUNER_META = "tuner.json"


class ModelNotFoundError(OSError):
    """A model or adapter path that is neither a local directory nor fetchable from the hub."""


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def _check_reachable(name: str, what: str = "model") -> None:
    """Raise one clear error for a path that does not exist locally and that the hub cannot provide."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"{what} directory {str(path)!r} has neither config.json nor adapter_config.json")
        return
    if _looks_local(name):
        raise ModelNotFoundError(f"{what} {name!r} not found: no such directory")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # one clear error below instead of a page of retry warnings
        hf_hub_download(name, "config.json" if what == "model" else "adapter_config.json")
    except Exception as err:  # every hub failure becomes the same user-facing error
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ModelNotFoundError(
            f"{what} {name!r} not found: it is not a local directory and the Hugging Face Hub could not "
            f"provide it ({type(err).__name__}: {reason})"
        ) from None


def read_meta(path: str | Path | None) -> dict[str, Any]:
    """The `tuner.json` of an export or run directory, or `{}`."""
    if path is None:
        return {}
    file = Path(path) / TUNER_META
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: invalid JSON ({err})") from None


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "float32": torch.float32,
        "fp32": torch.float32,
    }
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def load_model(
    model: str | Path,
    adapter: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
):
    """Load a causal-LM or 1-label seq-cls Qwen3 reranker, with an optional PEFT adapter, for inference.

    `model` may also be an adapter directory; its base comes from `tuner.json` or `adapter_config.json`.

    Returns:
        (model, tokenizer, meta): the eval-mode model on `device`, a prepared tokenizer, the merged
        `tuner.json` metadata of the model and adapter directories.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    model, adapter = str(model), (str(adapter) if adapter is not None else None)
    _check_reachable(model)
    if adapter is None and (Path(model) / "adapter_config.json").is_file():
        adapter = model
        meta = read_meta(adapter)
        cfg = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
        model = meta.get("base_model") or cfg.get("base_model_name_or_path")
        if not model:
            raise ModelNotFoundError(f"adapter {adapter!r} names no base model; pass the base explicitly")
        _check_reachable(model)
    if adapter is not None:
        _check_reachable(adapter, "adapter")

    dev = torch.device(device) if device is not None else _default_device()
    torch_dtype = _resolve_dtype(dtype, dev)
    config = AutoConfig.from_pretrained(model)
    archs = getattr(config, "architectures", None) or []
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if any(a.endswith("ForSequenceClassification") for a in archs):
        if getattr(config, "num_labels", 1) != 1:
            raise ValueError(
                f"{model}: sequence-classification model has num_labels={config.num_labels}; tuner needs 1 "
                "(score.weight = w_yes − w_no)"
            )
        net = AutoModelForSequenceClassification.from_pretrained(model, **kwargs)
    else:
        net = AutoModelForCausalLM.from_pretrained(model, **kwargs)
    if adapter is not None:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapter)
    net.to(dev).eval()

    tokenizer = _load_tokenizer_for(model, adapter)
    meta = {**read_meta(model), **read_meta(adapter)}
    return net, tokenizer, meta


def _load_tokenizer_for(model: str, adapter: str | None):
    from transformers import AutoTokenizer

    for source in (adapter, model):
        if source is None:
            continue
        local = Path(source)
        if local.is_dir() and not any((local / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            continue
        try:
            return prepare_tokenizer(AutoTokenizer.from_pretrained(source))
        except (OSError, ValueError):
            continue
    # Qwen3 checkpoints share one tokenizer; tuner ships it, so a weights-only folder still loads.
    log.info("no tokenizer next to %s; using the Qwen3 tokenizer shipped with tuner", model)
    return load_tokenizer()
