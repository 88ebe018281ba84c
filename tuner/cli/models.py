"""`tuner tiny-model`, `tuner score`, `tuner rerank`, `tuner export`, `tuner serve`: make, score, export and serve a
model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tuner.cli.common import (
    UserError,
    add_scoring_path_args,
    non_negative_int,
    port_number,
    positive_float,
    positive_int,
    scoring_path_kwargs,
)


# ------------------------------------------------------------------------------------------- tiny-model
def add_tiny_model(sub) -> None:
    p = sub.add_parser("tiny-model", help="write a random-weight tiny Qwen3 reranker with the real tokenizer")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (a Hugging Face model folder)")
    p.add_argument("--layers", type=positive_int, default=2, help="decoder layers (default 2)")
    p.add_argument("--hidden", type=positive_int, default=64, help="hidden size (default 64)")
    p.add_argument("--heads", type=positive_int, default=4, help="attention heads (default 4)")
    p.add_argument("--kv-heads", type=positive_int, default=2, help="key/value heads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace the model in an OUT_DIR that holds files")
    p.set_defaults(func=_run_tiny_model)


def _run_tiny_model(args) -> int:
    from tuner.files import check_output_dir

    check_output_dir(args.out_dir, "OUT_DIR", overwrite=args.overwrite)
    # the shapes' rules named by flag, before torch loads (tuner.tiny checks them too, as "hidden (30)")
    if args.hidden % args.heads:
        raise UserError(f"--hidden {args.hidden} must be a multiple of --heads {args.heads}")
    if args.heads % args.kv_heads:
        raise UserError(f"--heads {args.heads} must be a multiple of --kv-heads {args.kv_heads}")
    from tuner.tiny import QWEN3_VOCAB_SIZE, write_tiny_model

    try:
        out = write_tiny_model(args.out_dir, args.layers, args.hidden, args.seed, args.heads, args.kv_heads)
    except RuntimeError as err:  # torch's allocator ("can't allocate memory"): a traceback from deep in torch
        if "allocate" not in str(err):
            raise
        # float32: the tied embedding, then per layer q and o (hidden x hidden), k and v (hidden x kv_heads *
        # head_dim) and the MLP (3 matrices of hidden x 3 hidden), as tuner.tiny.tiny_config shapes them
        kv = args.kv_heads * (args.hidden // args.heads)
        layer = 2 * args.hidden**2 + 2 * args.hidden * kv + 9 * args.hidden**2
        embedding = QWEN3_VOCAB_SIZE * args.hidden
        gb = 4 * (embedding + args.layers * layer) / 1e9
        raise UserError(
            f"--layers {args.layers} --hidden {args.hidden}: a model of about {gb:.1f} GB in float32 (the "
            f"{QWEN3_VOCAB_SIZE:,}-token embedding alone is {4 * embedding / 1e9:.1f} GB), more than this machine "
            "could allocate; choose a smaller --hidden or --layers"
        ) from None
    print(f"wrote tiny Qwen3 reranker to {out}")
    return 0


# ------------------------------------------------------------------------------------------------ score
def read_documents(path: str | Path) -> list:
    """Documents from a JSONL file (strings, `{"text"[, "title"]}` or `{"document": ...}`), a `.json` file holding
    one JSON array of them, or plain lines."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder; --documents takes a JSONL or text file (one document per line)")
    from tuner.files import decode_utf8, json_error_place, json_error_reason, similar_names

    if not path.is_file():
        close = similar_names(path)  # `--documents docs.jsnol` finds docs.jsonl
        raise UserError(f"{path}: no such file" + (f"; did you mean {', '.join(map(str, close))}?" if close else ""))

    text = decode_utf8(path.read_bytes(), path, UserError)  # a BOM is dropped, as in training files
    # "\n" only (as the training readers): str.splitlines also breaks at U+2028, form feeds and the like, which
    # json.dumps(ensure_ascii=False) writes unescaped inside a JSONL line and which a text document may hold
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    # .jsonl/.json is JSONL (or, for .json, one array); a .txt (or any other suffix) is one document per line,
    # unless it has no suffix and its first line is a JSON object
    suffix = path.suffix.lower()
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            line, column = json_error_place(text, err)
            raise UserError(f"{path}:{line}:{column}: invalid JSON ({json_error_reason(err)})") from None
        docs = [_document(item, f"{path}: item {i}") for i, item in enumerate(items, 1)]
    else:
        is_jsonl = suffix in (".jsonl", ".json") or (not suffix and bool(lines) and lines[0].lstrip().startswith("{"))
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
                column = json_error_place(line, err)[1]
                raise UserError(f"{path}:{n}: invalid JSON ({json_error_reason(err)} at column {column})") from None
            docs.append(_document(value, f"{path}:{n}"))
    if not docs:
        raise UserError(f"{path}: no documents (the file is empty or blank)")
    return docs


