"""`tuner eval`: the first stage, a model (base and tuned) and comparisons on one BEIR split, written as a report.

`run_eval` scores every system with one `tuner.evaluate.Evaluator` (same queries, same candidates) and hands the
rows to `tuner.report.write_report`. The helpers that load the model (`ModelOptions`, `load_reranker`) and build
the rows and the run facts (`candidates_source`, `first_stage_system`, `report_meta`) are shared with
`tuner instruct` and `tuner calibrate`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.evaluate import RANDOM_ORDER, EvalResult, Evaluator

if TYPE_CHECKING:
    from tuner.overlap import TrainingView

__all__ = [
    "ModelOptions",
    "candidates_source",
    "first_stage_system",
    "load_reranker",
    "parse_instruction",
    "report_meta",
    "run_eval",
    "system_label",
    "tuned_label",
]


def parse_instruction(spec: str | None) -> str | None:
    """CLI instruction spec → instruction: `default` (or None) → None (the model's default), `none` → ""."""
    if spec is None or spec.strip().lower() == "default":
        return None
    if spec.strip().lower() == "none":
        return ""
    return spec


def _instruction_tag(instruction: str | None, n: int) -> str:
    if instruction is None:
        return "default"
    if instruction == "":
        return "none"
    return f"custom {n}"


@dataclass(frozen=True)
class ModelOptions:
    """How `tuner eval`, `instruct` and `calibrate` load a `Reranker` (None → `Reranker.from_pretrained`'s default).

    Attributes:
        device: "cpu", "cuda", "cuda:1" ... (None: cuda when available).
        dtype: "bfloat16", "float16" or "float32" (None: bf16 on GPU, fp32 on CPU).
        max_length: prompt token budget (None: the export's `tuner.json`, else the contract's 8192).
        batch_tokens: padded tokens per forward pass.
        prefix_reuse, packing, attn_implementation: the `Reranker` fast paths (same scores).
    """

    device: str | None = None
    dtype: str | None = None
    max_length: int | None = None
    batch_tokens: int | None = None
    prefix_reuse: bool | str = False
    packing: bool = False
    attn_implementation: str | None = None


def load_reranker(model: str, adapter: str | None = None, options: ModelOptions | None = None):
    """`Reranker.from_pretrained(model, adapter=adapter)` with `options` (default `ModelOptions()`).

    Returns:
        The loaded `tuner.scoring.Reranker`.
    """
    from tuner.scoring import Reranker

    kwargs: dict[str, Any] = asdict(options or ModelOptions())
    if kwargs["max_length"] is None:
        del kwargs["max_length"]
    return Reranker.from_pretrained(model, adapter=adapter, **kwargs)


def candidates_source(candidates: str | Path) -> str:
    """How reports name the first stage: "BM25" or the run file's path."""
    return "BM25" if str(candidates).lower() == "bm25" else str(candidates)


def build_evaluator(
    beir: str | Path | None,
    data: str | Path | None,
    split: str,
    candidates: str | Path,
    top_k: int,
    max_queries: int | None,
    seed: int,
    cache_dir: str | Path | None,
    show_progress: bool | None,
    metrics: Sequence[str] | None = None,
) -> tuple[Evaluator, str]:
    """The evaluator of `tuner eval` / `tuner instruct` and how reports name its first stage: a BEIR split with
    `candidates` (BM25 or a run file), or a training-format `data` file's groups in a seeded random order.
    `metrics` (the first primary, as a recipe's `eval.metrics`; None: the `Evaluator`'s default) are reported."""
    kwargs: dict[str, Any] = {"show_progress": show_progress}
    if metrics is not None:
        kwargs.update(metrics=list(metrics), primary_metric=metrics[0])
    if data is not None:
        evaluator = Evaluator.from_groups(data, split, max_queries, seed, **kwargs)
        return evaluator, RANDOM_ORDER
    evaluator = Evaluator.from_beir(beir, split, candidates, top_k, max_queries, seed, cache_dir, **kwargs)
    return evaluator, candidates_source(candidates)


def first_stage_system(evaluator: Evaluator, source: str) -> EvalResult:
    """The first stage as a report row, labelled by its source (see `candidates_source`)."""
    result = evaluator.first_stage_result(f"first stage ({Path(source).name})")
    result.info = {"model": source}
    return result


def report_meta(
    evaluator: Evaluator,
    beir: str | Path,
    split: str,
    source: str,
    top_k: int,
    max_queries: int | None,
    **extra: Any,
) -> dict[str, Any]:
    """The run facts at the top of `metrics.json`; `extra` keys go before `max_queries`; the evaluator's warnings
    (e.g. judged-relevant documents the corpus lacks) last, when there are any."""
    return {
        "dataset": Path(beir).name,
        "split": split if source != RANDOM_ORDER or Path(beir).is_dir() else "",  # a labeled file: no split
        "candidates": source,
        "top_k": top_k,
        "pairs_per_model": evaluator.num_pairs,
        **extra,
        "max_queries": max_queries,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"warnings": list(evaluator.warnings)} if getattr(evaluator, "warnings", None) else {}),
    }


