"""`tuner merge`: weighted sums of LoRA adapters of one base, written as one adapter.

Two uses, both plain weight arithmetic on the adapters' deltas (ΔW = scale · B·A per adapted layer):

- **a soup**: the average of several checkpoints or runs of one base (`--weights` default 1/n each), the model
  merging the Qwen3 reranker report ends its recipe with;
- **an interpolation towards the base**: one adapter at a weight below 1 (WiSE-FT), which trades some of the
  in-domain gain for what fine-tuning cost out of domain; `tuner eval --compare` picks the weight on dev data.

The result is exactly W0 + Σ wᵢ·ΔWᵢ: peft's `add_weighted_adapter(combination_type="cat")` stacks the adapters
(rank = Σ rᵢ, each scale folded into its A), which we use rather than writing the arithmetic again; the merge is
then checked layer by layer against the sum of the sources' deltas, and nothing is written when it differs.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["merge_adapters"]

# |merged ΔW − Σ wᵢ ΔWᵢ| allowed, relative to the largest |Σ wᵢ ΔWᵢ| of the layer (fp32 arithmetic: ~1e-7)
MERGE_RTOL = 1e-5
# tuner.json keys that describe one source's training and would be wrong for the merge
_SOURCE_ONLY = ("eval", "calibration", "parity", "format", "instruction_search")


def _sources(paths: Sequence[str | Path]) -> list[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """(adapter dir, tuner.json, adapter_config.json) of each source: a run folder, an adapter or a checkpoint."""
    from tuner.export import resolve_adapter_dir
    from tuner.loading import read_meta

    out = []
    for path in paths:
        folder = resolve_adapter_dir(path)
        meta = read_meta(folder) or read_meta(folder.parent)
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("peft_type") != "LORA":
            raise ValueError(f"{folder}: a {config.get('peft_type')} adapter; tuner merge sums LoRA adapters")
        if config.get("use_dora"):
            raise ValueError(
                f"{folder}: a DoRA adapter (use_dora); its magnitude vectors do not add up like LoRA deltas"
            )
        if config.get("modules_to_save"):
            raise ValueError(f"{folder}: trains whole modules too (modules_to_save), which cannot be summed as LoRA")
        if config.get("lora_bias") or config.get("bias", "none") != "none":
            # peft's combination sums the A and B matrices only: a trained bias would be dropped without a word
            raise ValueError(f"{folder}: trains bias terms (lora_bias / bias), which peft's adapter sums leave out")
        out.append((folder, meta, config))
    if len(out) == 1 and (out[0][2].get("rank_pattern") or out[0][2].get("alpha_pattern")):
        # alone, peft combines it "linearly" into a config of one rank, while its layers keep their own ranks: the
        # written adapter would not load
        raise ValueError(f"{out[0][0]}: per-layer ranks (rank_pattern / alpha_pattern) merge only with other adapters")

    # peft builds the merged adapter's layer selection from the first source's config: the sources must agree on it
    def selection(config: dict, key: str) -> Any:  # peft writes sets as lists in hash order
        value = config.get(key)
        return sorted(value) if key == "exclude_modules" and isinstance(value, list) else value

    for key in ("layers_to_transform", "layers_pattern", "exclude_modules"):
        for folder, _, config in out[1:]:
            if selection(config, key) != selection(out[0][2], key):
                raise ValueError(
                    f"the adapters select layers differently ({key}: {out[0][2].get(key)!r} in {out[0][0]}, "
                    f"{config.get(key)!r} in {folder}); tuner merge needs the same selection"
                )
    kinds = {isinstance(config.get("target_modules"), str) for _, _, config in out}
    if len(kinds) > 1:
        regex = next(folder for folder, _, config in out if isinstance(config.get("target_modules"), str))
        raise ValueError(
            f"{regex} names its target modules by a pattern, the others by a list; peft cannot combine the two"
        )
    return out


def _same(sources, key: str, what: str) -> Any:
    """The one value of tuner.json's `key` over the sources, or an error naming two that differ."""
    values = [(folder, meta.get(key)) for folder, meta, _ in sources]
    first_folder, first = values[0]
    for folder, value in values[1:]:
        if value != first:
            raise ValueError(
                f"the adapters disagree on {what}: {first!r} in {first_folder} but {value!r} in {folder}; a merged "
                "adapter has one"
            )
    return first


