"""Export a trained adapter as adapter / merged / seq-cls checkpoints that score identically, proven at export.

Flow (`export`): load the base in fp32 with the adapter (the training-time scorer), score a probe set, merge and
score the merged model in memory (fp32, then with its weights rounded to the export's dtype), write every requested
format into a temporary directory next to the destination, load each one back fresh in fp32 and score the probes
again. Each loaded-back format must equal, to fp32 precision, the in-memory weights it was written from, and those
must be within the dtype's tolerance of the training-time logits; if not, or if the chat template does not render
the contract's prompt, the temporary directory is deleted and `ParityError` is raised. Only a passing export is
renamed into place, with its parity figures in `tuner.json` and its model card.

Imports torch, transformers and peft only (no training-only packages).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuner.chat_template import build_chat_template, pair_messages, template_kwargs
from tuner.contract import DEFAULT_MAX_LENGTH, Document, PromptEncoder, render_prompt
from tuner.export_card import gate_rows, model_card
from tuner.files import atomic_dir
from tuner.loading import _check_reachable, check_recorded_base, full_fine_tune_dir, load_adapter, resolve_device
from tuner.scoring import TUNER_META, Reranker, read_meta

log = logging.getLogger(__name__)

FORMATS = ("adapter", "merged", "seq-cls")
# Max |Δ logit| (atol + rtol·|logit|) allowed by the gate; every figure is computed in fp32 (bf16 weights upcast
# exactly), so that the gate measures what the export did to the weights, never bf16 inference noise (bf16
# activations moved a trained tiny run's logits by up to 0.36 with every format intact, adapter included).
# float32: only summation-order noise (measured ~1e-6 on the tiny model). It is the tolerance of every comparison
# between two copies of the same weights: the merge against the PEFT model, and each loaded-back format against
# the in-memory weights it was written from (the adapter's weights are never cast, so it is held to this too).
# bfloat16: only for the step that changes the weights, rounding them to 8 significant bits (relative error
# <= 2^-9 per weight, independent across weights, so it largely averages out in each dot product): on the trained
# tiny run it moved logits by at most 0.026 (0.032 for seq-cls, whose w_yes − w_no head is rounded too), against a
# tolerance of 0.05 + 5% of |logit| (0.10 to 0.72 there).
# A wrong head, a lost adapter or a corrupted layer moves logits by whole units, and any damage done on writing or
# loading is caught by the exact (float32) comparisons.
TOLERANCE = {"float32": (1e-4, 0.0), "bfloat16": (5e-2, 5e-2)}
EXACT = "float32"  # the dtype whose tolerance compares two copies of the same weights
PROBE_MAX_LENGTH = 192  # small, so that the long probe document is truncated and the check stays cheap
VLLM_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}

_LONG = " ".join(f"The wing section {n} produces lift proportional to the dynamic pressure." for n in range(40))
# (query, document, instruction): None → the export's default instruction (the run's), "" → no instruction.
PROBES: list[tuple[str, Document, str | None]] = [
    ("what produces lift on a wing?", _LONG, None),  # truncated at PROBE_MAX_LENGTH
    ("what produces lift on a wing?", "Lift is produced by the pressure difference across the wing.", None),
    ("what produces lift on a wing?", "Bananas are rich in potassium.", None),
    ("量子计算的基本原理是什么", "量子计算利用叠加和纠缠来处理信息。", None),
    ("¿Cuál es la capital de Francia?", "París es la capital de Francia.", "Responde a la pregunta del usuario"),
    ("Wie funktioniert ein Impfstoff?", {"title": "Impfstoffe", "text": "Er trainiert das Immunsystem."}, None),
    ("effect of vaccines on children", "Пример документа на русском языке.", "Retrieve abstracts that support it"),
    ("empty instruction", "A document scored without any instruction.", ""),
    ("empty document", "", None),
]


class ParityError(RuntimeError):
    """An export whose formats do not score like the training-time scorer (nothing was written)."""


def _warn_instruction_applied_to_run(
    checkpoint: Path, instruction: str | None, run_meta: dict[str, Any], what: str = "adapter"
) -> None:
    """A run's adapter (`what`: its model, for a full fine-tune) and checkpoints carry the recipe's instruction;
    `tuner instruct --apply RUN` rewrites the adapter's alone. A checkpoint exported after it keeps the recipe's,
    which the export then serves by default: said, since the user applied the other one "to the run" (the
    checkpoint's own is kept: it was never searched)."""
    from tuner.contract import effective_instruction as effective

    if not run_meta or effective(run_meta.get("instruction")) == effective(instruction):
        return
    log.warning(
        "%s: exported with its own default instruction %s; its run's %s was given %s after training (tuner "
        "instruct --apply). To export this checkpoint with that one, apply it here too (tuner instruct ... --apply "
        "%s) or set 'instruction' in %s",
        checkpoint,
        json.dumps(effective(instruction), ensure_ascii=False),
        what,
        json.dumps(effective(run_meta.get("instruction")), ensure_ascii=False),
        checkpoint,
        checkpoint / TUNER_META,
    )


def resolve_adapter_dir(path: str | Path) -> Path:
    """The adapter directory of a training run (`RUN/adapter`) or an adapter directory given directly."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run or adapter directory")
    for candidate in (path / "adapter", path):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    expects = "tuner export reads a training run (RUN, with RUN/adapter/) or an adapter directory (adapter_config.json)"
    # a merged or seq-cls export (or any full model folder) holds weights with the adapter already merged in:
    # there is nothing left to export, and "no adapter" alone sent users hunting for a missing file
    fmt = (read_meta(path) or {}).get("format") if path.is_dir() else None
    if fmt in FORMATS:
        raise FileNotFoundError(
            f"{path}: a tuner export ({fmt} format, its tuner.json says), not a training run: {expects}. "
            f"Export from the run it was made from, or score and serve this folder as it is (tuner score --model "
            f"{path}, tuner serve {path})"
        )
    if full_fine_tune_dir(path) is not None:  # a run with lora.enabled=false: its whole model, no adapter
        raise FileNotFoundError(
            f"{path}: a full fine-tuning run (its whole model, no adapter): this reads LoRA adapters. "
            f"`tuner export {path}` writes its merged and seq-cls formats; tuner score and serve take its model as "
            "it is"
        )
    if (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: a full model folder (config.json, no adapter_config.json), not a training run: {expects}. "
            f"Score and serve it as it is (tuner score --model {path}, tuner serve {path})"
        )
    from tuner.loading import unfinished_run_hint

    hint = unfinished_run_hint(path) if path.is_dir() else ""
    raise FileNotFoundError(f"{path}: neither an adapter directory (adapter_config.json) nor a run with adapter/{hint}")


def _full_fine_tune_formats(formats: list[str], model_dir: Path) -> list[str]:
    """A full fine-tune has no adapter: `all` is its merged and seq-cls formats; `adapter` alone is an error."""
    if "adapter" not in formats:
        return formats
    if set(formats) == set(FORMATS):
        log.info("%s is a full fine-tune (no adapter): exporting its merged and seq-cls formats", model_dir)
        return [f for f in formats if f != "adapter"]
    raise ValueError(
        f"{model_dir}: a full fine-tuning run has no adapter to export; choose --format merged or seq-cls (all: both)"
    )


def _replaced_settings(out: Path, meta: dict[str, Any], source: Path) -> list[str]:
    """What the export at `out`, about to be replaced, records that the new one will not: a calibration or default
    instruction applied to that export after it was written (`tuner calibrate/instruct --apply EXPORT`), where the
    new export takes the source's `tuner.json`. One message per setting."""
    notes: dict[str, str] = {}
    verbs = {"calibration": "calibrate", "instruction": "instruct"}
    for file in [out / TUNER_META, *sorted(out.glob(f"*/{TUNER_META}"))] if out.is_dir() else []:
        try:
            old = read_meta(file.parent)
        except ValueError:
            continue
        for key, verb in verbs.items():
            if key in old and old[key] != meta.get(key) and key not in notes:
                notes[key] = (
                    f"{file} had {key} {old[key]!r}, replaced by the source's {meta.get(key)!r} "
                    f"({source / TUNER_META}); if that {key} was applied to the export after it was written, apply "
                    f"it to the source to keep it across exports: tuner {verb} ... --apply {source}"
                )
    return list(notes.values())


def tolerance_for(dtype: str, reference: float) -> float:
    """The allowed |Δ logit| for one probe whose training-time logit is `reference`."""
    atol, rtol = TOLERANCE[dtype]
    return atol + rtol * abs(reference)


def _dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"--dtype must be one of {sorted(table)}, got {name!r}")
    return table[name]


