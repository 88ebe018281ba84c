"""`Reranker`: load any tuner export (or the original checkpoint) and score, rank, or batch-score pairs.

Imports torch, transformers and peft only: no training-only packages.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tuner.contract import (
    DEFAULT_INSTRUCTION,
    DEFAULT_MAX_LENGTH,
    Document,
    PromptEncoder,
    document_text,
    past_positions,
    prepare_tokenizer,
    score_from_logit,
)
from tuner.head import collate, head_vector, project, to_device, unwrap_backbone, yes_no_logits
from tuner.loading import TUNER_META, ModelNotFoundError, _check_reachable, load_model, read_meta
from tuner.modeling import compile_layers
from tuner.packing import first_fit_rows, packed_last_hidden, rows_batch

__all__ = ["TUNER_META", "ModelNotFoundError", "Reranker", "_check_reachable", "load_model", "read_meta"]

log = logging.getLogger(__name__)

# Rows of a batch are grouped so that longest_row_tokens * rows <= batch_tokens (padding is bounded because
# the rows are length-sorted).
DEFAULT_BATCH_TOKENS = {"cuda": 32768, "cpu": 8192}
MAX_BATCH_ROWS = 256
# Prefix reuse ("auto") only when the shared head is long enough to be worth a separate forward pass.
MIN_SHARED_PREFIX = 32
# Packed rows hold at most this many tokens (a longer prompt gets a row of its own length).
PACKED_ROW_TOKENS = 2048


class NonFiniteScoresError(ValueError):
    """The model gave NaN or infinite logits: its weights hold them, or its activations overflowed. `index`: the
    first one's place in the scored list (for a caller that names it its own way)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def check_finite(logits: Sequence[float], name: Callable[[int], str] = lambda i: f"pair {i}") -> None:
    """Refuse NaN / infinite logits, naming how many and the first (`name(i)`: its place in the caller's input).

    A NaN has no order: a ranking, a metric or a JSON response built on it would be wrong without a word (JSON has
    no NaN; the server's encoder refused it with a bare 500)."""
    bad = [i for i, x in enumerate(logits) if not math.isfinite(x)]
    if bad:
        raise NonFiniteScoresError(
            f"{len(bad)} of {len(logits)} scores are not finite ({name(bad[0])}: {logits[bad[0]]}): the model's "
            "weights hold NaN/inf, or its activations overflowed, as float16 can on this model; score in bfloat16 "
            "or float32 (dtype=..., --dtype)",
            index=bad[0],
        )


@functools.cache
def _cache_kwarg() -> str:
    """transformers renamed `past_key_values` to `cache` in 5.2x; the GPU machine's 5.17 has the old name."""
    import inspect

    from transformers.models.qwen3.modeling_qwen3 import Qwen3Model

    return "cache" if "cache" in inspect.signature(Qwen3Model.forward).parameters else "past_key_values"


@functools.cache
def _prefix_cache_type() -> type:
    """transformers' `DynamicCache` with its `update` left out of `torch.compile`.

    With compiled decoder layers, tracing the cache's update specialises the layer on its `layer_idx` and on the
    cache's fill state, so a 36-layer model would compile the layer once per layer and state, hit dynamo's recompile
    limit and run the rest eagerly. Run eagerly, the update is one graph break per layer and the layer's graphs are
    shared by all layers (see `_layer_idx_unspecialized`).
    """
    from transformers import DynamicCache

    class PrefixCache(DynamicCache):
        @torch.compiler.disable
        def update(self, *args, **kwargs):
            return super().update(*args, **kwargs)

    return PrefixCache


def _layer_idx_unspecialized():
    """Dynamo setting for the shared-prefix forwards: a module's int attributes (the `layer_idx` that attention
    hands to the cache) are not baked into the graph, so one compiled layer serves every layer."""
    import contextlib

    config = torch._dynamo.config
    if not hasattr(config, "allow_unspec_int_on_nn_module"):
        return contextlib.nullcontext()
    return config.patch(allow_unspec_int_on_nn_module=True)


