"""The model card (README.md) written into every export: what it is, how it scored, how to load it everywhere."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

_TITLES = {"adapter": "PEFT LoRA adapter", "merged": "merged causal LM", "seq-cls": "1-label sequence classifier"}


# data.* fields that only mining a BEIR folder reads (tuner.train_setup.load_training_groups)
_MINING_ONLY = ("beir", "split", "mine_depth", "mine_range_min", "num_negatives")


def _data_used(data: Any) -> Any:
    """The recipe's data section as the run used it: with a `train_file`, the BEIR mining fields (a recipe's
    `data.beir: data/scifact` left in place by a `data.train_file=...` override) were not read, and a card that
    names them says the model was trained on data it never saw."""
    if isinstance(data, dict) and data.get("train_file"):
        return {k: v for k, v in data.items() if k not in _MINING_ONLY}
    return data


def _merge_line(merge: Any) -> str | None:
    """The card's line for an export of a `tuner merge` adapter: its weights and sources, by run (and checkpoint)
    name, not by this machine's paths."""
    if not isinstance(merge, dict) or not merge.get("sources"):
        return None

    def name(source: str) -> str:
        path = Path(source)
        if path.name == "adapter":  # RUN/adapter
            return path.parent.name
        if path.parent.name == "checkpoints":  # RUN/checkpoints/checkpoint-N
            return f"{path.parent.parent.name}/{path.name}"
        return path.name

    weights = merge.get("weights") or []
    terms = " + ".join(f"{w:g} × `{name(s)}`" for s, w in zip(merge["sources"], weights, strict=False))
    return f"- **Merge:** base + {terms} (`tuner merge`: the weighted sum of the adapters' weight updates)"


def _eval_table(evaluation: Any) -> str:
    """A markdown table from `{metric: value}` or `{system: {metric: value}}`."""
    if not isinstance(evaluation, dict) or not evaluation:
        return ""
    if all(isinstance(v, dict) for v in evaluation.values()):
        # rows of metrics only (a "best": {"checkpoint": ...} entry is bookkeeping, not a system)
        evaluation = {k: v for k, v in evaluation.items() if v and all(isinstance(x, (int, float)) for x in v.values())}
        if not evaluation:
            return ""
        metrics = sorted({m for row in evaluation.values() for m in row})
        lines = ["| | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        for name, row in evaluation.items():
            cells = [_fmt(row.get(m)) for m in metrics]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in evaluation.items()]
    return "\n".join(lines)


def _base_named(base: Any, recipe: Any) -> tuple[str, str | None]:
    """The base model as the recipe named it, for the card's line and its metadata: (line, hub id or None).

    A hub id is given as is; a local folder by its name only (its absolute path, kept in tuner.json for loading
    the adapter on this machine, means nothing where the card is read), with no hub id to link to."""
    model = recipe.get("model") if isinstance(recipe, dict) else None
    if isinstance(model, dict) and model.get("tiny") is True:
        return "a random tiny Qwen3 (`model.tiny`; not a published model)", None
    named = model.get("name_or_path") if isinstance(model, dict) and model.get("name_or_path") else base
    if named is None:
        return "unknown", None
    path = Path(str(named)).expanduser()
    if path.is_absolute() or str(named).startswith((".", "~")) or path.exists():
        return f"a local copy, `{path.name or named}`", None
    return f"`{named}`", str(named)


