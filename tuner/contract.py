"""The Qwen3-Reranker scoring contract: the one owner of the prompt, token ids, truncation and score.

Every module that trains, evaluates, exports or serves a reranker builds its inputs here, so that all of
them score an (instruction, query, document) triple exactly as the official Qwen3-Reranker model card does.
See docs/reranker-contract.md for the sources of each fact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
PREFIX = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
BODY_TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
# what the body holds between the query and the document (for naming the part that is over a token budget)
_QUERY_TO_DOCUMENT = BODY_TEMPLATE.split("{query}")[1].split("{document}")[0]
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
# The model card's default instruction (the repository's example class uses another text; the card wins).
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEFAULT_MAX_LENGTH = 8192
YES_TOKEN = "yes"
NO_TOKEN = "no"
# Written into every export's tuner.json so that a loader can check what it is scoring with.
CONTRACT_VERSION = 1

Document = str | Mapping[str, Any]


class PromptTextError(ValueError):
    """A pair's text cannot be made into a prompt, so that a caller can name its own field. `index`: the pair;
    `part`: "query", "document" or "instruction" (for instruction + query over the token budget: "instruction"
    when a given instruction alone is over it, else "query")."""

    def __init__(self, message: str, index: int, part: str) -> None:
        super().__init__(message)
        self.index, self.part = index, part


def effective_instruction(instruction: str | None) -> str:
    """The instruction a prompt says: None (a model's unset default) is the model card's."""
    return DEFAULT_INSTRUCTION if instruction is None else instruction


def tokenizer_dir() -> Path:
    """Path of the real Qwen3 tokenizer files shipped inside the package (vocab, merges, config)."""
    return Path(str(resources.files("tuner") / "assets" / "tokenizer"))


def config_dir(name: str) -> Path:
    """Path of a shipped model config folder (`Qwen3-Reranker-0.6B` real, `Qwen3-Reranker-4B` reconstructed)."""
    path = Path(str(resources.files("tuner") / "assets" / "configs" / name))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no shipped config named {name!r} (looked in {path})")
    return path


def load_tokenizer(path: str | Path | None = None):
    """Load a Qwen3 tokenizer (the shipped one by default) and prepare it for batching.

    Args:
        path: tokenizer directory or hub id; `None` for the copy shipped in `tuner/assets/tokenizer`.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path or tokenizer_dir()))
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer):
    """Set the pad token (Qwen3 ships none for batching in some copies) and left padding, in place."""
    if tokenizer.pad_token is None:
        # <|endoftext|> is Qwen3's documented pad token; it never appears inside a reranker prompt.
        tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    if isinstance(getattr(tokenizer, "init_kwargs", None), dict):
        # `save_pretrained` writes the init kwargs, not the live attribute: without this an exported tokenizer
        # would load right-padded, and the model card's batch code reads the last column
        tokenizer.init_kwargs["padding_side"] = "left"
    return tokenizer


def yes_no_ids(tokenizer) -> tuple[int, int]:
    """Return (yes_id, no_id); raise if either is not exactly one token."""
    ids = []
    for word in (YES_TOKEN, NO_TOKEN):
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"tokenizer encodes {word!r} as {len(encoded)} tokens {encoded}; the Qwen3-Reranker contract "
                "needs a single token for 'yes' and for 'no' (is this a Qwen3 tokenizer?)"
            )
        ids.append(encoded[0])
    return ids[0], ids[1]


DOCUMENT_KEYS = ("title", "text")


