"""`tuner <verb>`: argument parsing and dispatch only; the work lives in the library modules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """An error the user can fix (bad path, bad data, bad option): printed as one line, exit code 2."""


# ------------------------------------------------------------------------------------------- tiny-model
def _add_tiny_model(sub) -> None:
    p = sub.add_parser("tiny-model", help="write a random-weight tiny Qwen3 reranker with the real tokenizer")
    p.add_argument("out_dir", help="output directory (a Hugging Face model folder)")
    p.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    p.add_argument("--hidden", type=int, default=64, help="hidden size (default 64)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_run_tiny_model)


def _run_tiny_model(args) -> int:
    from tuner.tiny import write_tiny_model

    out = write_tiny_model(args.out_dir, args.layers, args.hidden, args.seed, args.heads, args.kv_heads)
    print(f"wrote tiny Qwen3 reranker to {out}")
    return 0


# ------------------------------------------------------------------------------------------------ score
def read_documents(path: str | Path) -> list:
    """Documents from a JSONL file (strings, `{"text"[, "title"]}` or `{"document": ...}`) or plain lines."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    is_jsonl = path.suffix in (".jsonl", ".json") or (lines and lines[0].lstrip().startswith(("{", '"')))
    docs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not is_jsonl:
            docs.append(line)
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{n}: invalid JSON ({err.msg})") from None
        if isinstance(value, dict) and "document" in value:
            value = value["document"]
        if isinstance(value, dict) and "text" not in value:
            raise UserError(f"{path}:{n}: a document object needs a 'text' field")
        if not isinstance(value, (str, dict)):
            raise UserError(f"{path}:{n}: expected a string or an object, got {type(value).__name__}")
        docs.append(value)
    return docs


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="rank documents for one query; prints JSON")
    p.add_argument("--model", required=True, help="model directory or hub id (base, merged or seq-cls export)")
    p.add_argument("--adapter", help="PEFT adapter directory on top of --model")
    p.add_argument("--query", required=True, help="query text")
    p.add_argument("--documents", required=True, help="JSONL file (strings or {title, text}) or one per line")
    p.add_argument("--instruction", help="task instruction (default: the model card's)")
    p.add_argument("--top-k", type=int, help="keep the best K")
    p.add_argument("--max-length", type=int, default=8192, help="prompt token budget (default 8192)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", help="bfloat16, float16 or float32 (default: bf16 on GPU, fp32 on CPU)")
    p.set_defaults(func=_run_score)


def _run_score(args) -> int:
    from tuner.scoring import Reranker

    docs = read_documents(args.documents)
    reranker = Reranker.from_pretrained(
        args.model, adapter=args.adapter, device=args.device, dtype=args.dtype, max_length=args.max_length
    )
    ranking = reranker.rank(args.query, docs, top_k=args.top_k, instruction=args.instruction)
    json.dump(ranking, sys.stdout, ensure_ascii=False, indent=2)
    print()
    return 0


