"""`Reranker`: load any tuner export (or the original checkpoint) and score, rank, or batch-score pairs.

Imports torch, transformers and peft only: no training-only packages.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from tuner.contract import (
    DEFAULT_MAX_LENGTH,
    Document,
    PromptEncoder,
    load_tokenizer,
    prepare_tokenizer,
)
from tuner.head import collate, yes_no_logits

log = logging.getLogger(__name__)

TUNER_META = "tuner.json"
# Rows of a batch are grouped so that longest_row_tokens * rows <= batch_tokens (padding is bounded because
# the rows are length-sorted).
DEFAULT_BATCH_TOKENS = {"cuda": 32768, "cpu": 8192}
MAX_BATCH_ROWS = 256


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
    log.warning("no tokenizer next to %s; using the Qwen3 tokenizer shipped with tuner", model)
    return load_tokenizer()


class Reranker:
    """Score (query, document) pairs exactly as Qwen3-Reranker does, fast.

    Fast path: prompts are length-sorted and grouped into token-budget batches; only the final-norm hidden
    state of each row's last real token is projected on `w_yes − w_no` in fp32 (never the full vocabulary).
    Scores come back in input order.

    Args:
        model: a loaded causal-LM / seq-cls / PEFT model (see `from_pretrained`).
        tokenizer: its Qwen3 tokenizer.
        max_length: prompt token budget (documents are cut, never the query or the suffix).
        batch_tokens: padded tokens per forward pass.
        instruction: default instruction (else the contract's).
        safe_text: user text never becomes control tokens (see `PromptEncoder`).
        calibration: optional `{"temperature", "bias"}` applied to the logit before the sigmoid.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_tokens: int | None = None,
        instruction: str | None = None,
        safe_text: bool = True,
        calibration: dict[str, float] | None = None,
        show_progress: bool | None = None,
        name: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.encoder = PromptEncoder(tokenizer, max_length=max_length, safe_text=safe_text)
        self.device = next(model.parameters()).device
        self.batch_tokens = batch_tokens or DEFAULT_BATCH_TOKENS.get(self.device.type, 8192)
        self.instruction = instruction
        self.calibration = calibration
        self.show_progress = show_progress
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or "tuner-reranker"

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        adapter: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_tokens: int | None = None,
        instruction: str | None = None,
        safe_text: bool = True,
        attn_implementation: str | None = None,
        show_progress: bool | None = None,
    ) -> Reranker:
        """Load a base checkpoint, an adapter (on its base), a merged export or a seq-cls export.

        A default instruction and a calibration recorded in the export's `tuner.json` are picked up unless
        `instruction` is given.
        """
        model, tokenizer, meta = load_model(path_or_hub_id, adapter, device, dtype, attn_implementation)
        return cls(
            model,
            tokenizer,
            max_length=max_length,
            batch_tokens=batch_tokens,
            instruction=instruction if instruction is not None else meta.get("instruction"),
            safe_text=safe_text,
            calibration=meta.get("calibration"),
            show_progress=show_progress,
            name=str(adapter or path_or_hub_id),
        )

    # ----------------------------------------------------------------------------------------- scoring
    def _normalize(self, logit: float) -> float:
        if self.calibration:
            logit = logit / float(self.calibration.get("temperature", 1.0)) + float(self.calibration.get("bias", 0.0))
        return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))

    def encode(self, triples: Sequence[tuple[str, Document, str | None]]) -> list[list[int]]:
        """Prompt ids for (query, document, instruction) triples; `None` instruction → the default."""
        default = self.instruction
        return self.encoder.encode_many([(q, d, default if i is None else i) for q, d, i in triples])

    def batches(self, lengths: Sequence[int], batch_tokens: int | None = None) -> Iterable[list[int]]:
        """Index lists of length-sorted (longest first) token-budget batches."""
        budget = batch_tokens or self.batch_tokens
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batch: list[int] = []
        for i in order:
            # rows are sorted longest-first, so the batch's padded width is its first row's length
            width = lengths[batch[0]] if batch else lengths[i]
            if batch and (width * (len(batch) + 1) > budget or len(batch) >= MAX_BATCH_ROWS):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    @torch.inference_mode()
    def logits_for_ids(self, ids: Sequence[Sequence[int]], batch_tokens: int | None = None) -> list[float]:
        """Raw yes−no logits for already-encoded prompts, in input order."""
        out = [0.0] * len(ids)
        lengths = [len(x) for x in ids]
        show = self.show_progress if self.show_progress is not None else len(ids) >= 1024
        from tqdm.auto import tqdm

        with tqdm(total=len(ids), desc="scoring", unit="pair", disable=not show) as bar:
            for batch in self.batches(lengths, batch_tokens):
                inputs = collate([ids[i] for i in batch], self.tokenizer.pad_token_id, self.device)
                logits = yes_no_logits(self.model, **inputs, yes_id=self.encoder.yes_id, no_id=self.encoder.no_id)
                for i, value in zip(batch, logits.tolist(), strict=True):
                    out[i] = value
                bar.update(len(batch))
        return out

    def score_pairs(
        self,
        pairs: Sequence[Sequence[Any]],
        instruction: str | Sequence[str | None] | None = None,
        normalize: bool = True,
    ) -> list[float]:
        """Score many (query, document) or (query, document, instruction) pairs at once.

        Args:
            pairs: tuples; a third element overrides the instruction for that pair.
            instruction: one instruction for all pairs, or one per pair; `None` → the default.
            normalize: probabilities (sigmoid of the logit) if True, raw yes−no logits if False.
        """
        if isinstance(instruction, (list, tuple)) and len(instruction) != len(pairs):
            raise ValueError(f"{len(instruction)} instructions for {len(pairs)} pairs")
        triples = []
        for n, pair in enumerate(pairs):
            if len(pair) not in (2, 3):
                raise ValueError(f"pair {n}: expected (query, document[, instruction]), got {len(pair)} items")
            inst = (
                pair[2]
                if len(pair) == 3
                else (instruction[n] if isinstance(instruction, (list, tuple)) else instruction)
            )
            triples.append((pair[0], pair[1], inst))
        logits = self.logits_for_ids(self.encode(triples))
        return [self._normalize(x) for x in logits] if normalize else logits

    def score(
        self,
        query: str,
        documents: Sequence[Document],
        instruction: str | None = None,
        normalize: bool = True,
    ) -> list[float]:
        """Scores of `documents` for one query, in input order (probabilities, or logits if not normalize)."""
        return self.score_pairs([(query, d) for d in documents], instruction=instruction, normalize=normalize)

    def rank(
        self,
        query: str,
        documents: Sequence[Document],
        top_k: int | None = None,
        instruction: str | None = None,
    ) -> list[dict[str, Any]]:
        """Documents best first: `[{"index", "score", "document"}]`, cut to `top_k` if given."""
        scores = self.score(query, documents, instruction=instruction)
        order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
        if top_k is not None:
            order = order[: max(0, top_k)]
        return [{"index": i, "score": scores[i], "document": documents[i]} for i in order]