def document_text(document: Document) -> str:
    """Render a document given as a string or as `{"title", "text"}` (BEIR style: `title + " " + text`).

    `{"document": <string or {"title", "text"}>}` reads as its inner document, as the CLI's `--documents` does.
    A mapping with neither "text" nor "title" is a `TypeError` naming its keys: read as "", it would be scored
    silently as an empty document (e.g. `{"content": ...}` from another library's schema).
    """
    if isinstance(document, str):
        return document
    if isinstance(document, Mapping):
        if not any(key in document for key in DOCUMENT_KEYS) and "document" in document:
            inner = document["document"]
            # one level only: the wrapper is a row's field, not a recursive format
            if isinstance(inner, str) or (isinstance(inner, Mapping) and "document" not in inner):
                return document_text(inner)
            raise TypeError(
                f"a document's 'document' field must be a string or a {{'title', 'text'}} mapping, "
                f"got {_describe(inner)}"
            )
        if not any(key in document for key in DOCUMENT_KEYS):
            keys = ", ".join(repr(k) for k in document) or "(none)"
            raise TypeError(
                f"a document mapping has no 'text' (or 'title') field, nor a 'document' one: got keys {keys}"
            )
        for key in DOCUMENT_KEYS:
            # str() would render 5 as "5" and a list as its repr: not text anyone meant to score
            if document.get(key) is not None and not isinstance(document[key], str):
                raise TypeError(f"a document's {key!r} must be a string, got {type(document[key]).__name__}")
        title = (document.get("title") or "").strip()
        text = document.get("text") or ""
        return f"{title} {text}" if title else text
    raise TypeError(f"a document must be a string or a {{'title', 'text'}} mapping, got {type(document).__name__}")


def _describe(value: Any) -> str:
    """`a dict with keys 'document'`, or the type's name: for errors about a document's shape."""
    if isinstance(value, Mapping):
        return f"a mapping with keys {', '.join(repr(k) for k in value) or '(none)'}"
    return type(value).__name__


def _raise_unencodable(triples: Sequence[tuple[str, Document, str | None]]) -> None:
    """Raise `PromptTextError` for the first text that is not valid Unicode (a lone surrogate, which JSON's
    `\\ud800` escapes and Python strings allow); return if every text is valid."""
    for n, (query, document, instruction) in enumerate(triples):
        parts = [("query", query), ("document", document_text(document)), ("instruction", instruction or "")]
        for part, text in parts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise PromptTextError(
                    f"the {part} holds a lone surrogate {text[err.start]!r} at character {err.start}: "
                    "not valid Unicode text",
                    n,
                    part,
                ) from None


def render_body(query: str, document: Document, instruction: str | None = None) -> str:
    """The user turn between prefix and suffix. `instruction=None` means the default; `""` means none."""
    if instruction is None:
        instruction = DEFAULT_INSTRUCTION
    return BODY_TEMPLATE.format(instruction=instruction, query=query, document=document_text(document))


def render_prompt(query: str, document: Document, instruction: str | None = None) -> str:
    """The full prompt string, exactly as the model card builds it (before tokenization)."""
    return PREFIX + render_body(query, document, instruction) + SUFFIX