# ----------------------------------------------------------------------------------------------- export
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a run's adapter as adapter / merged / seq-cls, parity-checked")
    p.add_argument("source", help="training run directory (uses RUN/adapter) or an adapter directory")
    p.add_argument("--out", required=True, help="export directory (one subdirectory per format with 'all')")
    p.add_argument("--format", default="all", choices=["adapter", "merged", "seq-cls", "all"], help="default all")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights dtype (float32)")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--base", help="base model path or hub id (default: the one recorded in the run)")
    p.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out once the export passed")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from tuner.export import FORMATS, ParityError, export

    formats = list(FORMATS) if args.format == "all" else [args.format]
    try:
        report = export(
            args.source,
            args.out,
            formats=formats,
            dtype=args.dtype,
            device=args.device,
            base_model=args.base,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
    except ParityError as err:
        print(f"tuner export: {err}", file=sys.stderr)
        return 3
    except FileExistsError as err:
        raise UserError(str(err)) from None
    for name, row in report["formats"].items():
        print(f"{name:<26} max |Δ logit| {row['max_abs_logit_delta']:.2e}  {'ok' if row['passed'] else 'FAIL'}")
    print(f"parity gate passed ({args.dtype}); wrote {Path(args.out).resolve()}")
    return 0


# ------------------------------------------------------------------------------------------------ serve
def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="HTTP reranking API (/v1/rerank, /score) over an export, or print a vLLM command")
    p.add_argument("model", help="export directory (merged, seq-cls or adapter), or any model Reranker loads")
    p.add_argument("--engine", default="tuner", choices=["tuner", "vllm"], help="tuner (default) or vllm")
    p.add_argument("--exec", action="store_true", help="with --engine vllm: run the command instead of printing it")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key-env", help="name of an environment variable holding the bearer API key")
    p.add_argument("--model-name", help="served model name (default: the export directory's name)")
    p.add_argument("--max-documents", type=int, default=1000, help="documents per request (default 1000)")
    p.add_argument("--max-batch-tokens", type=int, help="padded tokens per forward pass (default: Reranker's)")
    p.add_argument("--max-length", type=int, help="prompt token budget (default 8192; vllm: the export's)")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--dtype", help="bfloat16, float16 or float32 (default: bf16 on GPU, fp32 on CPU)")
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    import os

    api_key = None
    if args.api_key_env and args.engine == "tuner":
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UserError(f"--api-key-env {args.api_key_env}: the environment variable is unset or empty")
    if args.engine == "vllm":
        from tuner.serve_vllm import run_vllm, vllm_command

        command = vllm_command(
            args.model,
            host=args.host,
            port=args.port,
            served_name=args.model_name,
            api_key_env=args.api_key_env,
            max_length=args.max_length,
            dtype=args.dtype,
        )
        if args.exec:
            return run_vllm(command)
        print(command)
        return 0
    from tuner.serve import serve

    serve(
        args.model,
        host=args.host,
        port=args.port,
        api_key=api_key,
        model_name=args.model_name,
        max_documents=args.max_documents,
        max_batch_tokens=args.max_batch_tokens,
        max_length=args.max_length or 8192,
        device=args.device,
        dtype=args.dtype,
    )
    return 0