def _in_input_order(n: int, parts: Sequence[tuple[Sequence[int], torch.Tensor]]) -> list[float]:
    """`[(indices, logits on the device)]` of every batch → one list of n floats in input order.

    The batches' logits stay on the device until all of them are queued, and come back in one copy: a
    `.tolist()` per batch would stop the CPU until that batch's forward ends, instead of building and launching
    the next one while the GPU runs.
    """
    out = [0.0] * n
    if parts:
        values = torch.cat([v.reshape(-1).float() for _, v in parts]).tolist()
        order = [i for idx, _ in parts for i in idx]
        for i, value in zip(order, values, strict=True):
            out[i] = value
    return out


def prefix_groups(keys: Sequence[Hashable | None]) -> list[list[int]]:
    """`logits_for_ids`'s `groups` from one key per prompt (e.g. its query and instruction): the indices of each
    key, in first-seen order; a `None` key puts its prompt in no group."""
    by_key: dict[Hashable, list[int]] = {}
    for n, key in enumerate(keys):
        if key is not None:
            by_key.setdefault(key, []).append(n)
    return list(by_key.values())


def _shared_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix, leaving at least one own token to every sequence."""
    first = seqs[0]
    n = min(len(x) for x in seqs) - 1
    for seq in seqs[1:]:
        k = 0
        while k < n and seq[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


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
        prefix_reuse: compute the shared head of a query's prompts (system text, instruction, query) once and
            reuse its KV cache for that query's documents ("auto": when a query has at least 2 documents and the
            shared head is at least `MIN_SHARED_PREFIX` tokens).
        packing: put several prompts in one row (position ids restart, no padding); pays with an attention
            kernel that skips masked blocks (flex_attention on GPU), not with sdpa on CPU.
        compile: `torch.compile(dynamic=True)` the model's decoder layers in place (`compile_layers`; the first
            batches pay the warm-up; GPU serving).
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
        prefix_reuse: bool | str = False,
        packing: bool = False,
        compile: bool = False,
    ) -> None:
        self.model = model
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.encoder = PromptEncoder(tokenizer, max_length=max_length, safe_text=safe_text)
        too_long = past_positions(max_length, getattr(model, "config", None))
        if too_long:  # vLLM refuses such a --max-model-len; here it scored silently
            raise ValueError(too_long)
        self.device = next(model.parameters()).device
        if batch_tokens is not None:
            _check_count(batch_tokens, "batch_tokens")  # 0 used to mean the default, -5 one row per batch
        self.batch_tokens = batch_tokens or DEFAULT_BATCH_TOKENS.get(self.device.type, 8192)
        self.instruction = instruction
        self.calibration = calibration
        self._calibration_warned: set[str] = set()
        fitted_length = (calibration or {}).get("max_length")
        if fitted_length is not None and fitted_length != max_length:
            message = self._calibration_message(f"max_length {fitted_length}, not this reranker's {max_length}")
            warnings.warn(message, UserWarning, stacklevel=2)
        self.show_progress = show_progress
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or "tuner-reranker"
        if prefix_reuse not in (True, False, "auto"):
            raise ValueError(f"prefix_reuse must be True, False or 'auto', got {prefix_reuse!r}")
        self.prefix_reuse = prefix_reuse
        self.packing = packing
        self._backbone = unwrap_backbone(model)
        if compile:
            # Regional and in place: every path (padded batches through `tuner.head`, packed rows, shared-prefix
            # KV) runs through the decoder layers, and one compiled layer serves all of them, so the warm-up is one
            # layer's compile. (A `torch.compile` wrapper around the backbone was never called by the padded path,
            # which reaches the layers through the model itself.)
            compile_layers(model)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        adapter: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        batch_tokens: int | None = None,
        instruction: str | None = None,
        safe_text: bool = True,
        attn_implementation: str | None = None,
        show_progress: bool | None = None,
        prefix_reuse: bool | str = False,
        packing: bool = False,
        compile: bool = False,
        calibrated: bool = True,
    ) -> Reranker:
        """Load a base checkpoint, an adapter (on its base), a merged export or a seq-cls export.

        What the directory's `tuner.json` records is picked up: its default instruction (unless `instruction` is
        given), its `max_length` (unless `max_length` is given; else 8192), so that tuner scores an export with
        the budget its model card gives sentence-transformers and vLLM, and its calibration (from
        `tuner calibrate`) unless `calibrated=False`. Calibrated probabilities are tuner's own: other engines
        return sigmoid(logit); raw logits are the same everywhere.
        """
        if max_length is not None:
            _check_count(max_length, "max_length")  # checked before the model loads; 0 used to mean the default
        model, tokenizer, meta = load_model(path_or_hub_id, adapter, device, dtype, attn_implementation)
        return cls(
            model,
            tokenizer,
            max_length=max_length if max_length is not None else int(meta.get("max_length") or DEFAULT_MAX_LENGTH),
            batch_tokens=batch_tokens,
            instruction=instruction if instruction is not None else meta.get("instruction"),
            safe_text=safe_text,
            calibration=meta.get("calibration") if calibrated else None,
            show_progress=show_progress,
            name=str(adapter or path_or_hub_id),
            prefix_reuse=prefix_reuse,
            packing=packing,
            compile=compile,
        )

    @property
    def max_length(self) -> int:
        """Prompt token budget (documents are cut to fit)."""
        return self.encoder.max_length

    # ----------------------------------------------------------------------------------------- scoring
    def _normalize(self, logit: float) -> float:
        if self.calibration:
            logit = logit / float(self.calibration.get("temperature", 1.0)) + float(self.calibration.get("bias", 0.0))
        return score_from_logit(logit)

    def encode(
        self,
        triples: Sequence[tuple[str, Document, str | None]],
        max_length: int | None = None,
        max_document_tokens: int | None = None,
    ) -> list[list[int]]:
        """Prompt ids for (query, document, instruction) triples; `None` instruction → the default.

        `max_length` (at most the instance's) and `max_document_tokens` cut the documents of these prompts
        further (a request's own caps, see `PromptEncoder.encode_many`)."""
        default = self.instruction
        return self.encoder.encode_many(
            [(q, d, default if i is None else i) for q, d, i in triples],
            max_length=max_length,
            max_document_tokens=max_document_tokens,
        )

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
    def logits_for_ids(
        self,
        ids: Sequence[Sequence[int]],
        batch_tokens: int | None = None,
        groups: Sequence[Sequence[int]] | None = None,
        on_batch: Callable[[Sequence[int]], None] | None = None,
    ) -> list[float]:
        """Raw yes−no logits for already-encoded prompts, in input order.

        Args:
            ids: prompt token ids (see `encode`).
            batch_tokens: token budget per forward pass (default: the instance's).
            groups: index lists of prompts that share a query and instruction (candidates for prefix reuse;
                ignored unless `prefix_reuse` is on). Prompts in no group are scored on the other paths.
            on_batch: called with the input indices of each forward pass once it is queued (the server's
                batch-size metrics); a shared prefix's own forward is not counted.
        """
        show = self.show_progress if self.show_progress is not None else len(ids) >= 1024
        from tqdm.auto import tqdm

        parts: list[tuple[Sequence[int], torch.Tensor]] = []  # (input indices, their logits on the device)

        def add(indices: Sequence[int], logits: torch.Tensor) -> None:
            parts.append((indices, logits))
            if on_batch is not None:
                on_batch(indices)

        with tqdm(total=len(ids), desc="scoring", unit="pair", disable=not show) as bar:
            rest = list(range(len(ids)))
            if self.prefix_reuse and groups:
                done: set[int] = set()
                for group in groups:
                    if not group:
                        continue
                    shared = _shared_prefix([ids[i] for i in group])
                    if self.prefix_reuse == "auto" and (len(group) < 2 or shared < MIN_SHARED_PREFIX):
                        continue
                    if shared == 0:
                        continue
                    rests = [ids[i][shared:] for i in group]
                    for batch, logits in self._logits_shared_prefix(ids[group[0]][:shared], rests, batch_tokens):
                        add([group[k] for k in batch], logits)
                    done.update(group)
                    bar.update(len(group))
                rest = [i for i in rest if i not in done]
            run = self._logits_packed if self.packing else self._logits_padded
            for batch, logits in run([ids[i] for i in rest], batch_tokens, bar):
                add([rest[k] for k in batch], logits)
            return _in_input_order(len(ids), parts)  # the one wait for the device

    def _logits_padded(self, ids, batch_tokens, bar) -> Iterable[tuple[list[int], torch.Tensor]]:
        """Length-sorted, right-padded token-budget batches: `(indices into ids, logits on the device)` each."""
        for batch in self.batches([len(x) for x in ids], batch_tokens):
            inputs = collate([ids[i] for i in batch], self.tokenizer.pad_token_id, self.device)
            yield batch, yes_no_logits(self.model, **inputs, yes_id=self.encoder.yes_id, no_id=self.encoder.no_id)
            bar.update(len(batch))

    def _head(self) -> torch.Tensor:
        return head_vector(self.model, self.encoder.yes_id, self.encoder.no_id).to(self.device)

    def _logits_packed(self, ids, batch_tokens, bar) -> Iterable[tuple[list[int], torch.Tensor]]:
        """Prompts packed into rows: position ids restart at each prompt and no attention mask is passed, which
        transformers reads as packed sequences (block-diagonal causal attention). The row tail is filled with a
        pad segment that starts at position 0, so it is a sequence of its own that nothing attends to.
        Yields `(indices into ids, logits on the device)` per forward pass."""
        budget = batch_tokens or self.batch_tokens
        if not ids:
            return
        lengths = [len(x) for x in ids]
        # row capacity: PACKED_ROW_TOKENS (within the budget), or the longest prompt if that is longer
        row_len = max(max(lengths), min(PACKED_ROW_TOKENS, budget))
        rows = first_fit_rows(lengths, row_len)
        w = self._head()
        per_batch = max(1, budget // max(row_len, 1))
        for start in range(0, len(rows), per_batch):
            chunk = rows[start : start + per_batch]
            members = [i for row in chunk for i in row]
            local, k = [], 0  # the chunk's rows as indices into its own prompts
            for row in chunk:
                local.append(range(k, k + len(row)))
                k += len(row)
            batch = rows_batch([ids[i] for i in members], local, self.tokenizer.pad_token_id, self.device)
            yield members, project(packed_last_hidden(self.model, **batch), w)
            bar.update(len(members))

    def _logits_shared_prefix(
        self, prefix: Sequence[int], rests: list[Sequence[int]], batch_tokens
    ) -> Iterable[tuple[list[int], torch.Tensor]]:
        """Run the shared prefix once, then each batch of remainders on a copy of its KV cache.

        Yields `(indices into rests, logits on the device)` per batch."""
        cache_type = _prefix_cache_type()
        backbone = self._backbone
        config = backbone.config
        (prefix_ids,) = to_device([torch.as_tensor(prefix, dtype=torch.long).reshape(1, -1)], self.device)
        with _layer_idx_unspecialized():
            head = backbone(input_ids=prefix_ids, **{_cache_kwarg(): cache_type(config=config)}, use_cache=True)
        cache = getattr(head, "cache", None) or head.past_key_values
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        n_prefix = len(prefix)
        w = self._head()
        for batch in self.batches([len(x) for x in rests], batch_tokens):
            inputs = collate([rests[i] for i in batch], self.tokenizer.pad_token_id, self.device)
            rows, width = inputs["input_ids"].shape
            batch_cache = cache_type(config=config)
            for layer, (k, v) in enumerate(kv):
                batch_cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), layer)
            ones = torch.ones((rows, n_prefix), dtype=inputs["attention_mask"].dtype, device=self.device)
            positions = (torch.arange(width, device=self.device) + n_prefix).expand(rows, width)
            with _layer_idx_unspecialized():
                hidden = backbone(
                    input_ids=inputs["input_ids"],
                    attention_mask=torch.cat([ones, inputs["attention_mask"]], dim=1),
                    position_ids=positions,
                    use_cache=True,
                    **{_cache_kwarg(): batch_cache},
                ).last_hidden_state
            yield batch, project(hidden[torch.arange(rows, device=self.device), inputs["last_index"]], w)

    def score_pairs(
        self,
        pairs: Sequence[Sequence[Any]],
        instruction: str | Sequence[str | None] | None = None,
        normalize: bool = True,
    ) -> list[float]:
        """Score many (query, document) or (query, document, instruction) pairs at once.

        Args:
            pairs: tuples; a third element (a string) overrides the instruction for that pair; `None` there is the
                same as no third element.
            instruction: one instruction for all pairs, or one per pair; `None` → the model's default (its
                tuner.json's, else the contract's). `""` means no instruction at all.
            normalize: probabilities (sigmoid of the logit) if True, raw yes−no logits if False.
        """
        if isinstance(pairs, (str, bytes, Mapping)) or pairs is None:
            raise TypeError(f"pairs must be a list of pairs [(query, document), ...], got {type(pairs).__name__}")
        # rows of a numpy array or a pandas frame's .values are pairs too (np.str_ is a str)
        pairs = [pair.tolist() if hasattr(pair, "tolist") else pair for pair in pairs]
        if isinstance(instruction, (list, tuple)) and len(instruction) != len(pairs):
            raise ValueError(f"{len(instruction)} instructions for {len(pairs)} pairs")
        triples = []
        for n, pair in enumerate(pairs):
            # a str is a sequence too: "qd" would otherwise unpack as query "q", document "d"
            if isinstance(pair, (str, bytes, Mapping)) or not isinstance(pair, Sequence):
                raise TypeError(
                    f"pair {n}: expected a (query, document[, instruction]) tuple, "
                    f"got {type(pair).__name__} {pair!r:.60}"
                )
            if len(pair) not in (2, 3):
                raise ValueError(f"pair {n}: expected (query, document[, instruction]), got {len(pair)} items")
            if not isinstance(pair[0], str):
                raise TypeError(f"pair {n}: the query must be a string, got {type(pair[0]).__name__}")
            _check_document(pair[1], f"pair {n}")
            # precedence: the pair's own instruction, else the call's, else (None) the model's default; an explicit
            # None in a triple means "no per-pair instruction", not "the model's default over the call's"
            inst = pair[2] if len(pair) == 3 else None
            if inst is None:
                inst = instruction[n] if isinstance(instruction, (list, tuple)) else instruction
            if inst is not None and not isinstance(inst, str):
                # str.format would put 5 (or a list's repr) into the prompt as text
                raise TypeError(f"pair {n}: the instruction must be a string or None, got {type(inst).__name__}")
            triples.append((pair[0], pair[1], inst))
        groups = prefix_groups([(query, inst) for query, _, inst in triples]) if self.prefix_reuse else None
        logits = self.logits_for_ids(self.encode(triples), groups=groups)
        check_finite(logits)
        if normalize:
            for message in self.calibration_mismatches(inst for _, _, inst in triples):
                warnings.warn(message, UserWarning, stacklevel=2)
        return [self._normalize(x) for x in logits] if normalize else logits

    def calibration_mismatches(self, instructions: Iterable[str | None]) -> list[str]:
        """What to warn of (each once per reranker) when the stored calibration, fitted on pairs scored with one
        instruction, is applied to pairs scored with another: their logits have another spread, so the
        probabilities are not calibrated (`tuner instruct --apply` removes such a calibration for that reason).
        `None` in `instructions`: the default."""
        fitted = (self.calibration or {}).get("instruction")
        if fitted is None:  # no calibration, or one from before calibrate recorded its instruction
            return []
        default = DEFAULT_INSTRUCTION if self.instruction is None else self.instruction
        used = {default if i is None else i for i in instructions} - {fitted}
        return [m for m in (self._calibration_message(f"the instruction {fitted!r}, not {i!r}") for i in used) if m]

    def _calibration_message(self, what: str) -> str | None:
        if what in self._calibration_warned:
            return None
        self._calibration_warned.add(what)
        return (
            f"the calibration in tuner.json was fitted with {what}: the probabilities of these scores are not "
            "calibrated (refit with `tuner calibrate`, or score without it: calibrated=False or normalize=False in "
            "Python, --no-calibration for tuner score and tuner serve)"
        )

    def score(
        self,
        query: str,
        documents: Sequence[Document],
        instruction: str | Sequence[str | None] | None = None,
        normalize: bool = True,
    ) -> list[float]:
        """Scores of `documents` for one query, in input order (probabilities, or logits if not normalize).

        `instruction`: one for all documents or one per document (see `score_pairs`)."""
        documents = _document_list(query, documents)
        for n, document in enumerate(documents):
            _check_document(document, f"document {n}")
        return self.score_pairs([(query, d) for d in documents], instruction=instruction, normalize=normalize)

    def rank(
        self,
        query: str,
        documents: Sequence[Document],
        top_k: int | None = None,
        instruction: str | None = None,
        return_documents: bool = True,
        normalize: bool = True,
    ) -> list[dict[str, Any]]:
        """Documents best first: `[{"index", "score", "document"}]`, the best `top_k` if given.

        `top_k` None or 0 keeps every document (as the server's and vLLM's `top_n` read 0); `return_documents=False`
        leaves the document out of each entry; `normalize=False` gives the raw yes−no logits as scores (the same
        order).
        """
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)):
            raise TypeError(f"top_k must be an integer or None, got {type(top_k).__name__} {top_k!r}")
        if top_k is not None and top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 or None: every document), got {top_k}")
        documents = _document_list(query, documents)
        scores = self.score(query, documents, instruction=instruction, normalize=normalize)
        order = best_first(scores, top_k)
        if not return_documents:
            return [{"index": i, "score": scores[i]} for i in order]
        return [{"index": i, "score": scores[i], "document": documents[i]} for i in order]


def best_first(scores: Sequence[float], top_k: int | None = None) -> list[int]:
    """The indices of `scores` best first, ties in input order, the best `top_k` (None or 0: all): the order of
    `Reranker.rank`, of the server's rerank routes and of `tuner rerank`."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: top_k or None]


def _check_document(document: Any, where: str) -> None:
    """`document_text`'s refusal (a mapping without text, a non-string field) with the pair or document it is."""
    try:
        document_text(document)
    except TypeError as err:
        raise TypeError(f"{where}: {err}") from None


def _document_list(query: Any, documents: Any) -> list:
    """`documents` as a list, refusing the lone document that Python would iterate character by character."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():  # as `tuner score` and the server refuse it: a query ranks against nothing
        raise ValueError("query is empty; give the text to rank the documents against")
    if isinstance(documents, (str, bytes, Mapping)):
        raise TypeError(
            f"documents must be a list of documents, got one {type(documents).__name__}; "
            "wrap a single document in a list: [...]"
        )
    if documents is None:
        raise TypeError("documents must be a list of documents, got None")
    return list(documents)


def _check_count(value: Any, name: str) -> None:
    """A token count given by the caller: a positive integer (a bool or 2.5 is a mistake, not a budget)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