def _document(value: Any, where: str) -> str | dict:
    """One JSON document (a string, `{"text", "title"}` with either or both, or `{"document": ...}`), checked;
    `where` names it. A title alone is a document, as in the Python API and the server."""
    if isinstance(value, dict) and "document" in value:
        value = value["document"]
    if isinstance(value, dict) and "text" not in value and value.get("title") is None:
        keys = ", ".join(repr(k) for k in value) or "(none)"
        raise UserError(f"{where}: a document object needs a 'text' (or 'title') field; got keys {keys}")
    if isinstance(value, dict):
        for key in ("text", "title"):
            if key in value and not (isinstance(value[key], str) or (key == "title" and value[key] is None)):
                raise UserError(f"{where}: field '{key}' must be a string, got {type(value[key]).__name__}")
    elif not isinstance(value, str):
        raise UserError(f"{where}: expected a string or an object, got {type(value).__name__}")
    return value


def _add_score_kind(p) -> None:
    """The prompt budget and what a score is (probability, uncalibrated, raw logit): `tuner score` and `rerank`."""
    p.add_argument(
        "--max-length", type=positive_int, help="prompt token budget (default: the export's tuner.json, else 8192)"
    )
    scores = p.add_mutually_exclusive_group()
    scores.add_argument(
        "--no-calibration", action="store_true", help="sigmoid(logit) even if tuner.json has a calibration"
    )
    scores.add_argument("--raw", action="store_true", help="the raw yes−no logits instead of probabilities")


