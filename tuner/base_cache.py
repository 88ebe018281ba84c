"""Base-model evaluations shared by training runs (`eval.base_cache_dir`) and by `tuner eval --base-cache` runs (which
also keep the base's ranked run, for their paired tests): measured once, read back by later runs.

Every trial of a sweep, and every rerun of a recipe with another learning rate, evaluates the same base on the same
dev and out-of-domain sets before training: a BEIR top-100 set is tens of thousands of pairs through the 4B model,
per run, for figures that cannot differ. With a cache folder, the first run writes them and later runs read them.

A cache entry is used only when everything its numbers depend on is the same, kept in the entry and compared whole:
the base model's identity (a local folder: its config and tokenizer files and the names, sizes and modification
times of its weight files; a hub id: the commit of the cached snapshot), the run's evaluation inputs
(`tuner.train._eval_inputs`: the model section, eval section, instruction, seed, precision), the evaluated set itself
(queries, instructions, candidates in order, their texts, judgments, metrics), the library versions and the device.
A base that cannot be identified (a hub id with no local snapshot) is not cached. No library offers this:
transformers' and datasets' caches key downloads and preprocessing, not an evaluation of a model on a set.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from tuner.files import atomic_write

log = logging.getLogger("tuner.train")

_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
# what else decides the prompts' token ids: the tokenizer and chat template shipped with the base (a base without
# them uses tuner's own, which the tuner version in the key covers)
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
              "added_tokens.json", "chat_template.jinja", "chat_template.json")  # fmt: skip


def model_identity(base: str) -> dict[str, Any] | None:
    """What identifies the base's weights without reading them, or None when it cannot be told."""
    path = Path(base).expanduser()
    if path.is_dir():
        config = path / "config.json"
        files = sorted({f for pattern in _WEIGHTS for f in path.glob(pattern)})
        if not config.is_file() or not files:
            return None
        return {
            "folder": str(path.resolve()),
            "config": hashlib.sha256(config.read_bytes()).hexdigest(),
            "weights": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files],
            "tokenizer": {
                name: hashlib.sha256((path / name).read_bytes()).hexdigest()
                for name in _TOKENIZER
                if (path / name).is_file()
            },
        }
    try:  # a hub id: the commit of the snapshot transformers loaded from the local cache
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base, "config.json")
    except Exception:  # a malformed id, an unreadable cache: not cacheable, the run goes on
        return None
    if not isinstance(cached, str):
        return None
    return {"hub_id": base, "commit": Path(cached).parent.name}


def set_identity(evaluator) -> str:
    """A digest of everything an evaluator scores and how it scores it."""
    content = {
        "name": evaluator.name,
        "qids": evaluator.qids,
        "queries": evaluator.queries,
        "instruction": evaluator.instruction,
        "query_instructions": evaluator.query_instructions,
        "qrels": evaluator.qrels,
        "candidates": evaluator.candidates,
        "corpus": evaluator.corpus,
        "metrics": list(evaluator.metrics),
    }
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _environment() -> dict[str, str]:
    import peft
    import torch
    import transformers

    import tuner

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "tuner": tuner.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": device,
    }


class BaseCache:
    """`get(evaluator)` / `put(evaluator, metrics, per_query)` for one base model and one run's evaluation inputs;
    `variant` (get's and put's) adds inputs that differ between calls on one cache (`tuner eval`'s instruction)."""

    def __init__(
        self, folder: str | Path, base: str, inputs: dict[str, Any], what: str = "eval.base_cache_dir"
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.what = what  # how messages name the cache: the recipe field, or `tuner eval --base-cache`
        self.model = model_identity(base)
        if self.model is None:
            log.warning(
                "%s: the base %s cannot be identified without loading it (no local snapshot, or no weight files); its "
                "evaluations are measured and not cached",
                what,
                base,
            )
        self.inputs = inputs
        self.environment = _environment()

    def _key(self, evaluator, variant: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]] | None:
        if self.model is None:
            return None
        inputs = {**self.inputs, **(variant or {})}
        key = {"model": self.model, "inputs": inputs, "set": set_identity(evaluator), **self.environment}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode("utf-8")).hexdigest()
        return self.folder / f"base-{digest[:32]}.json", key

    def get(self, evaluator, variant: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """`{"metrics", "per_query", "written_by"}` of an earlier run's base on this set, or None."""
        found = self._key(evaluator, variant)
        if found is None or not found[0].is_file():
            return None
        path, key = found
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("%s: %s is unreadable (%s); measuring the base again", self.what, path, err)
            return None
        stored_key = json.loads(json.dumps(key, default=str))  # as JSON stores it (tuples become lists)
        if not isinstance(entry, dict) or entry.get("key") != stored_key or not isinstance(entry.get("metrics"), dict):
            return None
        return entry

    def put(
        self,
        evaluator,
        metrics: dict[str, float],
        per_query: dict[str, Any],
        written_by: str,
        variant: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        """Store the base's figures on `evaluator`'s set; `extra` (e.g. `tuner eval`'s ranked run) goes alongside."""
        found = self._key(evaluator, variant)
        if found is None:
            return
        path, key = found
        entry = {"key": key, "metrics": metrics, "per_query": per_query, "written_by": written_by, **extra}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(entry, default=str, ensure_ascii=False))
