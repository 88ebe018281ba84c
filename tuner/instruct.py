"""Instruction search: score candidate task instructions on the same first-stage candidates and keep the best.

Qwen3-Reranker is instruction-aware, so the cheapest customization is choosing the instruction. Every candidate
is scored by the one `Evaluator` on the same queries and the same top-k candidates (so the comparison is paired by
query), and compared with the model's default through `report.paired_stats`. The winner is the instruction with
the best mean primary metric (nDCG@10), ties going to the default, then to the earlier candidate; it is written
as `instruction` into a `tuner.json`, which `Reranker.from_pretrained`, `tuner export` and `tuner serve` read as
their default instruction.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.contract import DEFAULT_INSTRUCTION, effective_instruction
from tuner.eval_run import ModelOptions, build_evaluator, first_stage_system, load_reranker, report_meta
from tuner.evaluate import EvalResult, Evaluator
from tuner.files import atomic_write, decode_utf8
from tuner.loading import TUNER_META, read_meta
from tuner.report import paired_stats

log = logging.getLogger(__name__)

__all__ = [
    "SIGNIFICANCE_LEVEL",
    "Candidate",
    "NotSignificantError",
    "apply_meta",
    "apply_targets",
    "candidate_instructions",
    "current_instructions",
    "read_instructions",
    "run_instruct",
    "search",
]


# A winner whose paired randomization p-value vs the instruction in use is at or above this is not trusted: the
# report says so, and `--apply` refuses it without `force` (a noise-level "gain" used to replace the instruction and
# remove the calibration fitted with it).
SIGNIFICANCE_LEVEL = 0.05


class NotSignificantError(ValueError):
    """`--apply` refused: the winner is not significantly better than the instruction in use (the report was
    written)."""


@dataclass(frozen=True)
class Candidate:
    """One instruction under test: its report label and its text (`""` = no instruction)."""

    label: str
    text: str


def read_instructions(path: str | Path) -> list[str]:
    """Instructions from a text file, one per line; blank lines and lines starting with `#` are skipped."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder; --instructions takes a text file with one instruction per line")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such instructions file")
    # a bad byte names its line; a BOM is dropped; lines end at "\n" only, as in every other text file tuner reads
    # (str.splitlines would also break an instruction at U+2028 or a form feed)
    lines = decode_utf8(path.read_bytes(), path).split("\n")
    out = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not out:
        raise ValueError(f"{path}: no instruction in the file (one per line; '#' starts a comment)")
    return out


def candidate_instructions(
    custom: Sequence[str], model_default: str | None, current: Sequence[str] = ()
) -> list[Candidate]:
    """The default (the model's, else the model card's), the card's if different, no instruction, then `custom`,
    then `current` (the instructions the `--apply` target uses: the winner is tested against them).

    Duplicates are dropped (the first label wins), so "default" is always candidate 0: the paired reference.
    """
    default = effective_instruction(model_default)
    items = [Candidate("default", default)]
    if default != DEFAULT_INSTRUCTION:
        items.append(Candidate("model card default", DEFAULT_INSTRUCTION))
    items.append(Candidate("no instruction", ""))
    items += [Candidate(f"custom {n}", text) for n, text in enumerate(custom, 1)]
    items += [Candidate("in use by --apply", text) for text in current]
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.text not in seen:
            seen.add(item.text)
            unique.append(item)
    return unique


def search(reranker, evaluator: Evaluator, candidates: Sequence[Candidate]) -> tuple[list[EvalResult], int]:
    """Evaluate `reranker` under each candidate instruction; return the results and the winner's index.

    The winner has the highest mean `evaluator.primary_metric`; ties go to the default (index 0), then to the
    earlier candidate, so a custom instruction must measurably beat the default to be chosen.
    """
    results = []
    for cand in candidates:
        result = evaluator.evaluate(reranker, instruction=cand.text, label=cand.label)
        result.info["instruction"] = cand.text
        results.append(result)
    primary = evaluator.primary_metric
    best = max(range(len(results)), key=lambda i: (results[i].metrics[primary], -i))
    return results, best