def _base_model(adapter_dir: Path, meta: dict[str, Any], override: str | None) -> str:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = override or meta.get("base_model") or cfg.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_dir}: tuner.json and adapter_config.json name no base model; pass --base")
    if override:
        _check_reachable(override)
    else:
        base = check_recorded_base(base, adapter_dir, TUNER_META if meta.get("base_model") else "adapter_config.json")
    local = Path(base).expanduser()
    return str(local.resolve()) if local.exists() else base


def _check_out_spares_inputs(out: Path, inputs: dict[str, Path]) -> None:
    """Refuse an `out` that is, or holds, one of the export's inputs: replacing it would delete them."""
    for what, path in inputs.items():
        if not path.exists():  # a hub id
            continue
        path = path.expanduser().resolve()
        if path == out or out in path.parents:
            raise ValueError(
                f"--out {out} would replace the {what} {path} (an export replaces its whole --out folder); "
                "choose an --out outside it"
            )


def _tokenizer_for(adapter_dir: Path, base: str):
    """The run's tokenizer (saved next to the adapter), else the base's, prepared for batching."""
    from transformers import AutoTokenizer

    from tuner.contract import load_tokenizer, prepare_tokenizer

    for source in (adapter_dir, base):
        local = Path(source)
        if local.is_dir() and not any((local / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            continue
        try:
            return prepare_tokenizer(AutoTokenizer.from_pretrained(str(source)))
        except (OSError, ValueError):
            continue
    log.warning("no tokenizer next to %s or %s; using the Qwen3 tokenizer shipped with tuner", adapter_dir, base)
    return load_tokenizer()


def save_model(model, path: Path, max_shard_size: int | str) -> None:
    """Write a transformers model as safetensors (sharded above `max_shard_size`)."""
    model.save_pretrained(path, safe_serialization=True, max_shard_size=max_shard_size)


def save_tokenizer(tokenizer, path: Path, max_length: int) -> None:
    """Write the tokenizer with `model_max_length = max_length` (the shared tokenizer object is left as it was).

    sentence-transformers' CrossEncoder, loaded without `max_length=`, truncates at the tokenizer's
    `model_max_length` (tokenizer_config.json; Qwen3's is 131072) capped by config.json's `max_position_embeddings`
    (40960): without this, a long document would be cut at 40960 tokens there and at tuner.json's `max_length` in
    tuner. config.json keeps `max_position_embeddings`: vLLM sizes its context from it (the card passes
    `--max-model-len` for the budget).
    """
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = max_length
    try:
        tokenizer.save_pretrained(path)
    finally:
        tokenizer.model_max_length = saved


def _export_meta(meta: dict[str, Any], fmt: str, base: str, dtype: str, encoder: PromptEncoder) -> dict[str, Any]:
    from tuner import __version__

    out = {
        "format": fmt,
        "base_model": base,
        "instruction": meta.get("instruction"),
        "max_length": meta.get("max_length", encoder.max_length),
        "yes_token_id": encoder.yes_id,
        "no_token_id": encoder.no_id,
        "dtype": dtype,
        "tuner_version": __version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "contract": encoder.metadata(),
    }
    for key in ("calibration", "recipe", "eval", "merge"):  # merge: what a `tuner merge` adapter sums
        if meta.get(key) is not None:
            out[key] = meta[key]
    if fmt == "merged":
        out["vllm_hf_overrides"] = VLLM_OVERRIDES
    return out


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_template(tokenizer, template: str, default_instruction: str | None) -> dict[str, Any]:
    """Render every probe through the chat template; compare with the contract's prompt string and ids."""
    encoder = PromptEncoder(tokenizer, max_length=10**6, safe_text=False)  # untruncated card ids
    strings = ids = 0
    for query, doc, instruction in PROBES:
        expected = render_prompt(query, doc, default_instruction if instruction is None else instruction)
        # the messages sentence-transformers builds (no system message for ""), plus the template variable that
        # is the only way to ask for no instruction
        rendered = tokenizer.apply_chat_template(
            pair_messages(query, doc, instruction),
            chat_template=template,
            tokenize=False,
            **template_kwargs(instruction),
        )
        strings += rendered == expected
        got = tokenizer(rendered, add_special_tokens=False, verbose=False)["input_ids"]
        want = encoder.encode(query, doc, default_instruction if instruction is None else instruction)
        ids += got == want
    return {"probes": len(PROBES), "prompt_strings_equal": strings, "token_ids_equal": ids}


def _probe_logits(reranker: Reranker) -> list[float]:
    return reranker.score_pairs(PROBES, normalize=False)


def _compare(got: Sequence[float], ref: Sequence[float], dtype: str, compared_with: str) -> dict[str, Any]:
    """One gate row: `got` against `ref` under `dtype`'s tolerance (`compared_with` names `ref` in the report)."""
    deltas = [abs(a - b) for a, b in zip(got, ref, strict=True)]
    worst = max(range(len(deltas)), key=lambda i: deltas[i] - tolerance_for(dtype, ref[i]))
    return {
        "max_abs_logit_delta": max(deltas),
        "passed": all(d <= tolerance_for(dtype, r) for d, r in zip(deltas, ref, strict=True)),
        "worst_probe": worst,
        "compared_with": compared_with,
        "tolerance": dtype,
        "logits": [round(x, 6) for x in got],
    }


def _tolerance_text(dtype: str) -> str:
    atol, rtol = TOLERANCE[dtype]
    return f"{atol:g}" + (f" + {rtol:g}·|logit|" if rtol else "")


def _in_memory_scorer(model: torch.nn.Module, tokenizer, instruction: str | None) -> Reranker:
    """The probes' scorer for a model still in memory (as the training-time scorer is built)."""
    return Reranker(model, tokenizer, max_length=PROBE_MAX_LENGTH, instruction=instruction, show_progress=False)


def _round_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round every parameter to `dtype` in place, keeping its storage dtype (fp32): the model then holds exactly
    the values an export in `dtype` stores, and can still be scored in fp32."""
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(dtype).to(param.dtype))


@dataclass
class _Source:
    """What an export is made from: a run's adapter (or a full fine-tune's whole model), its `tuner.json`, the base
    model it names and the inputs that `--out` must not replace."""

    model_dir: Path  # the adapter directory, or a full fine-tune's model folder (RUN/model or a checkpoint)
    meta: dict[str, Any]
    base: str  # a full fine-tune's is named by the card (fine-tuned from), not loaded
    inputs: dict[str, Path]
    full_model: Path | None = None  # model_dir, for a lora.enabled=false run: its whole model is the merged format

    @property
    def instruction(self) -> str | None:
        """The export's default instruction (the run's; None: the contract's)."""
        return self.meta.get("instruction")

    @property
    def is_checkpoint(self) -> bool:
        return self.model_dir.parent.name == "checkpoints"

    @property
    def run_dir(self) -> Path:
        """The run: the trainer saves the resolved recipe next to adapter/, and next to checkpoints/
        (tuner.train.CHECKPOINTS_DIR) for a checkpoint."""
        return self.model_dir.parent.parent if self.is_checkpoint else self.model_dir.parent

    def recipe_yaml(self) -> str | None:
        """The run's resolved recipe (`config.yaml`), written into every format as recipe.yaml; None without one."""
        run_config = self.run_dir / "config.yaml"
        return run_config.read_text(encoding="utf-8") if run_config.is_file() else None

    def warn_if_run_instruction_changed(self) -> None:
        """A checkpoint: warn if its run's final adapter (or model) was given another instruction since."""
        if self.is_checkpoint:
            # what `tuner instruct --apply RUN` rewrites: RUN/adapter, or a full fine-tune's RUN/model (tuner.train's)
            final = self.run_dir / ("model" if self.full_model is not None else "adapter")
            _warn_instruction_applied_to_run(self.model_dir, self.instruction, read_meta(final), final.name)


def _checked_formats(formats: Sequence[str]) -> list[str]:
    """The requested formats, each once in the order given; an unknown one, or none, is an error."""
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown export format(s) {unknown}; choose from {list(FORMATS)} or 'all'")
    return formats


def _resolve_source(source: str | Path, formats: list[str], base_model: str | None) -> tuple[_Source, list[str]]:
    """What `source` (a run, a checkpoint or an adapter directory) exports, and in which of `formats` (a full
    fine-tune has no adapter format)."""
    full = full_fine_tune_dir(source)  # a lora.enabled=false run: its whole model is the merged format already
    if full is not None:
        if base_model:
            raise ValueError(f"--base {base_model}: {full} is a full fine-tune, whole in itself (--base: an adapter's)")
        formats = _full_fine_tune_formats(formats, full)
        meta = read_meta(full)
        return _Source(full, meta, meta["base_model"], {"source": Path(source), "model": full}, full), formats
    adapter_dir = resolve_adapter_dir(source)
    meta = read_meta(adapter_dir) or read_meta(adapter_dir.parent)
    base = _base_model(adapter_dir, meta, base_model)
    inputs = {"source": Path(source), "adapter": adapter_dir, "base model": Path(base)}
    return _Source(adapter_dir, meta, base, inputs), formats


def _check_out(out: Path, inputs: dict[str, Path], overwrite: bool) -> None:
    """Refuse an `out` that would replace an input (always) or a folder that is not empty (without `overwrite`)."""
    _check_out_spares_inputs(out, inputs)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")


@dataclass
class _Parity:
    """The probes' logits as the export goes: the training-time scorer's (`reference`), the gate rows of the
    in-memory merged / seq-cls models, and what each loaded-back format must score (at fp32 tolerance)."""

    tokenizer: Any
    instruction: str | None
    reference: list[float]
    in_memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    expected: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.expected["adapter"] = self.reference

    def score(self, model: torch.nn.Module) -> list[float]:
        """The probes' logits of a model still in memory."""
        return _probe_logits(_in_memory_scorer(model, self.tokenizer, self.instruction))


def _training_time_model(src: _Source, device: torch.device):
    """The training-time scorer's model (base in fp32 + the adapter, or the fully fine-tuned model; eval mode, on
    `device`) and tokenizer."""
    from transformers import AutoModelForCausalLM

    if src.full_model is not None:
        tokenizer = _tokenizer_for(src.full_model, src.base)
        model = AutoModelForCausalLM.from_pretrained(src.full_model, dtype=torch.float32).to(device).eval()
    else:
        tokenizer = _tokenizer_for(src.model_dir, src.base)
        model = AutoModelForCausalLM.from_pretrained(src.base, dtype=torch.float32)
        model = load_adapter(model, src.model_dir, src.base).to(device).eval()
    return model, tokenizer


def _merged(model, full: bool, encoder: PromptEncoder) -> tuple[Any, torch.Tensor]:
    """The merged model (a full fine-tune's is the model itself; a PEFT model is consumed) as a Qwen3ForCausalLM,
    and its fp32 w_yes − w_no head `[hidden]`, taken before any cast (the seq-cls head and the card's math)."""
    merged = model if full else model.merge_and_unload()
    merged.config.architectures = ["Qwen3ForCausalLM"]
    lm_head, embed = merged.get_output_embeddings(), merged.get_input_embeddings()
    if merged.config.tie_word_embeddings and lm_head.weight.data_ptr() != embed.weight.data_ptr():
        merged.config.tie_word_embeddings = False  # a trained head (modules_to_save) must not be re-tied
    head = (lm_head.weight[encoder.yes_id].float() - lm_head.weight[encoder.no_id].float()).detach().clone()
    return merged, head


def _score_merged(merged, parity: _Parity, dtype: str) -> None:
    """The in-memory merged model's gate rows: the merge (exact arithmetic on fp32 weights) checked at fp32
    precision, before any rounding; then, for a bf16 export, its weights rounded to `dtype` in place and checked
    at that dtype's tolerance. The last logits are what the merged format must score when loaded back."""
    logits = parity.score(merged)
    parity.in_memory["merged"] = _compare(logits, parity.reference, EXACT, "reference")
    if _dtype(dtype) != torch.float32:
        _round_weights(merged, _dtype(dtype))
        logits = parity.score(merged)
        parity.in_memory[f"merged, weights rounded to {dtype}"] = _compare(logits, parity.reference, dtype, "reference")
    parity.expected["merged"] = parity.expected["merged (model-card code)"] = logits


def _seq_cls_model(merged, head: torch.Tensor, pad_token_id: int, torch_dtype: torch.dtype):
    """A Qwen3ForSequenceClassification sharing `merged`'s body, its one-logit head `head` as stored (rounded to
    `torch_dtype`, held in fp32)."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(merged.config)
    config.architectures = ["Qwen3ForSequenceClassification"]
    config.num_labels = 1
    # Qwen3ForSequenceClassification finds each row's last real token through the pad id
    config.pad_token_id = pad_token_id
    with torch.device("meta"):
        seq = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    seq.model = merged.model
    seq.score = torch.nn.Linear(config.hidden_size, 1, bias=False, device=head.device)
    with torch.no_grad():
        seq.score.weight.copy_(head.unsqueeze(0).to(torch_dtype).float())
    return seq


def _write_models(
    model, dirs: dict[str, Path], full: bool, parity: _Parity, encoder: PromptEncoder, dtype: str, max_shard_size
) -> None:
    """Write each requested format's weights and tokenizer into `dirs`: the adapter first (merging consumes the
    PEFT model), then merged, then seq-cls from it, scoring the in-memory merged and seq-cls models into
    `parity` on the way."""
    tokenizer, torch_dtype = parity.tokenizer, _dtype(dtype)
    if "adapter" in dirs:
        model.save_pretrained(dirs["adapter"], safe_serialization=True)
        save_tokenizer(tokenizer, dirs["adapter"], encoder.max_length)
    if "merged" not in dirs and "seq-cls" not in dirs:
        return
    merged, head = _merged(model, full, encoder)
    _score_merged(merged, parity, dtype)
    seq = None
    if "seq-cls" in dirs:
        seq = _seq_cls_model(merged, head, tokenizer.pad_token_id, torch_dtype)
        parity.expected["seq-cls"] = parity.score(seq)
        parity.in_memory["seq-cls"] = _compare(parity.expected["seq-cls"], parity.reference, dtype, "reference")
    merged.to(torch_dtype)  # lossless once rounded; shared with seq.model
    if "merged" in dirs:
        save_model(merged, dirs["merged"], max_shard_size)
        save_tokenizer(tokenizer, dirs["merged"], encoder.max_length)
    if seq is not None:
        seq.to(torch_dtype)
        save_model(seq, dirs["seq-cls"], max_shard_size)
        save_tokenizer(tokenizer, dirs["seq-cls"], encoder.max_length)


def _write_side_files(
    dirs: dict[str, Path], src: _Source, dtype: str, encoder: PromptEncoder, recipe_yaml: str | None, template: str
) -> None:
    """Each format's tuner.json (its parity figures come once the gate passed), recipe.yaml and chat template."""
    for fmt, path in dirs.items():
        _write_json(path / TUNER_META, _export_meta(src.meta, fmt, src.base, dtype, encoder))
        if recipe_yaml is not None:
            (path / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
        (path / "chat_template.jinja").write_text(template, encoding="utf-8")


def _loaded_back_rows(fmt: str, path: Path, parity: _Parity, device: torch.device) -> dict[str, dict[str, Any]]:
    """The gate rows of the format `fmt` written at `path`, loaded back fresh in fp32: its logits against what it
    was written from, and for merged also the model card's reference code's."""

    def check(fmt: str, logits: list[float]) -> dict[str, Any]:
        source = "reference" if fmt == "adapter" else f"in-memory {fmt.split(' ')[0]}"
        return _compare(logits, parity.expected[fmt], EXACT, source)

    # logits only, at the probes' budget: without calibrated=False, a calibration fitted at the export's
    # max_length warned, on every export of a calibrated run, that these probes' probabilities were not
    # calibrated
    loaded = Reranker.from_pretrained(
        path,
        device=device,
        dtype=torch.float32,
        max_length=PROBE_MAX_LENGTH,
        show_progress=False,
        calibrated=False,
    )
    rows = {fmt: check(fmt, _probe_logits(loaded))}
    if fmt == "merged":
        from tuner.reference import reference_scores

        card = reference_scores(
            loaded.model,
            loaded.tokenizer,
            [(q, d, parity.instruction if i is None else i) for q, d, i in PROBES],
            max_length=PROBE_MAX_LENGTH,
            batch_size=2,  # full-vocabulary logits: keep the [batch, seq, 151669] tensor small
            return_logits=True,
        )
        rows["merged (model-card code)"] = check("merged (model-card code)", card)
    return rows


def _parity_report(
    dirs: dict[str, Path], parity: _Parity, full: bool, dtype: str, device: torch.device, template: str
) -> dict[str, Any]:
    """The parity report: the in-memory rows, every format in `dirs` loaded back (one at a time), and the chat
    template's check (`passed` is the gate's)."""
    report: dict[str, Any] = {
        "reference": f"in-memory {'fully fine-tuned' if full else 'PEFT'} model, fp32, tuner Reranker",
        "dtype": dtype,
        "loaded_back_in": "float32",
        "device": str(device),
        "tolerance": {"atol": TOLERANCE[dtype][0], "rtol": TOLERANCE[dtype][1]},
        "exact_tolerance": {"atol": TOLERANCE[EXACT][0], "rtol": TOLERANCE[EXACT][1]},
        "probe_max_length": PROBE_MAX_LENGTH,
        "probes": len(PROBES),
        "reference_logits": [round(x, 6) for x in parity.reference],
        "in_memory": parity.in_memory,
        "formats": {},
    }
    for fmt, path in dirs.items():
        report["formats"].update(_loaded_back_rows(fmt, path, parity, device))
    report["template"] = check_template(parity.tokenizer, template, parity.instruction)
    return report


def _gate(report: dict[str, Any], dtype: str, out: Path) -> None:
    """Set the report's `passed`; raise `ParityError`, naming each failed row, when a row or the template failed."""
    rows = gate_rows(report)
    failed = [f for f, r in rows.items() if not r["passed"]]
    bad_template = report["template"]["prompt_strings_equal"] != len(PROBES) or (
        report["template"]["token_ids_equal"] != len(PROBES)
    )
    report["passed"] = not failed and not bad_template
    if not report["passed"]:
        details = ", ".join(
            f"{f}: max |Δ logit| {rows[f]['max_abs_logit_delta']:.3g} from the {rows[f]['compared_with']} "
            f"(tolerance {_tolerance_text(rows[f]['tolerance'])})"
            for f in failed
        )
        if bad_template:
            strings, ids = report["template"]["prompt_strings_equal"], report["template"]["token_ids_equal"]
            said = f"the chat template rendered the contract's prompt for {strings} of {len(PROBES)} probes"
            details = "; ".join(filter(None, [details, f"{said} ({ids} with its token ids)"]))
        raise ParityError(f"parity gate failed ({dtype}, logits in fp32): {details}; nothing was written to {out}")


def _record(dirs: dict[str, Path], tmp: Path, report: dict[str, Any], out: Path, recipe_yaml: str | None) -> None:
    """Add the passed report to each format's tuner.json and write its model card (as it will be at `out`); with
    several formats, the report is also `parity.json` at the top."""
    for fmt, path in dirs.items():
        export_meta = read_meta(path)
        export_meta["parity"] = report
        _write_json(path / TUNER_META, export_meta)
        (path / "README.md").write_text(
            model_card(out if len(dirs) == 1 else out / fmt, export_meta, recipe_yaml, name=out.name),
            encoding="utf-8",
        )
    if len(dirs) > 1:
        _write_json(tmp / "parity.json", report)


def export(
    source: str | Path,
    out: str | Path,
    formats: Sequence[str] = FORMATS,
    dtype: str = "float32",
    device: str | None = None,
    base_model: str | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the requested formats of a run's adapter to `out`, or raise `ParityError` and write nothing.

    Args:
        source: a training run directory (its `adapter/` is used) or an adapter directory; a full fine-tuning run
            (`RUN/model`, no adapter) exports its merged and seq-cls formats.
        out: destination. One format → the export itself; several → one subdirectory per format.
        formats: any of "adapter", "merged", "seq-cls".
        dtype: weights of merged / seq-cls exports ("float32" or "bfloat16"); every format is checked in fp32.
        device: where to merge and score (default: cuda if available).
        base_model: override the base recorded in the run.
        max_shard_size: safetensors shard size for merged / seq-cls.
        overwrite: replace an existing `out` (only after the new export passed).

    Returns:
        The parity report (also written into each export's `tuner.json`).
    """
    formats = _checked_formats(formats)
    _dtype(dtype)  # an unknown dtype is refused before anything is read
    out = Path(out).expanduser().resolve()
    src, formats = _resolve_source(source, formats, base_model)
    _check_out(out, src.inputs, overwrite)
    replaced = _replaced_settings(out, src.meta, src.model_dir)
    dev = resolve_device(device)
    recipe_yaml = src.recipe_yaml()
    src.warn_if_run_instruction_changed()

    # 1. The training-time scorer: base in fp32 + the adapter (or the fully fine-tuned model), through the same
    # Reranker the trainer evaluates.
    model, tokenizer = _training_time_model(src, dev)
    reference = _probe_logits(_in_memory_scorer(model, tokenizer, src.instruction))
    parity = _Parity(tokenizer, src.instruction, reference)
    encoder = PromptEncoder(tokenizer, max_length=int(src.meta.get("max_length") or DEFAULT_MAX_LENGTH))
    template = build_chat_template(src.instruction)
    tokenizer.chat_template = template

    # everything is written into a temporary folder that replaces `out` only when the parity gate passed (a
    # failure leaves no export and the previous one, if any); safetensors' private files get open()'s mode
    with atomic_dir(out) as tmp:
        dirs = {f: (tmp if len(formats) == 1 else tmp / f) for f in formats}
        # 2. Write. The adapter first (merging consumes the PEFT model), then merged, then seq-cls from it.
        _write_models(model, dirs, src.full_model is not None, parity, encoder, dtype, max_shard_size)
        del model
        _write_side_files(dirs, src, dtype, encoder, recipe_yaml, template)

        # 3. Load every format back fresh, in fp32 (a bf16 checkpoint is upcast exactly: the figures measure the
        # stored weights, not bf16 arithmetic), and score the probes again.
        report = _parity_report(dirs, parity, src.full_model is not None, dtype, dev, template)
        _gate(report, dtype, out)
        # 4. Record the figures and the model card, then move the export into place in one rename.
        _record(dirs, tmp, report, out, recipe_yaml)
    for note in replaced:  # said once the new export is in place (a failed one leaves the old one as it was)
        log.warning(note)
    return report
