"""The export chat template: renders the contract's prompt from `query` / `document` messages.

sentence-transformers >= 6 maps a `(query, document)` pair to the messages
`[{"role": "query", ...}, {"role": "document", ...}]` (plus a `system` message holding `prompt=`), and vLLM's
`--chat-template` scoring path renders the same roles. The template below turns those messages into exactly
`contract.render_prompt(query, document, instruction)`; it is generated from the contract's constants (one owner
per fact) and a golden test renders it with transformers and compares strings and token ids.

The instruction comes from, in order: an `instruction` (or `instruct`) template variable, the content of a
`system` message, else the export's default instruction (the run's, or the model card's). sentence-transformers
sends no system message for an empty `prompt=""`, so "no instruction" is reachable only through the variable
(`instruction=""`), never through a message.
"""

from __future__ import annotations

import json
from typing import Any

from tuner.contract import BODY_TEMPLATE, DEFAULT_INSTRUCTION, PREFIX, SUFFIX, Document, document_text

# The first line of every template tuner generates: `is_tuner_template` tells it from a model's own chat template,
# which `tuner instruct --apply` must leave alone.
TEMPLATE_MARKER = "{#- tuner export: the Qwen3-Reranker contract prompt"

# The template must not contain sentence-transformers' "structured content" markers (`content[0]`, `.type`,
# `'type'`): without them it infers the flat message format, and the template accepts both formats anyway.
_TEMPLATE = (
    TEMPLATE_MARKER
    + """ (docs/reranker-contract.md). -#}
{%- set ns = namespace(instruction=none, query="", document="") -%}
{%- if instruction is defined and instruction is not none -%}
{%- set ns.instruction = instruction -%}
{%- elif instruct is defined and instruct is not none -%}
{%- set ns.instruction = instruct -%}
{%- endif -%}
{%- for message in messages -%}
{%- if message.content is string -%}
{%- set text = message.content -%}
{%- else -%}
{%- set text = message.content | map(attribute="text") | join("") -%}
{%- endif -%}
{%- if message.role == "system" and ns.instruction is none -%}
{%- set ns.instruction = text -%}
{%- elif message.role == "query" -%}
{%- set ns.query = text -%}
{%- elif message.role == "document" -%}
{%- set ns.document = text -%}
{%- endif -%}
{%- endfor -%}
{%- if ns.instruction is none -%}
{%- set ns.instruction = @DEFAULT@ -%}
{%- endif -%}
{{- @PREFIX@ -}}
{{- @INSTRUCT@ ~ ns.instruction ~ @QUERY@ ~ ns.query ~ @DOCUMENT@ ~ ns.document -}}
{{- @SUFFIX@ -}}
"""
)


def _literal(text: str) -> str:
    """A Jinja string literal for `text` (JSON escapes are valid Jinja escapes)."""
    return json.dumps(text, ensure_ascii=False)


def build_chat_template(default_instruction: str | None = None) -> str:
    """The Jinja chat template of an export, with `default_instruction` (None → the model card's) baked in."""
    # BODY_TEMPLATE is "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"; split it on its
    # fields so that the template reuses the contract's separators verbatim.
    head, rest = BODY_TEMPLATE.split("{instruction}")
    mid, rest = rest.split("{query}")
    tail, end = rest.split("{document}")
    if end:
        raise AssertionError("BODY_TEMPLATE must end with the document")
    instruction = DEFAULT_INSTRUCTION if default_instruction is None else default_instruction
    replacements = {
        "@DEFAULT@": _literal(instruction),
        "@PREFIX@": _literal(PREFIX),
        "@INSTRUCT@": _literal(head),
        "@QUERY@": _literal(mid),
        "@DOCUMENT@": _literal(tail),
        "@SUFFIX@": _literal(SUFFIX),
    }
    template = _TEMPLATE
    for key, value in replacements.items():
        template = template.replace(key, value)
    return template


def is_tuner_template(template: object) -> bool:
    """Whether `template` is a chat template `build_chat_template` generated (whatever instruction it bakes in)."""
    return isinstance(template, str) and template.startswith(TEMPLATE_MARKER)


def pair_messages(query: str, document: Document, instruction: str | None = None) -> list[dict[str, Any]]:
    """The messages sentence-transformers builds for a pair (`instruction` → a system message, as `prompt=`).

    sentence-transformers (6.x, `Transformer.preprocess`: `if prompt and modality == "message"`) adds the system
    message only for a non-empty prompt: `prompt=""` renders the export's default instruction, not none. So does
    this function; "no instruction" is the template variable (`template_kwargs("")`).
    """
    messages: list[dict[str, Any]] = []
    if instruction:
        messages.append({"role": "system", "content": instruction})
    messages.append({"role": "query", "content": query})
    messages.append({"role": "document", "content": document_text(document)})
    return messages


def template_kwargs(instruction: str | None) -> dict[str, Any]:
    """The chat-template variables that give `instruction` where a system message cannot: `""` (no instruction)
    is `{"instruction": ""}` (apply_chat_template's keyword, vLLM's `chat_template_kwargs`, sentence-transformers'
    `processing_kwargs={"chat_template": ...}`); any other instruction travels in `pair_messages`' system message."""
    return {"instruction": ""} if instruction == "" else {}