def _front_matter(fmt: str, hub_base: str | None, lora: bool) -> str:
    """The hub's metadata block (YAML between `---` lines), so that a pushed export (`hf upload`) is listed as a
    text-ranking model fine-tuned from (or, an adapter, attached to) its base. huggingface_hub writes it."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=hub_base,
        library_name="peft" if fmt == "adapter" else "transformers",
        pipeline_tag="text-ranking",
        tags=["reranker", "qwen3", *(["lora"] if lora else []), "tuner"],
        # the Qwen3-Reranker models are Apache-2.0; another base's license is its own, for the user to state
        license="apache-2.0" if hub_base and hub_base.startswith("Qwen/Qwen3-Reranker") else None,
        base_model_relation=("adapter" if fmt == "adapter" else "finetune") if hub_base else None,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def _depth_note(evaluation: dict[str, Any], recipe: Any) -> str:
    """The report's note when the run's dev metrics look deeper than the `eval.top_k` candidates it reranked."""
    from tuner.metrics import parse_metric
    from tuner.report import cutoff_note

    ev = recipe.get("eval") if isinstance(recipe, dict) else None
    if not isinstance(ev, dict) or not ev.get("beir") or ev.get("data"):
        return ""  # eval.data ranks each group whole
    rows = evaluation.values() if all(isinstance(v, dict) for v in evaluation.values()) else [evaluation]
    metrics = []
    for row in rows:
        for name, value in row.items() if isinstance(row, dict) else ():
            try:
                parse_metric(name)
            except ValueError:  # bookkeeping ("best": {"checkpoint": ...}), not a metric
                continue
            if isinstance(value, (int, float)) and name not in metrics:
                metrics.append(name)
    return cutoff_note(metrics, int(ev.get("top_k") or 0))


def _eval_source(recipe: Any) -> str:
    """What the run's evaluation table was measured on, and what its first_stage row is."""
    ev = recipe.get("eval") if isinstance(recipe, dict) else None
    if not isinstance(ev, dict):
        return ""
    # eval.max_queries: the figures are of a seeded sample, not of the whole set
    sample = f", a seeded sample of {ev['max_queries']} queries" if ev.get("max_queries") else ""
    if ev.get("data"):  # (eval.data and eval.beir are exclusive)
        data = Path(str(ev["data"]))
        read = f"its {ev.get('split') or 'test'} file, " if data.is_dir() else ""  # a folder of labeled files
        return (
            f"Measured on `{data.name}` ({read}each group's documents ranked whole{sample}); first_stage is their "
            "seeded random order, not a retriever."
        )
    if ev.get("beir"):
        return (
            f"Measured on `{Path(str(ev['beir'])).name}` ({ev.get('split') or 'test'} qrels{sample}), reranking "
            f"BM25's top {ev.get('top_k')}; first_stage is BM25."
        )
    return ""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _parity_text(parity: dict[str, Any]) -> str:
    tolerance = f"{parity['tolerance']['atol']:g} + {parity['tolerance']['rtol']:g}·|logit|"
    head = (
        f"{parity['probes']} probe pairs (a truncated document, non-English text, custom and empty instructions)"
        f" scored by the training-time scorer ({parity['reference']}) and by each format written"
    )
    if "loaded_back_in" not in parity:  # an export made before the gate compared in fp32
        return f"{head}, loaded back in {parity['dtype']}; tolerance {tolerance}."
    exact = parity["exact_tolerance"]["atol"]
    return (
        f"{head}, loaded back in {parity['loaded_back_in']} (stored weights upcast exactly), all in fp32. Each format "
        f"must equal the in-memory weights it was written from (tolerance {exact:g}), and the merge must equal the "
        f"training-time scorer (tolerance {exact:g}); the weights in {parity['dtype']} may differ from it by "
        f"{tolerance if parity['dtype'] != 'float32' else f'{exact:g}'}."
    )