def _check_written(folder: Path) -> None:
    """The written adapter's tensors have the rank its adapter_config.json says (what peft needs to load it back);
    from the safetensors header, without a second copy of the base."""
    from tuner.loading import _stored_adapter_shapes

    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("rank_pattern"):
        return
    for key, shape in (_stored_adapter_shapes(folder) or {}).items():
        rank = shape[0] if ".lora_A." in key else shape[1] if ".lora_B." in key else config["r"]
        if rank != config["r"]:
            raise ValueError(f"the merged adapter's {key} has rank {rank}, its config r={config['r']}; nothing written")


def _deltas(peft_model, name: str) -> dict[str, torch.Tensor]:
    """ΔW = scale · B·A of every LoRA layer of adapter `name`, by module name (fp32)."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for module_name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and name in module.lora_A:
            a, b = module.lora_A[name].weight.detach().float(), module.lora_B[name].weight.detach().float()
            out[module_name] = (b @ a) * module.scaling[name]
    return out


def merge_adapters(
    sources: Sequence[str | Path],
    out: str | Path,
    weights: Sequence[float] | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the adapter W0 + Σ wᵢ·ΔWᵢ of `sources` (LoRA adapters of one base) to `out`.

    Args:
        sources: training run folders (their `adapter/`), adapter folders or checkpoints.
        out: the merged adapter's folder (PEFT files, tokenizer and `tuner.json`, as training writes them).
        weights: one per source (default 1/n each: the average); one source at w < 1 moves it towards the base.
        base_model: the base, when the sources' `tuner.json` / `adapter_config.json` do not name a reachable one.
        overwrite: replace a non-empty `out` (only once the merge is written and checked).

    Returns:
        The `merge` record written into the output's `tuner.json` (sources, weights, rank, check).

    Raises:
        ValueError: sources of different bases, instructions, token budgets or contracts; non-LoRA adapters; a
            weight count that does not match; a merge that does not equal the weighted sum (nothing written).
    """
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    from tuner.export import _base_model, _check_out_spares_inputs, _tokenizer_for
    from tuner.files import atomic_dir, check_output_dir
    from tuner.loading import TUNER_META, load_adapter, peft_quietly

    if not sources:
        raise ValueError("tuner merge needs at least one adapter")
    weights = [1.0 / len(sources)] * len(sources) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources):
        raise ValueError(f"--weights: {len(weights)} weights for {len(sources)} adapters; give one per adapter")
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise ValueError(f"--weights: {bad[0]} is not a finite number")
    found = _sources(sources)
    folders = [folder for folder, _, _ in found]
    if len({f.resolve() for f in folders}) != len(folders):
        raise ValueError("the same adapter is given twice; weigh it once (--weights)")
    bases = [_base_model(folder, meta, base_model) for folder, meta, _ in found]
    other = next((i for i, b in enumerate(bases) if b != bases[0]), None)
    if other is not None:
        raise ValueError(
            f"the adapters have different bases: {bases[0]} ({folders[0]}) and {bases[other]} ({folders[other]})"
        )
    base = bases[0]
    instruction = _same(found, "instruction", "the instruction")
    max_length = _same(found, "max_length", "max_length")
    _same(found, "contract", "the prompt contract")
    out = Path(out).expanduser().resolve()
    inputs = {f"adapter #{i}": folder for i, folder in enumerate(folders, 1)}
    _check_out_spares_inputs(out, {**inputs, "base model": Path(base)})
    check_output_dir(out, "--out", overwrite=overwrite, replaced=True)

    # every source on one copy of the base, named a0, a1, ... ("default" is the merge: peft writes the default
    # adapter at the folder's top level). fp32, though the base's weights take no part in the sum: peft creates the
    # merged adapter in the base layers' dtype, and a bf16 one is off by ~4e-3 (the check below caught it); the 4B
    # base takes ~16 GB of RAM for it
    net = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    names = [f"a{i}" for i in range(len(found))]
    for name, folder in zip(names, folders, strict=True):
        net = load_adapter(net, folder, base, adapter_name=name)  # each checked against its stored tensors
    with peft_quietly():
        net.add_weighted_adapter(names, weights, adapter_name="default", combination_type="cat")
    config = net.peft_config["default"]
    if config.use_rslora:
        # peft keeps use_rslora from the first source but sets lora_alpha = r (scale 1 meant): with rslora the
        # reloaded adapter would scale by sqrt(r); the sources' scales are already folded into A
        config.use_rslora = False
        for module in net.modules():
            if isinstance(module, LoraLayer) and "default" in module.scaling:
                module.scaling["default"] = 1.0

    # the check: merged ΔW against Σ wᵢ ΔWᵢ, every layer, before anything is written
    merged = _deltas(net, "default")
    expected: dict[str, torch.Tensor] = {}
    for name, weight in zip(names, weights, strict=True):
        for layer, delta in _deltas(net, name).items():
            expected[layer] = expected.get(layer, 0) + weight * delta
    if set(merged) != set(expected):
        raise ValueError(f"the merge adapts {len(merged)} layers but the sources {len(expected)}")
    # weights that overflow float32 (--weights 1e308) give inf and nan deltas, which the comparison below passes
    # (inf - inf is nan, and nan > tolerance is false): the adapter was written, and every score was NaN
    overflow = next((layer for layer, delta in merged.items() if not bool(torch.isfinite(delta).all())), None)
    if overflow is not None:
        raise ValueError(
            f"--weights {' '.join(f'{w:g}' for w in weights)}: the merged adapter's weights are not finite in float32 "
            f"(first in {overflow}); choose smaller weights. Nothing written"
        )
    worst = 0.0
    for layer, want in expected.items():
        scale = float(want.abs().max()) or 1.0
        worst = max(worst, float((merged[layer] - want).abs().max()) / scale)
    if worst > MERGE_RTOL:
        raise ValueError(f"the merged adapter differs from the weighted sum by {worst:.2e} (relative); nothing written")

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        for name in names:
            net.delete_adapter(name)
    first_meta = found[0][1]
    record = {
        "sources": [str(f.resolve()) for f in folders],
        "weights": weights,
        "rank": int(config.r),
        "layers": len(merged),
        "max_rel_diff_vs_weighted_sum": worst,
    }
    meta = {k: v for k, v in first_meta.items() if k not in _SOURCE_ONLY}
    meta.update(base_model=base, instruction=instruction, max_length=max_length, recipe="merge", merge=record, eval={})
    tokenizer = _tokenizer_for(folders[0], base)
    with atomic_dir(out) as tmp:
        with peft_quietly():
            net.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / TUNER_META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _check_written(tmp)
    log.info("merged %d adapters (weights %s) into %s: rank %d", len(folders), weights, out, config.r)
    calibrated = [str(folder) for folder, source_meta, _ in found if source_meta.get("calibration")]
    if calibrated:  # fitted on a source's logits, which the merge changes: said, not dropped without a word
        log.warning(
            "the calibration of %s is not carried into %s (fitted on a source's scores, not the merge's); fit "
            "one for the merge: tuner calibrate --model %s --data DEV_PAIRS.jsonl --out "
            "runs/calibration --apply %s",
            " and ".join(calibrated),
            out,
            shlex.quote(str(out)),
            shlex.quote(str(out)),
        )
    return record