def apply_targets(target: str | Path) -> list[Path]:
    """The directories whose `tuner.json` `apply_meta(target, ...)` updates; raise if there are none.

    `target` may be a model or adapter directory (config.json or adapter_config.json), a training run (its
    `adapter/` only, as `tuner export` does), or a multi-format export (each format subdirectory, adapter/
    included). The CLI calls this before scoring, so that a wrong `--apply` fails before the work, not after it.
    """
    root = Path(target).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such adapter, run or export directory")

    def is_model(d: Path) -> bool:
        return (d / "config.json").is_file() or (d / "adapter_config.json").is_file()

    # A training run and a `tuner export --format all` root both hold an adapter/; the run is told apart by the
    # resolved recipe the trainer saves next to it (tuner.train.CONFIG_FILE). Checking adapter/ first took an
    # export root for a run and left its merged/ and seq-cls/ on the old instruction and calibration.
    is_run = (root / "config.yaml").is_file() and is_model(root / "adapter")
    if is_model(root):
        dirs = [root]
    elif is_run:
        dirs = [root / "adapter"]  # an export saved inside the run is not the run's model
    else:
        dirs = sorted(d for d in root.iterdir() if d.is_dir() and is_model(d) and (d / TUNER_META).is_file())
        if not dirs and is_model(root / "adapter"):
            dirs = [root / "adapter"]  # a run without its config.yaml (copied by hand, or from an older tuner)
    if not dirs:
        raise FileNotFoundError(
            f"{root}: neither a model/adapter directory (config.json or adapter_config.json), a run with adapter/, "
            "nor an export with format subdirectories"
        )
    return dirs


def apply_meta(
    target: str | Path, updates: Mapping[str, Any], on_warning: Callable[[str], None] = log.warning
) -> list[Path]:
    """Merge `updates` into the `tuner.json` of each `apply_targets(target)` directory, atomically, keeping other
    keys.

    A new `instruction` (without a new `calibration`) removes a stored calibration that was fitted with another
    instruction, or that does not record the one it was fitted with (written before `tuner calibrate` recorded
    it): its probabilities would no longer be calibrated. `on_warning` gets one message per removal, naming the
    `tuner calibrate` command that fits it again.

    A new `instruction` also regenerates every chat template tuner generated that the directory ships
    (`chat_template.jinja`, a tokenizer_config.json `chat_template`) with `build_chat_template`, as `tuner export`
    made them: sentence-transformers, transformers and vLLM read their default instruction from it. An export's
    template is checked against the contract's prompt again and its model card rewritten. Everything is prepared
    for every directory before the first file is written, so a failing check changes nothing.

    Returns:
        The `tuner.json` files written.

    Raises:
        ValueError: a regenerated template does not render the contract's prompt.
    """
    from tuner.export_card import model_card
    from tuner.serve_vllm import default_served_name

    plans = [_plan_update(d, updates, target) for d in apply_targets(target)]
    written = []
    for d, meta, files, notes in plans:
        for path, text in files.items():  # the templates first: tuner.json is the record of what was applied
            atomic_write(path, text)
        written.append(atomic_write(d / TUNER_META, json.dumps(meta, indent=2, ensure_ascii=False) + "\n"))
        if meta.get("format") and (d / "README.md").is_file():
            # an export's model card states the instruction and the calibration: rewrite it from the new tuner.json
            recipe = d / "recipe.yaml"
            recipe_yaml = recipe.read_text(encoding="utf-8") if recipe.is_file() else None
            atomic_write(d / "README.md", model_card(d, meta, recipe_yaml, name=default_served_name(d)))
        for note in notes:  # once it is done, not when it was planned: a later failure writes nothing
            on_warning(note)
    return written