def score_from_logit(logit: float) -> float:
    """Probability of `yes` from the yes−no logit: sigmoid = softmax([no, yes])[1]."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)


def _data_tokenizer(tokenizer):
    """A copy of the fast backend tokenizer that never produces a control token from user text.

    `split_special_tokens=True` covers only tokens marked special; Qwen3's `<think>`/`</think>` (and other
    added tokens) are not, so we mark every added token special in a private copy and turn on
    `encode_special_tokens`, which makes the backend read them as plain text. Ordinary text tokenizes
    exactly as with the original tokenizer (same normalizer, pre-tokenizer and BPE model).
    """
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError("safe text encoding needs a fast (tokenizers-backed) tokenizer")
    spec = json.loads(backend.to_str())
    for added in spec.get("added_tokens", []):
        added["special"] = True
    data = Tokenizer.from_str(json.dumps(spec))
    data.encode_special_tokens = True
    data.no_padding()
    data.no_truncation()
    return data


def past_positions(max_length: int, model_config: Any) -> str | None:
    """Why `max_length` cannot be used with a model of this config (its prompts would run past the positions the
    model has, `max_position_embeddings`: 40960 for Qwen3-Reranker), or None when it can."""
    limit = getattr(model_config, "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        return (
            f"max_length {max_length} is past the model's max_position_embeddings ({limit}): tokens beyond it sit at "
            f"positions it never had; use at most {limit}"
        )
    return None


@dataclass
class PromptEncoder:
    """Turns (query, document, instruction) into prompt token ids under the contract's truncation rule.

    Only the document is cut when a pair is too long: prefix, instruction, query and suffix always survive,
    and `max_length` counts all of them. The body is tokenized as one string (as the model card does), then
    cut from the right; the cut is allowed only inside the document, so an untruncated pair or one cut
    inside its document gives exactly the model card's ids.

    Args:
        tokenizer: a Qwen3 tokenizer (see `load_tokenizer`).
        max_length: token budget for the whole prompt, prefix and suffix included.
        safe_text: encode user text so that no control token can come from it (default). `False` restores
            the model card's behaviour, for strict parity checks on texts with control-token strings.
    """

    tokenizer: Any
    max_length: int = DEFAULT_MAX_LENGTH
    safe_text: bool = True

    def __post_init__(self) -> None:
        prepare_tokenizer(self.tokenizer)
        self.yes_id, self.no_id = yes_no_ids(self.tokenizer)
        self.prefix_ids: list[int] = self.tokenizer.encode(PREFIX, add_special_tokens=False)
        self.suffix_ids: list[int] = self.tokenizer.encode(SUFFIX, add_special_tokens=False)
        self.budget_for(self.max_length)  # a budget with no room for a body fails here, not at the first pair

    @cached_property
    def _backend(self):
        if self.safe_text:
            return _data_tokenizer(self.tokenizer)
        from tokenizers import Tokenizer

        # A private copy even here: the shared backend keeps the truncation and padding of the caller's last
        # `tokenizer(..., truncation=True / padding=...)` call, which would cut or pad the prompt behind the
        # contract's own truncation rule.
        backend = getattr(self.tokenizer, "_tokenizer", None) or self.tokenizer.backend_tokenizer
        copy = Tokenizer.from_str(backend.to_str())
        copy.no_padding()
        copy.no_truncation()
        return copy

    @property
    def body_budget(self) -> int:
        """Tokens left for the body once prefix and suffix are counted."""
        return self.max_length - len(self.prefix_ids) - len(self.suffix_ids)

    def budget_for(self, max_length: int) -> int:
        """Tokens left for the body under a prompt budget of `max_length`; `ValueError` if there are none."""
        budget = max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if budget <= 0:
            raise ValueError(
                f"max_length {max_length} leaves no room for the prompt body "
                f"(prefix {len(self.prefix_ids)} + suffix {len(self.suffix_ids)} tokens)"
            )
        return budget

    def encode(self, query: str, document: Document, instruction: str | None = None) -> list[int]:
        """Token ids of the full prompt (prefix + body + suffix), at most `max_length` long."""
        return self.encode_many([(query, document, instruction)])[0]

    @cached_property
    def _max_token_chars(self) -> int:
        """The most characters one token can cover: its byte length in the byte-level vocabulary (a character is
        at least one byte), or its string length for added tokens. 128 for Qwen3 (a run of spaces)."""
        vocab = self.tokenizer.get_vocab()
        return max(max(len(token) for token in vocab), 1)

    def encode_many(
        self,
        triples: Sequence[tuple[str, Document, str | None]],
        max_length: int | None = None,
        max_document_tokens: int | None = None,
    ) -> list[list[int]]:
        """Batch version of `encode` (the backend tokenizes in parallel).

        Args:
            triples: (query, document, instruction) each; `None` instruction → the default.
            max_length: a smaller prompt budget for these prompts than the encoder's (a request's own cap, such
                as vLLM's `truncate_prompt_tokens`); only the document is cut, as under the encoder's own.
            max_document_tokens: cut each document to at most this many tokens too (Cohere's
                `max_tokens_per_doc`).
        """
        limit = self.max_length if max_length is None else min(max_length, self.max_length)
        budget = self.budget_for(limit)
        if max_document_tokens is not None and max_document_tokens < 1:
            raise ValueError(f"max_document_tokens must be at least 1, got {max_document_tokens}")
        doc_tokens = budget if max_document_tokens is None else min(budget, max_document_tokens)
        # A document is cut to at most `doc_tokens` tokens, which cover at most `doc_tokens * _max_token_chars`
        # of its characters: the text past that (plus a margin of tokens, so that the pre-token the cut falls in
        # ends well after the last kept token) cannot change the kept ids. Cutting it before tokenizing keeps a
        # 10 MB document from costing seconds of tokenizer time, with the same ids.
        keep_chars = (doc_tokens + 64) * self._max_token_chars
        heads, bodies = [], []
        for query, document, instruction in triples:
            if not isinstance(query, str):
                raise TypeError(f"a query must be a string, got {type(query).__name__}")
            body = render_body(query, document, instruction)
            doc = document_text(document)
            doc_start = len(body) - len(doc)  # character offset where the document starts (the body ends with it)
            heads.append(doc_start)
            bodies.append(body[: doc_start + keep_chars])
        try:
            encodings = self._backend.encode_batch(bodies, add_special_tokens=False)
        except TypeError:  # the backend's words for a text that is not valid Unicode say nothing of where
            _raise_unencodable(triples)
            raise
        out = []
        for n, (enc, doc_start) in enumerate(zip(encodings, heads, strict=True)):
            ids = enc.ids
            if len(ids) > min(budget, doc_tokens):  # (cheap test first: a pair this short is never cut)
                # Tokens that end before the document belong to instruction + query (+ "<Document>:"). The space
                # before the document is the document's to lose: it merges into the document's first token, and
                # where it does not (an empty document, one starting with a digit) it is a token ending at
                # `doc_start`, counted with the document too (`<`, not `<=`), so an empty document is never the
                # one pair of a batch refused for an over-long query.
                head = sum(1 for _, end in enc.offsets if end < doc_start)
                if head > budget:
                    query_start = doc_start - len(_QUERY_TO_DOCUMENT) - len(triples[n][0])
                    alone = sum(1 for _, end in enc.offsets if end <= query_start)
                    # the instruction's fault when a given one is over the budget without any query; a default one
                    # over it means the budget is too small for any query (still reported on the query's field)
                    part, fix = "query", "shorten the query or instruction, or raise max_length"
                    if alone > budget and triples[n][2] is not None:
                        part, fix = "instruction", "shorten the instruction, or raise max_length"
                    elif alone > budget:
                        fix = "the default instruction alone is over it: raise max_length"
                    raise PromptTextError(
                        f"instruction + query take {head} tokens, over the body budget of {budget} "
                        f"(max_length {limit} - prefix {len(self.prefix_ids)} - suffix "
                        f"{len(self.suffix_ids)}); {fix}",
                        n,
                        part,
                    )
                ids = ids[: min(budget, head + doc_tokens)]
            out.append(self.prefix_ids + ids + self.suffix_ids)
        return out

    def metadata(self) -> dict[str, Any]:
        """The contract facts an export records in its `tuner.json`."""
        return {
            "contract_version": CONTRACT_VERSION,
            "prefix": PREFIX,
            "body_template": BODY_TEMPLATE,
            "suffix": SUFFIX,
            "default_instruction": DEFAULT_INSTRUCTION,
            "yes_token_id": self.yes_id,
            "no_token_id": self.no_id,
            "max_length": self.max_length,
            "safe_text": self.safe_text,
            "score": "logit = h_last . (w_yes - w_no) in fp32; probability = sigmoid(logit)",
        }