def _base_cache(folder: str | Path, model: str, options: ModelOptions | None, reranker):
    """The base cache of one eval. Its key takes the prompt budget, and each entry the instruction (get's and put's
    `variant`), that the base is scored with as resolved: an adapter's tuner.json can set both (None would be "the
    model's default", which differs between adapters of one base)."""
    from tuner.base_cache import BaseCache

    inputs = {
        "command": "eval",
        "options": asdict(options or ModelOptions()),
        "max_length": reranker.encoder.max_length,
    }
    return BaseCache(folder, model, inputs, what="--base-cache")


def _cached_result(entry: dict[str, Any], label: str) -> EvalResult:
    """An `EvalResult` of a base evaluation read from the cache (JSON: ranked pairs come back as lists)."""
    run = {qid: [(str(d), float(score)) for d, score in ranking] for qid, ranking in entry["run"].items()}
    info = {**entry.get("info", {}), "base_cache": "read from --base-cache (measured by an earlier tuner eval)"}
    return EvalResult(
        label=label,
        metrics=entry["metrics"],
        per_query=entry["per_query"],
        run=run,
        seconds=float(entry.get("seconds", 0.0)),
        pairs=int(entry.get("pairs", 0)),
        info=info,
    )


def system_label(model: str) -> str:
    """How the report names a model given by path: its folder's name, or for the folders every run and export has
    (RUN/adapter, RUN/model, RUN/checkpoints/checkpoint-N, EXPORT/merged, EXPORT/seq-cls) the run's or export's name
    with it, so that `--compare runs/a/adapter runs/b/adapter` gives rows "a/adapter" and "b/adapter", not "adapter"
    and "adapter (2)". A hub id is named by its model part."""
    path = Path(model)
    if path.exists():  # `--compare adapter` from inside the run folder; a symlink (runs/best) keeps its own name
        path = Path(os.path.abspath(path))
    if path.name in ("adapter", "model", "merged", "seq-cls") and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{path.parent.parent.name}/{path.name}"
    return path.name or model


def tuned_label(given: str, weights: str) -> str:
    """How the report names the model `tuner eval` evaluates with its adapter enabled (next to "base": the same
    weights with it disabled): by its run, as `system_label` names the `--compare` systems, when `weights` (the
    adapter, or a fully fine-tuned model) comes from a tuner run (`RUN`, `RUN/adapter`, a checkpoint, a merge of
    runs' adapters), so that `--adapter runs/a --compare runs/b` gives rows "a" and "b"; else "tuned". `given` is
    the path as the user wrote it."""
    from tuner.overlap import runs_of_adapter

    try:
        from_run = bool(runs_of_adapter(weights))
    except (OSError, ValueError):  # a merge with a source from no run: not one run's
        from_run = False
    return system_label(given) if from_run else "tuned"


def _unique(label: str, taken: set[str]) -> str:
    out, n = label, 2
    while out in taken:
        out, n = f"{label} ({n})", n + 1
    taken.add(out)
    return out


def _check_compared(compare: Sequence[str]) -> None:
    """A `--compare` system that is no local folder and that the hub cannot provide fails before any scoring: it
    loads after the first stage, base and tuned rows are scored (minutes to hours on a large set), and a typo was
    found only then, losing them. A folder that exists is checked when it loads."""
    from tuner.loading import ModelNotFoundError, _check_reachable

    for other in compare:
        if not Path(other).expanduser().exists():
            try:
                _check_reachable(other)
            except ModelNotFoundError as err:
                raise ModelNotFoundError(f"--compare: {err}") from None