def _plan_update(
    d: Path, updates: Mapping[str, Any], target: str | Path
) -> tuple[Path, dict[str, Any], dict[Path, str], list[str]]:
    """`d`, its new `tuner.json` content, the other files to rewrite (path → text) and the warnings to give once
    they are written; nothing is written here."""
    meta = read_meta(d)
    old_instruction = meta.get("instruction")
    meta.update(updates)
    files: dict[Path, str] = {}
    notes: list[str] = []
    new_instruction = meta.get("instruction")
    if "instruction" in updates and "calibration" not in updates and meta.get("calibration"):
        stale = _stale_calibration(meta["calibration"], new_instruction)
        if stale:
            calibration = meta.pop("calibration")
            notes.append(
                f"removed the calibration (temperature {calibration.get('temperature', 1.0)}, bias "
                f"{calibration.get('bias', 0.0)}) from {d / TUNER_META}: {stale}; fit it again on labeled dev "
                f"pairs: tuner calibrate --model {shlex.quote(str(d))} --data DEV_PAIRS.jsonl --out runs/calibration "
                f"--apply {shlex.quote(str(target))}"
            )
    new_calibration = updates.get("calibration")
    fitted = new_calibration.get("instruction") if isinstance(new_calibration, Mapping) else None
    if fitted is not None and fitted != effective_instruction(new_instruction):
        # kept, as asked, but its probabilities hold for pairs scored with the instruction it was fitted with
        notes.append(
            f"{d / TUNER_META}: the calibration was fitted with instruction {fitted!r}, but this model's default "
            f"instruction is {effective_instruction(new_instruction)!r}: its probabilities hold for prompts with the "
            "former"
        )
    # None and the model card's text are the same default: compare what a prompt would say
    if "instruction" in updates and effective_instruction(new_instruction) != effective_instruction(old_instruction):
        files = _regenerated_templates(d, new_instruction)
        parity = meta.get("parity")
        if isinstance(parity, dict):
            meta["parity"] = _reparity(d, dict(parity), old_instruction, new_instruction, files)
    return d, meta, files, notes


def _stale_calibration(calibration: Mapping[str, Any], instruction: str | None) -> str | None:
    """Why `calibration` does not hold under `instruction` (None when it does): the instruction it was fitted with
    differs, or it records none (`tuner calibrate` before the record), so that nothing vouches for it."""
    fitted, applied = calibration.get("instruction"), effective_instruction(instruction)
    if fitted is None:
        return (
            f"it does not record the instruction it was fitted with, so nothing says that it holds for the applied "
            f"instruction {applied!r}"
        )
    if fitted != applied:
        return f"it was fitted with instruction {fitted!r}, its probabilities do not hold for the applied {applied!r}"
    return None


def _regenerated_templates(d: Path, instruction: str | None) -> dict[Path, str]:
    """The new text of each chat template tuner generated that `d` ships, with `instruction` as its default.

    `tuner export` writes the template as `chat_template.jinja` (where transformers 5 saves a tokenizer's template,
    and what the card's `vllm serve --chat-template` names); a `chat_template` in tokenizer_config.json (older
    transformers) is covered too. A template tuner did not generate (a base model's own) is left alone.
    """
    from tuner.chat_template import build_chat_template, is_tuner_template
    from tuner.loading import _read_json

    template = build_chat_template(instruction)
    files: dict[Path, str] = {}
    jinja = d / "chat_template.jinja"
    if jinja.is_file() and is_tuner_template(jinja.read_text(encoding="utf-8")):
        files[jinja] = template
    config_file = d / "tokenizer_config.json"
    if config_file.is_file():
        config = _read_json(config_file)
        if is_tuner_template(config.get("chat_template")):
            config["chat_template"] = template
            files[config_file] = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    return files


def _reparity(
    d: Path, parity: dict[str, Any], old: str | None, new: str | None, templates: Mapping[Path, str]
) -> dict[str, Any]:
    """An export's parity record after its default instruction changed from `old` to `new`.

    The logit figures stay (the weights did not change; they were measured with the export-time default). The
    template figures are measured again on the regenerated template, so that the card does not claim a check of a
    template the export no longer ships; without a template or a tokenizer to check it with, they are dropped.
    """
    from tuner.chat_template import build_chat_template

    export_instruction = parity.get("instruction_changed", {"from": old})["from"]
    parity.pop("template", None)
    rechecked = False
    if templates:
        check = _check_template(d, build_chat_template(new), new)
        if check is not None:
            if check["prompt_strings_equal"] != check["probes"] or check["token_ids_equal"] != check["probes"]:
                raise ValueError(
                    f"{d}: the chat template regenerated for instruction {new!r} rendered {check} of "
                    f"{check['probes']} probes as the contract's prompt; nothing was changed"
                )
            parity["template"] = check
            rechecked = True
    if effective_instruction(new) == effective_instruction(export_instruction):
        parity.pop("instruction_changed", None)  # back to the export's own: the export-time figures hold again
    else:
        parity["instruction_changed"] = {
            "from": export_instruction,
            "to": new,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "template_rechecked": rechecked,
        }
    return parity