def add_score(sub) -> None:
    p = sub.add_parser("score", help="rank documents for one query; prints JSON")
    p.add_argument("--model", required=True, help="model directory or hub id (base, merged or seq-cls export)")
    p.add_argument("--adapter", help="PEFT adapter directory on top of --model")
    p.add_argument("--query", required=True, help="query text")
    p.add_argument(
        "--documents",
        required=True,
        help="JSONL file (strings or {title, text}), a .json array of them, or one per line",
    )
    p.add_argument("--instruction", help="task instruction (default: the export's tuner.json, else the contract's)")
    p.add_argument("--top-k", type=non_negative_int, help="keep the best K (default or 0: every document)")
    _add_score_kind(p)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", help="bfloat16, float16, float32, auto (checkpoint's); default bf16 on GPU, fp32 on CPU")
    add_scoring_path_args(p)
    p.set_defaults(func=_run_score)


def _run_score(args) -> int:
    from tuner.scoring import Reranker

    if not args.query.strip():  # documents may be blank (a corpus has empty ones); a query ranks against nothing
        raise UserError("--query is empty; give the text to rank the documents against")
    docs = read_documents(args.documents)
    reranker = Reranker.from_pretrained(
        args.model,
        adapter=args.adapter,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        calibrated=not args.no_calibration,
        **scoring_path_kwargs(args),
    )
    ranking = reranker.rank(args.query, docs, top_k=args.top_k, instruction=args.instruction, normalize=not args.raw)
    json.dump(ranking, sys.stdout, ensure_ascii=False, indent=2)
    print()
    return 0


# ----------------------------------------------------------------------------------------------- rerank
def add_rerank(sub) -> None:
    from tuner.rerank import CHUNK_PAIRS

    p = sub.add_parser(
        "rerank",
        help="rerank many queries' first-stage candidates from files (no labels needed), resumably",
        description='Input: --input, a JSONL file of queries ({"query", "documents": [str | {"title", "text"} '
        '| {"id", "text", "title"}], "id"?, "instruction"?} per line), written back as JSONL in input '
        'order ({"id"?, "query", "results": [{"index", "id"?, "score"}]} per line, best first, ties in '
        "input order); or --candidates, a TREC run file, with --beir, the BEIR folder of its texts, written back as a "
        "TREC run file of each query's top --depth candidates (cut and written in trec_eval order: ties by doc id, "
        "descending). Scores are those of `tuner score` (probabilities, calibrated when the model's tuner.json has a "
        "calibration; --raw: yes−no logits). A row's own instruction comes first, then --instruction, then the "
        "model's. Output goes to OUT.partial, flushed after each chunk of queries, with its record OUT.partial.json, "
        "and is renamed onto --out at the end: an interrupted run continues with the same command and --resume "
        "(device, batch and fast-path options may change; they give the same scores within float rounding).",
    )
    p.add_argument("--model", required=True, help="model directory or hub id (base, merged or seq-cls export)")
    p.add_argument("--adapter", help="PEFT adapter directory on top of --model")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSONL file, one query per line with its documents")
    source.add_argument("--candidates", metavar="RUN", help="TREC run file (qid Q0 docid rank score tag); needs --beir")
    p.add_argument("--beir", metavar="DIR", help="with --candidates: BEIR folder of the texts (corpus, queries.jsonl)")
    p.add_argument(
        "--depth", type=positive_int, help="with --candidates: candidates reranked per query, trec_eval order (100)"
    )
    p.add_argument("--out", required=True, help="output file: JSONL for --input, a TREC run file for --candidates")
    p.add_argument(
        "--instruction",
        help="task instruction of the pairs whose row gives none (default: the export's tuner.json, else the "
        "contract's)",
    )
    p.add_argument("--top-k", type=non_negative_int, help="keep each query's best K (default or 0: every candidate)")
    _add_score_kind(p)
    p.add_argument(
        "--batch-tokens", type=positive_int, help="padded tokens per forward pass (default: 8192 CPU, 32768 GPU)"
    )
    p.add_argument(
        "--chunk-pairs",
        type=positive_int,
        default=CHUNK_PAIRS,
        help="pairs scored together (several queries' candidates, length-sorted into batches) and then written to "
        "the partial file (default %(default)s)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", help="bfloat16, float16, float32, auto (checkpoint's); default bf16 on GPU, fp32 on CPU")
    add_scoring_path_args(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the OUT.partial an interrupted run left (same input, model and options; refused otherwise)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_rerank)


def _run_rerank(args) -> int:
    from tuner.data.check import _n  # data check's singular / plural
    from tuner.rerank import Rerank, effective_settings, source_identity
    from tuner.scoring import Reranker

    if args.candidates is not None and args.beir is None:
        raise UserError("--candidates needs --beir, the BEIR folder that holds its queries' and documents' texts")
    given = [flag for flag, value in (("--beir", args.beir), ("--depth", args.depth)) if value is not None]
    if args.input is not None and given:
        raise UserError(f"{' and '.join(given)}: for --candidates; an --input row holds its own documents")
    options = {"model": source_identity(args.model), "adapter": source_identity(args.adapter)}
    job = Rerank(
        args.out,
        input=args.input,
        candidates=args.candidates,
        beir=args.beir,
        depth=args.depth or 100,
        options=options,
        resume=args.resume,
        overwrite=args.overwrite,
        top_k=args.top_k,
        raw=args.raw,
        instruction=args.instruction,
        chunk_pairs=args.chunk_pairs,
    )
    replaced = job.out.exists()
    reranker = Reranker.from_pretrained(
        args.model,
        adapter=args.adapter,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        calibrated=not args.no_calibration,
        show_progress=False,
        **scoring_path_kwargs(args),
    )
    settings = effective_settings(reranker, args.instruction, args.raw, args.model, args.adapter)
    job.check(settings)  # a partial of other model settings is refused before anything is written
    try:
        summary = job.run(reranker, settings, not args.no_progress)
    except BaseException as err:
        if job.partial.exists():
            kept = f"tuner rerank: {job.partial} keeps the first {job.done} of {job.num_queries} queries; "
            if isinstance(err, ValueError):  # the input's fault: a fixed input (or option) is another run
                then = f"once the input or options are fixed, delete it and {job.record_path} to start over"
            else:  # interrupted, out of memory, a full disk: the same input and options go on
                then = "the same command with --resume continues it (--device, --batch-tokens, --chunk-pairs and the "
                then += "fast paths may change)"
            print(kept + then, file=sys.stderr)
        raise
    seconds = summary["seconds"]
    rate = summary["pairs_scored"] / seconds if seconds > 0 else 0.0
    resumed = summary["queries"] - summary["queries_scored"]
    print(
        f"reranked {_n(summary['queries'], 'query', 'queries')} ({_n(summary['pairs'], 'pair')}) into {job.out}"
        + (f", resuming after {_n(resumed, 'query', 'queries')}" if args.resume else "")
        + f": {_n(summary['pairs_scored'], 'pair')} in {seconds:.1f} s, {rate:.1f} pairs/s"
        + (" (replaced the previous file)" if replaced else "")
    )
    return 0


# ----------------------------------------------------------------------------------------------- export
def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a run's adapter as adapter / merged / seq-cls, parity-checked")
    p.add_argument(
        "source",
        help="training run directory (uses RUN/adapter) or an adapter directory; a full fine-tuning run "
        "(lora.enabled=false, RUN/model) exports merged and seq-cls",
    )
    p.add_argument("--out", required=True, help="export directory (one subdirectory per format with 'all')")
    p.add_argument("--format", default="all", choices=["adapter", "merged", "seq-cls", "all"], help="default all")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights dtype (float32)")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--base", help="base model path or hub id (default: the one recorded in the run)")
    p.add_argument("--max-shard-size", type=shard_size, default="5GB", help="safetensors shard size (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out once the export passed")
    p.set_defaults(func=_run_export)