def run_eval(
    model: str,
    beir: str | Path | None,
    out_dir: str | Path,
    adapter: str | None = None,
    split: str = "test",
    candidates: str | Path = "bm25",
    top_k: int = 100,
    instructions: Sequence[str | None] = (None,),
    compare: Sequence[str] = (),
    max_queries: int | None = None,
    seed: int = 0,
    options: ModelOptions | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool | None = True,
    data: str | Path | None = None,
    train_data: str | Path | TrainingView | None = None,
    train_split: str | None = None,
    base_cache_dir: str | Path | None = None,
    metrics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate the first stage, a model (base and tuned when an adapter is given) and comparisons; write a report.

    The queries are a BEIR folder's split (`beir`, with `candidates` from BM25 or a run file), or the groups of a
    training-format file (`data`, instead of `beir`: each group's documents are its candidates, and the first
    stage row is their seeded random order; see `Evaluator.from_groups`).

    With an adapter, the base is the same loaded model with the adapter disabled (no second copy in memory).
    Each model is scored under each instruction of `instructions` (None → its default, "" → none). Comparison
    adapters load on `model` as base; comparison models load on their own, one at a time, after the main model
    is released. The first model row is the reference for deltas and paired tests. Every model loads with
    `options` (device, dtype, budgets, fast paths).

    With `train_data` (a training file or folder, a BEIR folder with `train_split`, or a tuner run folder, see
    `tuner.overlap.training_view`; or a `TrainingView` read already), the queries are also split into those the
    training data covers (the query, or one of its relevant documents as a positive) and the rest, and every
    system is reported on each part.

    With `base_cache_dir`, the base's evaluation (an adapter's, with the adapter disabled) is read from there when
    an earlier `tuner eval` measured the same base on the same set with the same options and instruction (the
    entry's key: `tuner.base_cache`), and written there when measured: evaluating run after run of one base scores
    the base once.

    `metrics` are the figures reported, named as a recipe's `eval.metrics` (the first is primary: the paired tests
    and the plot use it); None: `tuner.metrics.DEFAULT_METRICS` with nDCG@10 primary.

    Returns:
        The summary written to `out_dir/metrics.json`.
    """
    import gc

    from tuner.loading import split_adapter
    from tuner.report import check_report_targets, prepare_out_dir, write_report

    prepare_out_dir(out_dir)
    check_report_targets(out_dir)  # a folder named report.png fails now, not after the scoring
    _check_compared(compare)
    instructions = list(instructions) or [None]
    evaluator, source = build_evaluator(
        beir, data, split, candidates, top_k, max_queries, seed, cache_dir, show_progress, metrics
    )
    overlap = None
    if train_data is not None:  # read before any scoring: a source that cannot be read fails in seconds
        from tuner.overlap import TrainingView, split_queries, training_view

        view = train_data if isinstance(train_data, TrainingView) else training_view(train_data, train_split)
        overlap = split_queries(evaluator.queries, evaluator.qrels, evaluator.relevant_documents, view)
        overlap.update(source=view.source, training_queries=view.groups)
    results = [first_stage_system(evaluator, source)]
    taken = {results[0].label}

    def score_all(reranker, label: str, info: dict[str, Any], cache=None) -> None:
        for n, instruction in enumerate(instructions, 1):
            name = label if len(instructions) == 1 else f"{label} [{_instruction_tag(instruction, n)}]"
            variant = {"instruction": reranker.instruction if instruction is None else instruction}
            entry = cache.get(evaluator, variant) if cache is not None else None
            if entry is not None and isinstance(entry.get("run"), dict):
                result = _cached_result(entry, _unique(name, taken))
            else:
                result = evaluator.evaluate(reranker, instruction=instruction, label=_unique(name, taken))
                if cache is not None:
                    record = {"seconds": result.seconds, "pairs": result.pairs, "info": result.info}
                    cache.put(
                        evaluator, result.metrics, result.per_query, "tuner eval", variant, run=result.run, **record
                    )
            result.info = {**info, **result.info}
            results.append(result)

    main_is_adapter = adapter is None and (Path(model) / "adapter_config.json").is_file()
    # an adapter given alone as `model` is scored on the base it names: that base keys the cache and the reports
    base, main_adapter = split_adapter(model) if main_is_adapter else (model, adapter)
    reranker = load_reranker(base, main_adapter, options)
    if hasattr(reranker.model, "disable_adapter"):  # PEFT: base = adapter disabled, same weights in memory
        with reranker.model.disable_adapter():
            base_info = {"model": base, "adapter": None, "note": "adapter disabled"}
            cache = _base_cache(base_cache_dir, base, options, reranker) if base_cache_dir is not None else None
            score_all(reranker, "base", base_info, cache)
        label = tuned_label(adapter or model, main_adapter or base)
        score_all(reranker, label, {"model": base, "adapter": main_adapter})
    else:
        score_all(reranker, system_label(model), {"model": model, "adapter": None})
    del reranker
    gc.collect()

    for other in compare:
        if (Path(other) / "adapter_config.json").is_file() and not main_is_adapter:
            other_reranker = load_reranker(model, other, options)
            info = {"model": model, "adapter": other}
        else:
            other_reranker = load_reranker(other, None, options)
            info = {"model": other, "adapter": None}
        score_all(other_reranker, system_label(other), info)
        del other_reranker
        gc.collect()

    meta = report_meta(evaluator, data or beir, split, source, evaluator.top_k, max_queries, instructions=instructions)
    return write_report(
        out_dir, results, 1, evaluator.metrics, evaluator.primary_metric, meta, qrels=evaluator.qrels, overlap=overlap
    )