def _check_template(d: Path, template: str, instruction: str | None) -> dict[str, Any] | None:
    """`tuner.export.check_template` with the tokenizer saved in `d`; None when `d` has none."""
    from transformers import AutoTokenizer

    from tuner.contract import prepare_tokenizer
    from tuner.export import check_template

    if not any((d / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        return None
    return check_template(prepare_tokenizer(AutoTokenizer.from_pretrained(str(d))), template, instruction)


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.4f}"


def _significant(stats: Mapping[str, Any] | None, level: float = SIGNIFICANCE_LEVEL) -> bool:
    """Whether a paired comparison (`report.paired_stats`) is significant at `level`, by its randomization test
    (the one `report.md` judges by; None, an undefined test, is not significant)."""
    p = None if stats is None else stats.get("p_randomization")
    return p is not None and p < level


def winner_level(candidates: int) -> float:
    """The level a winner's paired test must pass: `SIGNIFICANCE_LEVEL` / (candidates − 1), Bonferroni. The
    winner is the best of several on the same queries, so an uncorrected 0.05 let pure noise through about twice
    as often (12% of trials for the best of 8 equal instructions, 6.5% for one chosen in advance)."""
    return SIGNIFICANCE_LEVEL / max(1, candidates - 1)


def _versus(results: Sequence[EvalResult], reference: int, other: int, metric: str) -> dict[str, Any]:
    """`report.paired_stats` of `metric`, per query, of `results[other]` against `results[reference]`."""
    qids = list(results[reference].per_query)  # the order `report.build_summary` pairs them in
    ref, oth = results[reference].per_query, results[other].per_query
    return paired_stats([ref[q][metric] for q in qids], [oth[q][metric] for q in qids])


def _gain(winner: Candidate, ref: Candidate, stats: Mapping[str, Any], metric: str, against: str) -> str:
    """ "the winner 'custom 1' ('Find X') gains +0.0015 nDCG@10 over <against> ('...'): 5 wins / 89 ties / 6
    losses, p = 0.8600 (paired randomization test)"."""
    from tuner.report import pretty_metric

    return (
        f"the winner {winner.label!r} ({winner.text!r}) gains {stats['delta']:+.4f} {pretty_metric(metric)} over "
        f"{against} ({ref.text!r}): {stats['wins']} wins / {stats['ties']} ties / {stats['losses']} losses, "
        f"p = {_fmt_p(stats.get('p_randomization'))} (paired randomization test)"
    )


def current_instructions(target: str | Path) -> list[str]:
    """The instructions the `apply_targets(target)` directories use now (their `tuner.json`'s, else the model card's
    default), without duplicates: a winner must beat them to be applied."""
    out: list[str] = []
    for d in apply_targets(target):
        text = effective_instruction(read_meta(d).get("instruction"))
        if text not in out:
            out.append(text)
    return out


def _render_search(summary: Mapping[str, Any]) -> str:
    search_info = summary["instruction_search"]
    primary = summary["primary_metric"]
    lines = [
        "# Instruction search",
        "",
        f"Winner: **{search_info['winner_label']}** ({primary} {search_info['winner_value']:.4f}, "
        f"{search_info['delta_vs_default']:+.4f} against the default); written as `instruction` to `tuner.json`.",
    ]
    stats = search_info.get("winner_vs_default")
    if stats:
        p_t, p_r = stats.get("p_ttest"), stats.get("p_randomization")
        lines.append("")
        lines.append(
            f"Paired against the default over {stats['queries']} queries: {stats['wins']} wins / {stats['ties']} ties "
            f"/ {stats['losses']} losses, p = {_fmt_p(p_t)} (t-test), {_fmt_p(p_r)} (randomization)."
        )
        level = search_info.get("significance_level", SIGNIFICANCE_LEVEL)
        if not _significant(stats, level):
            lines.append(
                f"The difference is not significant at {level:.3g} ({SIGNIFICANCE_LEVEL:g} over the "
                f"{len(search_info['candidates']) - 1} alternatives to the default, Bonferroni: the winner is the best "
                "of them): more queries would be needed to trust it."
            )
    for key, head in (("apply_refused", "Not applied"), ("apply_skipped", "Nothing applied")):
        if search_info.get(key):
            lines += ["", f"> **{head}:** {search_info[key]}"]
    lines += [
        "",
        "| candidate | instruction |",
        "|---|---|",
    ]
    for cand in search_info["candidates"]:
        text = "(none)" if cand["text"] == "" else cand["text"].replace("|", "\\|")
        lines.append(f"| {cand['label']} | {text} |")
    lines.append("")
    return "\n".join(lines)


def trained_on_note(model: str, adapter: str | None, queries: Iterable[str], name: str, advice: str) -> str | None:
    """A warning when a search (or a calibration fit) runs on queries the model's tuner run trained on: it would fit
    what the run learned, which new queries do not get (None when there are none, or the model is from no run)."""
    from tuner.overlap import trained_queries

    texts = set(queries)
    trained, runs = trained_queries(model, adapter, texts)
    if not trained:
        return None
    names = ", ".join(str(r) for r in runs)
    return (
        f"{trained} of the {len(texts)} queries of {name} are queries run {names} trained on: the model scores them "
        f"as it learned them, not as it will score new queries: {advice}"
    )


def run_instruct(
    model: str,
    beir: str | Path | None,
    out_dir: str | Path,
    adapter: str | None = None,
    split: str = "test",
    candidates: str | Path = "bm25",
    instructions: Sequence[str] = (),
    top_k: int = 50,
    max_queries: int | None = None,
    seed: int = 0,
    apply: str | Path | None = None,
    options: ModelOptions | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool | None = None,
    data: str | Path | None = None,
    force: bool = False,
    metrics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Search instructions on a BEIR split (or a labeled `data` file's groups, see `Evaluator.from_groups`) and
    write the report, `tuner.json` (and `apply`'s `tuner.json`).

    Writes into `out_dir` the evaluation report (`report.md`, `metrics.json`, `per_query.jsonl`, `runs/`,
    `report.png`, through `report.write_report`, with the default instruction as the paired reference and an
    instruction-search section on top) and `tuner.json` = `{"instruction": winner, "instruction_search": ...}`.

    `apply` gets the winner only when it is significantly better (`SIGNIFICANCE_LEVEL`, paired randomization
    test) than each instruction `apply`'s directories use now, or when `force` is set; when they use the winner
    already, nothing is written there.

    `metrics` are the figures reported (as `run_eval`'s; None: its default); the winner is the best on the first.

    Returns:
        The summary written to `metrics.json`.

    Raises:
        NotSignificantError: `apply` was given, the winner is not significantly better than the instruction it uses
            and `force` is not set; `apply` was left unchanged, and the report was written to `out_dir` all the same.
    """
    from tuner.report import check_report_targets, prepare_out_dir, render_markdown, write_report

    prepare_out_dir(out_dir)
    check_report_targets(out_dir)  # a folder named report.png fails now, not after the search
    start = time.perf_counter()
    evaluator, source = build_evaluator(
        beir, data, split, candidates, top_k, max_queries, seed, cache_dir, show_progress, metrics
    )
    reranker = load_reranker(model, adapter, options)
    trained = trained_on_note(
        model, adapter, evaluator.queries.values(), evaluator.name, "pick the instruction on held-out queries"
    )
    if evaluator.query_instructions:  # one instruction is searched for and written; the rows' own are not kept
        log.warning(
            "%d of %d queries of %s carry their own instruction; the search scores every query under each "
            "candidate instead (the winner goes to tuner.json for all)",
            len(evaluator.query_instructions),
            len(evaluator.qids),
            evaluator.name,
        )
    # what --apply would replace is scored too (unless it is a candidate already): the winner is tested against it
    current = current_instructions(apply) if apply is not None else []
    cands = candidate_instructions(instructions, reranker.instruction, current)
    results, best = search(reranker, evaluator, cands)
    for result in results:
        result.info.update(model=model, adapter=adapter)

    first = first_stage_system(evaluator, source)
    meta = report_meta(evaluator, data or beir, split, source, evaluator.top_k, max_queries)
    out = Path(out_dir)
    # reference = 1: the default instruction (row 0 is the first stage, shown for context)
    summary = write_report(
        out, [first, *results], 1, evaluator.metrics, evaluator.primary_metric, meta, qrels=evaluator.qrels
    )
    primary = evaluator.primary_metric
    winner, default = results[best], results[0]
    stats = next(s for s in summary["systems"] if s["label"] == winner.label).get("vs_reference", {}).get(primary)
    summary["instruction_search"] = {
        "winner_label": winner.label,
        "winner": cands[best].text,
        "winner_value": winner.metrics[primary],
        "default_value": default.metrics[primary],
        "delta_vs_default": winner.metrics[primary] - default.metrics[primary],
        "winner_vs_default": stats,  # None when the default itself won
        "candidates": [{"label": c.label, "text": c.text, **r.metrics} for c, r in zip(cands, results, strict=True)],
        "seconds": round(time.perf_counter() - start, 3),
        "applied_to": None,
        "apply_refused": None,
        "apply_skipped": None,
        "significance_level": winner_level(len(cands)),
        "warnings": [trained] if trained else [],
    }
    info = summary["instruction_search"]
    level = info["significance_level"]
    replaced: list[int] = []  # the candidates that are the instructions --apply would replace
    if apply is not None:
        texts = [c.text for c in cands]
        replaced = [texts.index(text) for text in current if text != cands[best].text]
        weak = [(i, _versus(results, i, best, primary)) for i in replaced]
        weak = [(i, st) for i, st in weak if not _significant(st, level)]
        if not replaced:
            # rewriting the same instruction would change nothing, except remove a calibration that does not record
            # the instruction it was fitted with
            info["apply_skipped"] = (
                f"the winner {cands[best].label!r} ({cands[best].text!r}) is the instruction {apply} uses already: "
                "nothing to apply"
            )
        elif weak and not force:
            i, st = weak[0]
            info["apply_refused"] = (
                f"{_gain(cands[best], cands[i], st, primary, f'the instruction {apply} uses')}, not significant at "
                f"{level:.3g} (the best of {len(cands)} candidates), so --apply {apply} was refused and its "
                "tuner.json left unchanged; pass --force to apply it anyway"
            )
        else:
            for i, st in weak:  # applied as forced: the record says what it rests on
                info["warnings"].append(
                    f"{_gain(cands[best], cands[i], st, primary, f'the instruction {apply} used')}: not significant "
                    f"at {level:.3g} (the best of {len(cands)} candidates), applied because of --force"
                )
            # and a calibration removed because it was fitted with another instruction
            written = apply_meta(apply, {"instruction": cands[best].text}, on_warning=info["warnings"].append)
            info["applied_to"] = [str(p) for p in written]
    # A noise-level "gain" (e.g. +0.0015 with 5 wins / 89 ties / 6 losses, p = 0.86) is said on stderr and in the
    # records, not only in report.md; with --apply it is judged against what the target uses now, above (once).
    if best != 0 and 0 not in replaced and not _significant(stats, level):
        info["warnings"].append(
            f"{_gain(cands[best], cands[0], stats, primary, 'the default')}: not significant "
            f"at {level:.3g} (the best of {len(cands)} candidates), more queries would be needed to trust it"
        )
    search_meta = {k: v for k, v in summary["instruction_search"].items() if k != "candidates"}
    search_meta.update(dataset=meta["dataset"], split=meta["split"], metric=primary, model=model, adapter=adapter)
    atomic_write(out / "metrics.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write(out / "report.md", _render_search(summary) + "\n" + render_markdown(summary))
    tuner_json = {"instruction": cands[best].text, "instruction_search": search_meta}
    atomic_write(out / TUNER_META, json.dumps(tuner_json, indent=2, ensure_ascii=False) + "\n")
    if info["apply_refused"]:
        raise NotSignificantError(f"instruction not applied: {info['apply_refused']} (report in {out})")
    return summary