def shard_size(text: str) -> int:
    """argparse type of --max-shard-size: bytes, from an integer or a size with a unit (transformers' parser)."""
    import argparse

    from transformers.utils.hub import convert_file_size_to_int

    try:
        size = convert_file_size_to_int(int(text) if text.isdigit() else text)
    except ValueError:
        size = 0
    if size <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (an integer of bytes, or with a unit: 5GB, 500MB, 2GiB)"
        )
    return size


def _run_export(args) -> int:
    from tuner.export import FORMATS, ParityError, export
    from tuner.files import check_output_dir

    check_output_dir(args.out, "--out", replaced=True)  # before the model loads (minutes for the 4B base)

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
    from tuner.export_card import gate_rows

    for name, row in gate_rows(report).items():
        print(f"{name:<26} max |Δ logit| {row['max_abs_logit_delta']:.2e}  {'ok' if row['passed'] else 'FAIL'}")
    print(f"parity gate passed ({args.dtype}); wrote {Path(args.out).resolve()}")
    return 0


# ------------------------------------------------------------------------------------------------ merge
def add_merge(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="weighted sum of LoRA adapters of one base (a checkpoint soup, or one adapter towards the base), "
        "written as an adapter",
        description="Writes the adapter W0 + sum of w_i * dW_i (exact: peft's 'cat' combination, checked layer by "
        "layer) with the first source's tokenizer and tuner.json. Evaluate, export and serve it like any adapter.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="training runs (RUN/adapter), adapters or checkpoints")
    p.add_argument("--out", required=True, help="the merged adapter's folder")
    p.add_argument(
        "--weights",
        nargs="+",
        type=float,
        metavar="W",
        help="one per source (default: 1/n each, the average); one source at W < 1 moves it towards the base",
    )
    p.add_argument("--base", help="base model path or hub id (default: the one recorded in the sources)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out once the merge is written")
    p.set_defaults(func=_run_merge)


def _run_merge(args) -> int:
    from tuner.merge import merge_adapters

    record = merge_adapters(args.sources, args.out, args.weights, base_model=args.base, overwrite=args.overwrite)
    parts = ", ".join(f"{w:g} x {s}" for s, w in zip(record["sources"], record["weights"], strict=True))
    print(
        f"merged {parts}: rank {record['rank']} over {record['layers']} layers (max relative difference from the "
        f"weighted sum {record['max_rel_diff_vs_weighted_sum']:.1e}); wrote {Path(args.out).resolve()}"
    )
    return 0


# ------------------------------------------------------------------------------------------------ serve
def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP reranking API (/v1/rerank, /rerank, /v2/rerank, /score, /v1/score) over an export, or print a "
        "vLLM command",
    )
    p.add_argument("model", help="export directory (merged, seq-cls or adapter), or any model Reranker loads")
    p.add_argument("--engine", default="tuner", choices=["tuner", "vllm"], help="tuner (default) or vllm")
    p.add_argument("--exec", action="store_true", help="with --engine vllm: run the command instead of printing it")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default 8000)")
    p.add_argument("--api-key-env", help="name of an environment variable holding the bearer API key")
    p.add_argument(
        "--model-name",
        help="served model name (default: a hub id in full, a format folder of a multi-format export by the "
        "export's name, a run's adapter or model by the run's name and a checkpoint as RUN/checkpoint-N, any other "
        "directory by its name)",
    )
    p.add_argument("--max-documents", type=positive_int, default=1000, help="documents per request (default 1000)")
    p.add_argument("--max-batch-tokens", type=positive_int, help="padded tokens per forward pass (default: Reranker's)")
    p.add_argument(
        "--max-queued-documents",
        type=positive_int,
        default=8192,
        help="documents queued or being scored, over all requests; a request past it gets 503 with Retry-After "
        "(default 8192)",
    )
    p.add_argument(
        "--max-request-mb", type=positive_float, default=32.0, help="request body size; larger gets 413 (default 32)"
    )
    p.add_argument(
        "--max-length", type=positive_int, help="prompt token budget (default: the export's tuner.json, else 8192)"
    )
    p.add_argument(
        "--no-calibration", action="store_true", help="tuner engine: sigmoid(logit), ignoring a tuner.json calibration"
    )
    p.add_argument(
        "--compile", action="store_true", help="tuner engine: compiled decoder layers (GPU; warmed up at start)"
    )
    p.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--dtype", help="bfloat16, float16, float32, auto (checkpoint's); default bf16 on GPU, fp32 on CPU")
    p.add_argument(
        "--graceful-timeout",
        type=positive_float,
        default=25.0,
        help="seconds in-flight requests get to finish after SIGTERM before they are cut off; keep it below your "
        "orchestrator's grace period (Kubernetes: 30 s by default, hence 25 here) (default 25)",
    )
    add_scoring_path_args(p)
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    import os

    api_key = None
    if args.api_key_env and args.engine == "tuner":
        api_key = os.environ.get(args.api_key_env, "").strip()  # a secret file's trailing newline is no part of it
        if not api_key:
            raise UserError(f"--api-key-env {args.api_key_env}: the environment variable is unset, empty or blank")
    if args.exec and args.engine != "vllm":
        raise UserError("--exec runs the vLLM command: use it with --engine vllm")
    if args.engine == "vllm" and (args.prefix_reuse != "off" or args.packing or args.attn_implementation):
        raise UserError(
            "--prefix-reuse, --packing and --attn-implementation are tuner engine options "
            "(vLLM caches shared prefixes and picks its attention backend itself)"
        )
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
        from tuner.loading import read_meta

        calibration = read_meta(Path(args.model).expanduser()).get("calibration")
        if calibration:
            print(
                "tuner serve: warning: vLLM returns sigmoid(logit), not this export's calibrated probability "
                f"(tuner applies sigmoid(logit / {calibration.get('temperature', 1.0)} + "
                f"{calibration.get('bias', 0.0)}) "
                "from its tuner.json); rankings are the same, apply the formula to vLLM's logit for equal scores",
                file=sys.stderr,
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
        max_queued_documents=args.max_queued_documents,
        max_request_bytes=int(args.max_request_mb * 2**20),
        max_length=args.max_length,
        graceful_timeout=args.graceful_timeout,
        calibrated=not args.no_calibration,
        compile=args.compile,
        device=args.device,
        dtype=args.dtype,
        **scoring_path_kwargs(args),
    )
    return 0