# ------------------------------------------------------------------------------------------ data / mine
def _add_data(sub) -> None:
    p = sub.add_parser("data", help="check or split training data")
    verbs = p.add_subparsers(dest="data_command", required=True, metavar="VERB")
    c = verbs.add_parser("check", help="validate a grouped/pairs file (or a BEIR folder) and print its stats")
    c.add_argument("path", help="JSONL/JSON/Parquet file, folder with <split>.jsonl, BEIR folder, or hub id")
    c.add_argument("--split", help="split: file stem in a folder, hub split, or BEIR qrels (default train/test)")
    c.add_argument("--max-length", type=int, default=8192, help="prompt token budget to count truncation against")
    c.add_argument("--no-tokens", action="store_true", help="skip token-length statistics (no tokenizer)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=_run_data_check)
    s = verbs.add_parser("split", help="split groups into train and dev by query (seeded)")
    s.add_argument("path", help="grouped/pairs file (see `data check`)")
    s.add_argument("--dev-fraction", type=float, default=0.1, help="share of queries for dev (default 0.1)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--train-out", required=True, help="output JSONL for train groups")
    s.add_argument("--dev-out", required=True, help="output JSONL for dev groups")
    s.set_defaults(func=_run_data_split)


def _run_data_check(args) -> int:
    from tuner.data.check import check_beir, check_file, format_report

    path = Path(args.path)
    if path.is_dir() and any((path / f"corpus{s}").is_file() for s in (".jsonl", ".jsonl.gz")):
        report = check_beir(path, args.split or "test")
    else:
        report = check_file(args.path, args.split, max_length=args.max_length, tokens=not args.no_tokens)
    if args.json:
        payload = {"path": report.path, "rows": report.rows, "groups": report.groups, "ok": report.ok}
        payload.update(stats=report.stats, warnings=report.warnings, errors=report.errors)
        json.dump(payload, sys.stdout, indent=2)
        print()
    else:
        print(format_report(report))
    for err in report.errors if args.json else []:
        print(f"error: {err}", file=sys.stderr)
    return 0 if report.ok else 1


def _run_data_split(args) -> int:
    from tuner.data import load_groups, split_groups, write_groups

    groups = load_groups(args.path)
    train, dev = split_groups(groups, args.dev_fraction, args.seed)
    write_groups(train, args.train_out)
    write_groups(dev, args.dev_out)
    print(f"train: {len(train)} groups -> {args.train_out}\ndev: {len(dev)} groups -> {args.dev_out}")
    return 0


def _add_mine(sub) -> None:
    from tuner import mining

    p = sub.add_parser("mine", help="mine hard negatives for a BEIR split with BM25 (+ optional reranker)")
    p.add_argument("--beir", required=True, help="BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/)")
    p.add_argument("--split", default="train", help="qrels split (default train)")
    p.add_argument("--out", required=True, help="output JSONL of groups; the BM25 index is cached next to it")
    p.add_argument("--depth", type=int, default=mining.DEFAULT_DEPTH, help="BM25 candidates per query")
    p.add_argument("--range-min", type=int, default=mining.DEFAULT_RANGE_MIN, help="skip the top N candidates")
    p.add_argument("--range-max", type=int, default=mining.DEFAULT_RANGE_MAX, help="sample below this rank only")
    p.add_argument("--num-negatives", type=int, default=mining.DEFAULT_NUM_NEGATIVES, help="negatives per query")
    p.add_argument("--sampling", choices=["random", "top"], default="random", help="random sample or best ranked")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--cache-dir", help="BM25 index cache folder (default: the output's folder)")
    p.add_argument("--reranker", help="model dir or hub id that filters false negatives (and gives teacher scores)")
    p.add_argument("--adapter", help="PEFT adapter on top of --reranker")
    p.add_argument("--margin", type=float, default=mining.DEFAULT_MARGIN, help="relative margin to the positive")
    p.add_argument("--absolute-margin", type=float, help="absolute margin to the positive (probability)")
    p.add_argument("--max-score", type=float, help="drop candidates whose probability is above this")
    p.add_argument("--teacher-scores", action="store_true", help="write the reranker's logits as pos/neg_scores")
    p.add_argument("--instruction", help="instruction for reranker scoring (default: the contract's)")
    p.add_argument("--max-length", type=int, default=8192, help="reranker prompt token budget")
    p.add_argument("--device", help="reranker device")
    p.add_argument("--dtype", help="reranker dtype")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_mine)


def _run_mine(args) -> int:
    import time

    from tuner.data import load_beir, write_groups
    from tuner.mining import MiningStats, mine_negatives, negatives_histogram

    if args.teacher_scores and not args.reranker:
        raise UserError("--teacher-scores needs --reranker")
    start = time.perf_counter()
    beir = load_beir(args.beir, args.split)
    reranker = None
    if args.reranker:
        from tuner.scoring import Reranker

        reranker = Reranker.from_pretrained(
            args.reranker, adapter=args.adapter, device=args.device, dtype=args.dtype, max_length=args.max_length
        )
    out = Path(args.out)
    stats = MiningStats()
    groups = mine_negatives(
        beir,
        depth=args.depth,
        range_min=args.range_min,
        range_max=args.range_max,
        num_negatives=args.num_negatives,
        sampling=args.sampling,
        seed=args.seed,
        cache_dir=args.cache_dir or out.parent,
        reranker=reranker,
        margin=args.margin,
        absolute_margin=args.absolute_margin,
        max_score=args.max_score,
        teacher_scores=args.teacher_scores,
        instruction=args.instruction,
        show_progress=not args.no_progress,
        stats=stats,
    )
    write_groups(groups, out)
    hist = ", ".join(f"{k}: {v}" for k, v in negatives_histogram(groups).items())
    print(
        f"wrote {len(groups)} groups for {stats.queries} judged queries to {out} in {time.perf_counter() - start:.1f} s"
        f"\n  groups with {args.num_negatives} negatives: {stats.full} ({100 * stats.full / max(1, stats.queries):.1f}%"
        f" of queries); negatives per group: {{{hist}}}"
        + (f"\n  reranker: {stats.scored_pairs} pairs scored, {stats.filtered} dropped" if reranker else "")
    )
    return 0


# ------------------------------------------------------------------------------------------- train, config
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a reranker from a recipe (LoRA / QLoRA / full), evaluating as it goes")
    p.add_argument("recipe", help="recipe YAML (see recipes/); `tuner config` lists every field")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="override recipe fields")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of the run directory")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from tuner.config import load_config
    from tuner.train import train

    config = load_config(args.recipe, args.overrides)
    result = train(config, resume=args.resume)
    final = result["metrics"].get("dev", {}).get("final")
    if final:
        print("dev " + " ".join(f"{k}={v:.4f}" for k, v in final.items()))
    print(f"adapter: {result['adapter_dir']}\nrun directory: {result['output_dir']}")
    return 0


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="list every recipe field with its type, value (default or recipe) and doc")
    p.add_argument("--recipe", help="show this recipe's resolved values instead of the defaults")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides applied before listing")
    p.set_defaults(func=_run_config)