def gate_rows(parity: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every row of a parity report, by name: the in-memory models (`NAME (in memory)`), then the formats loaded
    back. The gate, `tuner export`'s output and the card all read this one list."""
    in_memory = {f"{name} (in memory)": row for name, row in parity.get("in_memory", {}).items()}
    return {**in_memory, **parity.get("formats", {})}


def _parity_table(parity: dict[str, Any]) -> str:
    lines = ["| format (loaded back fresh) or in-memory model | max abs logit delta | passed |", "|---|---|---|"]
    for name, row in gate_rows(parity).items():
        lines.append(f"| {name} | {row['max_abs_logit_delta']:.2e} | {'yes' if row['passed'] else 'NO'} |")
    template = parity.get("template", {})
    if template:
        # passed as the gate (and `tuner instruct --apply`) pass it: strings and token ids all equal
        passed = template["prompt_strings_equal"] == template["token_ids_equal"] == template["probes"]
        lines.append(
            f"| chat template → contract prompt | {template['prompt_strings_equal']}/{template['probes']} strings, "
            f"{template['token_ids_equal']}/{template['probes']} token ids equal | {'yes' if passed else 'NO'} |"
        )
    return "\n".join(lines)


def _instruction_change_note(change: dict[str, Any]) -> str:
    """What the parity figures still show once `tuner instruct --apply` changed the export's default instruction."""

    def name(instruction: Any) -> str:
        return "the model card default" if instruction is None else json.dumps(instruction, ensure_ascii=False)

    template = (
        "the chat template was regenerated for the new default and checked again: the last row is that check."
        if change.get("template_rechecked")
        else "the chat template was not checked again (no tuner chat template or tokenizer in this folder)."
    )
    return (
        f"The default instruction was changed after export (on {change.get('at')}) from {name(change.get('from'))} "
        f"to {name(change.get('to'))}. The logit figures were measured with the export-time default (the weights "
        f"did not change, and the probes also use custom and empty instructions); {template}"
    )


def vllm_args(path: str, meta: dict[str, Any]) -> list[str]:
    """`vllm serve` arguments for a merged or seq-cls export (overrides only for merged)."""
    args = ["vllm", "serve", path, "--runner", "pooling", "--chat-template", f"{path}/chat_template.jinja"]
    if meta.get("format") == "merged":
        args += ["--hf-overrides", json.dumps(meta.get("vllm_hf_overrides"), separators=(",", ":"))]
    args += ["--max-model-len", str(meta.get("max_length") or 8192)]
    return args


def model_card(
    final_path: str | Path, meta: dict[str, Any], recipe_yaml: str | None = None, name: str | None = None
) -> str:
    """README.md text for the export that will live at `final_path` (`recipe_yaml`: the run's resolved config;
    `name`: the title's, default the folder's: a multi-format export's formats are titled by the export, not
    "merged" or "seq-cls")."""
    path = str(final_path)
    fmt = meta["format"]
    base = meta.get("base_model")
    instruction = meta.get("instruction")
    recipe = meta.get("recipe")
    data = recipe.get("data") if isinstance(recipe, dict) else None
    if recipe_yaml is not None:
        import yaml

        try:
            resolved = yaml.safe_load(recipe_yaml)
        except yaml.YAMLError:
            resolved = None
        if isinstance(resolved, dict) and data is None:
            data = resolved.get("data")
    max_length = meta.get("max_length") or 8192
    base_line, hub_base = _base_named(base, recipe)
    # a run records its recipe's name; its resolved config (recipe_yaml) says whether it trained LoRA adapters
    settings = recipe if isinstance(recipe, dict) else resolved if recipe_yaml is not None else None
    full_fine_tune = isinstance(settings, dict) and ((settings.get("lora") or {}).get("enabled") is False)
    parts = [
        _front_matter(fmt, hub_base, lora=not full_fine_tune),
        f"# {name or Path(path).name}: Qwen3-Reranker {'full' if full_fine_tune else 'LoRA'} fine-tune, {_TITLES[fmt]}",
        "",
        f"Exported by tuner {meta.get('tuner_version')} on {meta.get('exported_at')}.",
        "",
        f"- **Base model:** {base_line}",
        f"- **Format:** {fmt} ({meta.get('dtype')})",
        f"- **Default instruction:** {'the model card default' if instruction is None else json.dumps(instruction)}",
        f"- **Max length:** {max_length} tokens (tuner and sentence-transformers truncate only the document; the "
        "transformers and vLLM code below does not truncate)",
        f"- **Score:** logit = h_last · (w_yes − w_no) (yes id {meta.get('yes_token_id')}, no id "
        f"{meta.get('no_token_id')}); "
        + ("other engines' relevance = sigmoid(logit)" if meta.get("calibration") else "relevance = sigmoid(logit)"),
    ]
    if meta.get("calibration"):
        cal = meta["calibration"]
        parts.append(
            f"- **Calibration (tuner only):** tuner's probability is sigmoid(logit / {cal.get('temperature', 1.0)} + "
            f"{cal.get('bias', 0.0)}); other engines return sigmoid(logit) (apply the same formula to their logit, "
            "or load with `calibrated=False` / `--no-calibration` for the uncalibrated probability)"
        )
    merge_line = _merge_line(meta.get("merge"))
    if merge_line:
        parts.append(merge_line)
    if data is not None:
        parts.append(f"- **Data:** `{json.dumps(_data_used(data), ensure_ascii=False)}`")
    if recipe_yaml is not None:
        parts += ["", "## Recipe", "", "The run's resolved config (also in `recipe.yaml`):", "", "```yaml"]
        parts += [recipe_yaml.rstrip(), "```"]
    elif isinstance(recipe, dict):
        parts += ["", "## Recipe", "", "```json", json.dumps(recipe, indent=2, ensure_ascii=False), "```"]
    elif recipe is not None and not merge_line:  # a merge's tuner.json says "merge": the Merge line says more
        parts += ["", f"Recipe: `{recipe}`."]
    table = _eval_table(meta.get("eval"))
    if table:
        parts += ["", "## Evaluation", "", table]
        source = _eval_source(settings)
        if source:
            parts += ["", source]
        note = _depth_note(meta.get("eval"), settings)  # a run's tuner.json names its recipe; its YAML has eval
        if note:
            parts += ["", note]
    if meta.get("parity"):
        parity = meta["parity"]
        parts += [
            "",
            "## Parity (checked at export)",
            "",
            _parity_text(parity),
            "",
            _parity_table(parity),
        ]
        change = parity.get("instruction_changed")
        if isinstance(change, dict):
            parts += ["", _instruction_change_note(change)]
    parts += ["", "## Load it", "", "### tuner", "", "```python", "from tuner.scoring import Reranker", ""]
    parts += [
        f"reranker = Reranker.from_pretrained({path!r})",
        'reranker.rank("what produces lift?", ["Lift comes from pressure.", "Bananas."], top_k=1)',
        "```",
        "",
        "```bash",
        f"tuner score --model {shlex.quote(path)} --query 'what produces lift?' --documents docs.jsonl",
        f"tuner serve {shlex.quote(path)} --port 8000" if fmt != "adapter" else f"tuner serve {shlex.quote(path)}",
        "```",
        "",
        "### transformers",
        "",
        # Without dtype=, transformers loads the dtype in config.json (bfloat16 for a bf16 export, and for the base
        # an adapter sits on), whose logits differ from tuner's (-19.75 against -19.624 on a real adapter); a
        # snippet that ignores max_length silently scores a long pair on a prompt tuner never builds.
        f"Loads in float32: tuner's dtype on CPU, and the one the parity above was checked in (without `dtype=`, "
        f"transformers uses config.json's, e.g. bfloat16, and the logit moves). This code does not truncate: a "
        f"prompt over {max_length} tokens would score differently from tuner, which cuts only the document, so it "
        f"refuses one; score long documents with tuner{' or the CrossEncoder below' if fmt != 'adapter' else ''}.",
        "",
        "```python",
        "import torch",
    ]
    messages = (
        'messages = [{"role": "query", "content": "what produces lift?"},'
        ' {"role": "document", "content": "Lift comes from pressure."}]'
    )
    instruction_note = (
        '# another instruction: prepend {"role": "system", "content": ...}; none at all: apply_chat_template(...,'
        ' instruction="")'
    )
    tokenize = [
        "ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors='pt')",
        f"assert ids['input_ids'].shape[1] <= {max_length}, 'over max_length: tuner would cut the document'",
    ]
    if fmt == "seq-cls":
        parts += [
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            f"tok = AutoTokenizer.from_pretrained({path!r})",
            f"model = AutoModelForSequenceClassification.from_pretrained({path!r}, dtype=torch.float32).eval()",
            "# the chat template renders the reranker prompt",
            instruction_note,
            messages,
            *tokenize,
            "with torch.no_grad():",
            "    logit = model(**ids).logits[0, 0]  # = logit(yes) - logit(no)",
            "print(torch.sigmoid(logit))",
        ]
    else:
        load = f"AutoModelForCausalLM.from_pretrained({base!r}, dtype=torch.float32)" if fmt == "adapter" else ""
        parts += ["from transformers import AutoModelForCausalLM, AutoTokenizer"]
        if fmt == "adapter":
            parts += ["from peft import PeftModel", ""]
            parts += [f"model = PeftModel.from_pretrained({load}, {path!r}).eval()"]
        else:
            parts += ["", f"model = AutoModelForCausalLM.from_pretrained({path!r}, dtype=torch.float32).eval()"]
        parts += [
            f"tok = AutoTokenizer.from_pretrained({path!r})",
            instruction_note,
            messages,
            *tokenize,
            "with torch.no_grad():",
            "    last = model(**ids).logits[0, -1]",
            f"logit = last[{meta.get('yes_token_id')}] - last[{meta.get('no_token_id')}]",
            "print(torch.sigmoid(logit))",
        ]
    parts += ["```", "", "### sentence-transformers (>= 6)", ""]
    if fmt == "adapter":
        parts += ["Load the merged or seq-cls export (`tuner export ... --format merged`)."]
    else:
        parts += [
            "```python",
            "from sentence_transformers import CrossEncoder",
            "",
            f"model = CrossEncoder({path!r}, max_length={max_length})",
            'model.predict([("what produces lift?", "Lift comes from pressure.")])  # sigmoid(logit)',
            '# another instruction: model.predict(pairs, prompt="Given a claim, retrieve supporting abstracts")',
            '# no instruction: prompt="" is not it (sentence-transformers then sends no system message, so the',
            "# export's default instruction is used); pass the template variable instead:",
            '# model.predict(pairs, processing_kwargs={"chat_template": {"instruction": ""}})',
            "```",
        ]
    parts += ["", "### vLLM", ""]
    if fmt == "adapter":
        parts += ["vLLM serves merged or seq-cls exports (`tuner serve --engine vllm EXPORT_DIR` prints the command)."]
    else:
        parts += [
            "```bash",
            # the name `tuner serve` answers to (its default_served_name): one `model` for every engine and format
            " ".join(shlex.quote(a) for a in [*vllm_args(path, meta), "--served-model-name", name or Path(path).name]),
            "```",
            "",
            "Then `POST /v1/rerank` with `{query, documents}`. The chat template renders the contract prompt; pass "
            'another instruction as `"chat_template_kwargs": {"instruction": ...}` (`{"instruction": ""}` for none) '
            "where your vLLM version accepts it. "
            "vLLM does not truncate only the document: keep prompts within `--max-model-len`.",
        ]
    parts += [
        "",
        "## Notes",
        "",
        "- tuner encodes user text so that control-token strings inside documents (`<|im_end|>`, `<think>`) stay "
        "plain text; transformers, sentence-transformers and vLLM read them as control tokens. Scores agree for "
        "every text that contains no such string.",
        "- Calibration, if any, is applied by tuner only; other engines return sigmoid(logit).",
        "",
    ]
    return "\n".join(parts)