def _run_config(args) -> int:
    from tuner.config import describe_fields, load_config

    rows = describe_fields(load_config(args.recipe, args.overrides))
    width = max(len(r[0]) for r in rows)
    for key, tp, value, doc in rows:
        print(f"{key:<{width}}  {value:<18} {doc}  [{tp}]")
    return 0


# ------------------------------------------------------------------------------------------------- eval
def _check_candidates(candidates: str) -> None:
    """`--candidates` of eval and instruct: 'bm25' or an existing TREC run file."""
    if candidates.lower() != "bm25" and not Path(candidates).is_file():
        raise UserError(f"--candidates {candidates!r}: neither 'bm25' nor an existing run file")


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="rerank first-stage candidates on a BEIR split; report first stage, base and tuned side by side",
        description="Writes metrics.json, per_query.jsonl, runs/*.trec, report.md and report.png into --out.",
    )
    p.add_argument("--model", required=True, help="model directory or hub id (base, merged, seq-cls or adapter dir)")
    p.add_argument("--adapter", help="PEFT adapter directory on --model: reports base (adapter disabled) and tuned")
    p.add_argument("--beir", required=True, help="BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/SPLIT.tsv)")
    p.add_argument("--split", default="test", help="qrels split (default test)")
    p.add_argument("--candidates", default="bm25", help="'bm25' (default) or a TREC run file")
    p.add_argument("--top-k", type=int, default=100, help="candidates reranked per query (default 100)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--instruction", help="task instruction for every pair (default: the model's)")
    group.add_argument(
        "--instructions",
        nargs="+",
        metavar="SPEC",
        help="compare instructions: 'default', 'none' or a text, e.g. --instructions default none 'Find ...'",
    )
    p.add_argument("--compare", nargs="+", default=[], metavar="MODEL_OR_ADAPTER", help="more systems to score")
    p.add_argument("--out", help="output folder (default runs/eval/<dataset>-<split>)")
    p.add_argument("--max-queries", type=int, help="evaluate a reproducible sample of this many queries")
    p.add_argument("--seed", type=int, default=0, help="seed of the query sample (default 0)")
    p.add_argument("--max-length", type=int, help="prompt token budget (default 8192)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per forward pass (default: 8192 CPU, 32768 GPU)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", help="bfloat16, float16 or float32 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--cache-dir", default="runs/cache", help="BM25 index cache (default runs/cache; '' to disable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from tuner.evaluate import parse_instruction, run_eval

    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.max_queries is not None and args.max_queries < 1:
        raise UserError(f"--max-queries must be >= 1, got {args.max_queries}")
    _check_candidates(args.candidates)
    # None → the model's default instruction; "" → no instruction
    instructions = [parse_instruction(s) for s in args.instructions] if args.instructions else [args.instruction]
    out = Path(args.out or Path("runs") / "eval" / f"{Path(args.beir).name}-{args.split}")
    run_eval(
        args.model,
        args.beir,
        out,
        adapter=args.adapter,
        split=args.split,
        candidates=args.candidates,
        top_k=args.top_k,
        instructions=instructions,
        compare=args.compare,
        max_queries=args.max_queries,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        cache_dir=args.cache_dir or None,
        show_progress=False if args.no_progress else None,
    )
    print((out / "report.md").read_text(encoding="utf-8").split("\n## Systems")[0].rstrip())
    print(f"\nwrote {out}/metrics.json, per_query.jsonl, runs/, report.md, report.png")
    return 0


# --------------------------------------------------------------------------------------- instruct / calibrate
def _add_model_args(p) -> None:
    p.add_argument("--model", required=True, help="model directory or hub id (base, merged, seq-cls or adapter dir)")
    p.add_argument("--adapter", help="PEFT adapter directory on top of --model")
    p.add_argument("--max-length", type=int, help="prompt token budget (default 8192)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per forward pass (default: 8192 CPU, 32768 GPU)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", help="bfloat16, float16 or float32 (default: bf16 on GPU, fp32 on CPU)")


def _add_instruct(sub) -> None:
    p = sub.add_parser(
        "instruct",
        help="search task instructions on a BEIR split; write the winner to tuner.json",
        description="Scores the default instruction, no instruction and each line of --instructions on the same "
        "first-stage candidates; writes report.md, metrics.json, per_query.jsonl, runs/, report.png and "
        "tuner.json (the winner as 'instruction') into --out.",
    )
    _add_model_args(p)
    p.add_argument("--beir", required=True, help="BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/SPLIT.tsv)")
    p.add_argument("--split", default="test", help="qrels split, e.g. dev or test (default test)")
    p.add_argument("--candidates", default="bm25", help="first-stage TREC run file, or 'bm25' (default)")
    p.add_argument("--instructions", help="text file with one candidate instruction per line ('#' comments)")
    p.add_argument("--top-k", type=int, default=50, help="candidates reranked per query (default 50)")
    p.add_argument("--max-queries", type=int, help="search on a reproducible sample of this many queries")
    p.add_argument("--seed", type=int, default=0, help="seed of the query sample (default 0)")
    p.add_argument("--out", help="output folder (default runs/instruct/<dataset>-<split>)")
    p.add_argument("--apply", metavar="DIR", help="also write the winner into this adapter/export dir's tuner.json")
    p.add_argument("--cache-dir", default="runs/cache", help="BM25 index cache (default runs/cache; '' to disable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_instruct)


def _run_instruct(args) -> int:
    from tuner.instruct import read_instructions, run_instruct

    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.max_queries is not None and args.max_queries < 1:
        raise UserError(f"--max-queries must be >= 1, got {args.max_queries}")
    _check_candidates(args.candidates)
    if args.apply and not Path(args.apply).is_dir():
        raise UserError(f"--apply {args.apply}: no such directory")
    custom = read_instructions(args.instructions) if args.instructions else []
    out = Path(args.out or Path("runs") / "instruct" / f"{Path(args.beir).name}-{args.split}")
    summary = run_instruct(
        args.model,
        args.beir,
        out,
        adapter=args.adapter,
        split=args.split,
        candidates=args.candidates,
        instructions=custom,
        top_k=args.top_k,
        max_queries=args.max_queries,
        seed=args.seed,
        apply=args.apply,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        cache_dir=args.cache_dir or None,
        show_progress=False if args.no_progress else None,
    )
    print((out / "report.md").read_text(encoding="utf-8").split("\n## Systems")[0].rstrip())
    info = summary["instruction_search"]
    print(f"\nwinner: {info['winner_label']} ({info['winner']!r}) in {info['seconds']:.1f} s; wrote {out}/tuner.json")
    for path in info["applied_to"] or []:
        print(f"applied to {path}")
    return 0


def _add_calibrate(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit temperature and bias (Platt scaling) on labeled dev pairs; report ECE and log loss",
        description="Writes calibration.json, report.md and reliability.png into --out.",
    )
    _add_model_args(p)
    p.add_argument("--data", required=True, help="labeled pairs or grouped JSONL (pos → 1, neg → 0)")
    p.add_argument("--split", help="file stem when --data is a folder (default train)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--apply", metavar="DIR", help="store {temperature, bias} in this adapter/export dir's tuner.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds (default 0)")
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args) -> int:
    from tuner.calibrate import run_calibrate

    if args.apply and not Path(args.apply).is_dir():
        raise UserError(f"--apply {args.apply}: no such directory")
    summary = run_calibrate(
        args.model,
        args.data,
        args.out,
        adapter=args.adapter,
        split=args.split,
        apply=args.apply,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        seed=args.seed,
    )
    print((Path(args.out) / "report.md").read_text(encoding="utf-8").split("\n![")[0].rstrip())
    print(f"\nwrote {args.out}/calibration.json, report.md, reliability.png in {summary['seconds']:.1f} s")
    for path in summary["applied_to"] or []:
        print(f"applied to {path}")
    return 0


# Each verb registers its parser here; the issue that adds a verb adds one line.
COMMANDS: list[Callable] = [
    _add_tiny_model,
    _add_score,
    _add_data,
    _add_mine,
    _add_train,
    _add_config,
    _add_eval,
    _add_instruct,
    _add_calibrate,
    _add_export,
    _add_serve,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuner", description="Domain-adapt Qwen3-Reranker with LoRA.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"tuner {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, OSError) as err:
        # Errors the library raises for bad input carry a message that names the path or field.
        from tuner.loading import ModelNotFoundError

        if isinstance(err, (ModelNotFoundError, FileNotFoundError, ValueError)):
            print(f"tuner {args.command}: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
