"""`tuner data check|split` and `tuner mine`: validate, split and mine training data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tuner.cli.common import UserError, non_negative_int, positive_int
from tuner.config import ModelConfig
from tuner.files import check_output_file

TRAINING_MAX_LENGTH = ModelConfig.max_length  # a recipe's model.max_length when it sets none


# ------------------------------------------------------------------------------------------ data / mine
def add_data(sub) -> None:
    p = sub.add_parser("data", help="check or split training data")
    verbs = p.add_subparsers(dest="data_command", required=True, metavar="VERB")
    c = verbs.add_parser("check", help="validate a grouped/pairs file (or a BEIR folder) and print its stats")
    c.add_argument("path", help="JSONL/JSON/Parquet/CSV/TSV file, folder with <split>.jsonl, BEIR folder, or hub id")
    c.add_argument(
        "--split",
        help="split: file stem in a folder, hub split, or BEIR qrels (default: train for a folder or hub dataset; a "
        "BEIR folder's test qrels, or its train qrels with --against)",
    )
    c.add_argument(
        "--max-length",
        type=positive_int,
        default=TRAINING_MAX_LENGTH,
        help=f"prompt token budget to count truncation against (default {TRAINING_MAX_LENGTH}: model.max_length's "
        "default, what training cuts prompts to; pass your recipe's model.max_length)",
    )
    c.add_argument("--no-tokens", action="store_true", help="skip token-length statistics (no tokenizer)")
    c.add_argument(
        "--against",
        metavar="EVAL",
        help="an evaluation set (BEIR folder, or a labeled file): count its queries this data already covers (the "
        "query, or a relevant document as a positive), which `tuner eval` will report as 'seen' (a checked BEIR "
        "folder is the training data by its --split qrels, default train)",
    )
    c.add_argument(
        "--against-split",
        help="qrels split of a BEIR --against, or a folder's file stem (default test, as tuner eval reads it)",
    )
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
    from tuner.data.beir import is_beir_folder
    from tuner.data.check import check_beir, check_file, format_report

    path = Path(args.path)
    beir = is_beir_folder(path)
    if args.against_split and not args.against:
        raise UserError("--against-split: for --against (the evaluation set)")
    if args.split and path.is_file():  # it would be ignored: a file is all one split
        raise UserError(
            f"--split {args.split}: names a file in a folder of training files, a BEIR qrels split or a hub split; "
            f"{path} is a file"
        )
    if beir:
        # with --against the folder is the training data: its stats are of the split whose coverage is counted
        split = args.split or ("train" if args.against else "test")
        try:
            report = check_beir(path, split)
        except (OSError, ValueError) as err:
            if not args.against:
                raise
            raise UserError(
                f"{args.path} as the training data of --against: {err} (--split names the training qrels)"
            ) from None
    else:
        report = check_file(
            args.path, args.split, max_length=args.max_length, tokens=not args.no_tokens, show_progress=True
        )
    against = _against(args, beir, report) if args.against and report.ok else None
    skipped = "not counted: the data has errors" if args.against and not report.ok else None
    if args.json:
        payload = {"path": report.path, "rows": report.rows, "groups": report.groups, "ok": report.ok}
        payload.update(stats=report.stats, warnings=report.warnings, errors=report.errors)
        if args.against:
            payload["against"] = against if against is not None else {"evaluation": args.against, "skipped": skipped}
        json.dump(payload, sys.stdout, indent=2)
        print()
    else:
        print(format_report(report))
        if skipped:
            print(f"against {args.against}: {skipped}")
        if against is not None:
            a = against
            print(
                f"against {a['evaluation']}: {a['seen']} of {a['queries']} queries are covered by this data "
                f"({a['query_in_training']} are its queries, {a['positive_in_training']} have a relevant document "
                f"among its positives; {a['relevant_documents_in_training']} of {a['relevant_documents']} relevant "
                "documents): a model trained on it is judged apart on them ('seen' in tuner eval)"
            )
    for err in report.errors if args.json else []:
        print(f"error: {err}", file=sys.stderr)
    return 0 if report.ok else 1


def _against(args, beir: bool, report) -> dict:
    """`data check --against`: how much of the evaluation set the checked data covers (see tuner.overlap)."""
    from tuner.overlap import eval_overlap, file_source_name, groups_view, training_view

    if beir:  # a BEIR folder as training data: the judged queries and relevant documents of its train qrels
        try:
            view = training_view(args.path, args.split or "train")
        except (OSError, ValueError) as err:
            hint = "(--split names the training qrels)"
            raise UserError(f"{args.path} as the training data of --against: {err} {hint}") from None
    else:  # the groups the check read: a file is not read (or a hub dataset fetched) a second time
        view = groups_view(report.loaded, source=file_source_name(args.path, args.split))
    try:
        counts = eval_overlap(view, args.against, args.against_split)
    except (OSError, ValueError) as err:
        raise UserError(f"--against {args.against}: {err}") from None
    return {"evaluation": args.against, **counts}


def _write_both(parts, write_groups) -> None:
    """Write each (groups, path, flag) to a temporary file beside its path, and rename them into place only once
    all are written: a failure on the dev side (a full disk) left the train file replaced by a split whose dev
    file was never written, next to a dev file of another split, whose queries it may now train on. An error
    names the flag and the path, not the temporary file."""
    from contextlib import ExitStack

    from tuner.files import atomic_path, output_error

    with ExitStack() as stack:
        for groups, path, flag in parts:
            try:
                write_groups(groups, stack.enter_context(atomic_path(path)))
            except OSError as err:
                raise UserError(output_error(err, Path(path).absolute(), flag, file=True)) from None


def _run_data_split(args) -> int:
    from tuner.data import load_groups, split_groups, write_groups
    from tuner.data.groups import resolve_path

    # Refuse before reading: an output that is the input (or both outputs one file) would lose data on rename.
    train_out, dev_out = Path(args.train_out).resolve(), Path(args.dev_out).resolve()
    if train_out == dev_out:
        raise UserError(f"--train-out and --dev-out are the same file ({args.train_out}); give two different paths")
    source = resolve_path(args.path)
    if source is not None:
        for flag, out in (("--train-out", train_out), ("--dev-out", dev_out)):
            if out == source.resolve():
                raise UserError(f"{flag} {out} is the input file {source}; write the split to other paths")
    for flag, out in (("--train-out", train_out), ("--dev-out", dev_out)):
        check_output_file(out, flag)  # found before the train side is written, not after
    if not 0.0 <= args.dev_fraction < 1.0:
        raise UserError(f"--dev-fraction must be in [0, 1), got {args.dev_fraction}")
    groups = load_groups(args.path)
    train, dev = split_groups(groups, args.dev_fraction, args.seed)
    if args.dev_fraction > 0 and not dev:
        n = len({g.query for g in groups})
        raise UserError(f"{args.path}: {n} distinct quer{'y' if n == 1 else 'ies'}; a split needs two or more")
    replaced = {out for out in (train_out, dev_out) if out.exists()}
    _write_both(((train, args.train_out, "--train-out"), (dev, args.dev_out, "--dev-out")), write_groups)
    for label, part, out, path in (("train", train, train_out, args.train_out), ("dev", dev, dev_out, args.dev_out)):
        print(f"{label}: {len(part)} groups -> {path}" + (" (replaced the previous file)" if out in replaced else ""))
    if train and dev:
        _print_dev_overlap(train, dev)
    return 0


def _print_dev_overlap(train, dev) -> None:
    """A split by query keeps queries apart, not documents: say how many dev queries have a positive that is also
    a train positive, whose dev figures partly measure memory (see tuner.overlap)."""
    from tuner.data.groups import groups_as_collection
    from tuner.overlap import groups_view, seen_counts, split_queries

    beir = groups_as_collection(dev).beir
    counts = seen_counts(split_queries(beir.queries, beir.qrels, beir.corpus, groups_view(train)))
    if counts["seen"]:
        print(
            f"dev: {counts['seen']} of {counts['queries']} queries have a positive that is also a train positive; "
            "tuner eval reports them apart from the rest ('seen' / 'unseen')"
        )


def add_mine(sub) -> None:
    from tuner import mining

    p = sub.add_parser(
        "mine", help="mine hard negatives for a BEIR split or a labeled file with BM25 (+ optional reranker)"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--beir", help="BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/)")
    source.add_argument(
        "--data",
        help="a labeled file in a training format (e.g. query-positive pairs alone): BM25 searches every document "
        "of the file (plus --corpus) and each group gets mined negatives in place of its own",
    )
    p.add_argument("--corpus", help="with --data: more documents to mine from, a BEIR corpus.jsonl[.gz]")
    p.add_argument("--split", default="train", help="qrels split (default train); with --data, a folder's <split> file")
    p.add_argument("--out", required=True, help="output JSONL of groups; the BM25 index is cached next to it")
    p.add_argument(
        "--depth",
        type=positive_int,
        default=mining.DEFAULT_DEPTH,
        help="BM25 candidates per query (default %(default)s)",
    )
    p.add_argument(
        "--range-min",
        type=non_negative_int,
        default=mining.DEFAULT_RANGE_MIN,
        help="skip the top N candidates, likely unjudged positives (default %(default)s)",
    )
    p.add_argument(
        "--range-max",
        type=positive_int,
        default=mining.DEFAULT_RANGE_MAX,
        help="sample ranks before this one only (0-based, exclusive; capped at --depth) (default %(default)s)",
    )
    p.add_argument(
        "--num-negatives",
        type=positive_int,
        default=mining.DEFAULT_NUM_NEGATIVES,
        help="negatives per query (default %(default)s: one group of 8; a recipe's own mining, data.num_negatives, "
        "keeps a pool of 15 that each epoch samples a group's negatives from, as training does from a file with more)",
    )
    p.add_argument(
        "--sampling",
        choices=["random", "top"],
        default="random",
        help="random sample of the range, or its best ranked (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--cache-dir", help="BM25 index cache folder (default: the output's folder)")
    p.add_argument("--reranker", help="model dir or hub id that filters false negatives (and gives teacher scores)")
    p.add_argument("--adapter", help="PEFT adapter on top of --reranker")
    p.add_argument(
        "--margin",
        type=float,
        help=f"relative margin to the positive's probability (default {mining.DEFAULT_MARGIN}, with --reranker)",
    )
    p.add_argument("--absolute-margin", type=float, help="absolute margin to the positive (probability)")
    p.add_argument("--max-score", type=float, help="drop candidates whose probability is above this")
    p.add_argument("--teacher-scores", action="store_true", help="write the reranker's logits as pos/neg_scores")
    p.add_argument(
        "--instruction",
        help="instruction for reranker scoring (default: the contract's); with --data, a row's own instruction "
        "scores its group",
    )
    p.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        help="reranker prompt token budget (default: the reranker's tuner.json, else 8192)",
    )
    p.add_argument("--device", help="reranker device")
    p.add_argument("--dtype", help="reranker dtype")
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --reranker: continue an interrupted run, reading back the scores it kept in OUT.scores.partial "
        "(same reranker and its options; the mining options may change)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_mine)


def _run_mine(args) -> int:
    import time

    from tuner import mining
    from tuner.data import write_groups
    from tuner.mining import MiningStats

    _check_mine_args(args)
    check_output_file(args.out, "--out")  # before the mining (hours with a reranker), not after it
    scores_path = Path(args.out).with_name(Path(args.out).name + ".scores.partial")
    if args.reranker:
        mining.ScoreCache.check_start(scores_path, args.resume)  # before the model loads
    start = time.perf_counter()
    source, extra = _mine_source(args)
    reranker = _score_cache(args, scores_path) if args.reranker else None
    out = Path(args.out)
    stats = MiningStats()
    groups = _mine(args, source, extra, _mine_options(args, out, reranker, stats), scores_path)
    if not groups:  # an empty training file only fails later, in `tuner train`
        where = args.data if args.data else f"{args.beir} ({args.split})"
        kept = ""
        if reranker is not None:  # its scores are still good: the rerun with looser options reads them back
            reranker.close()
            kept = (
                f", or the reranker dropped them all ({stats.filtered}: loosen --margin, --absolute-margin or "
                f"--max-score); its scores are kept in {scores_path}: the rerun with --resume reads them back"
            )
        raise UserError(
            f"{where}: no training group from {stats.queries} judged queries: none has a negative among BM25 ranks "
            f"{_ranks(args)} of --depth {args.depth} (lower --range-min or raise --depth){kept}; nothing was written "
            f"to {out}"
        )
    replaced = out.exists()
    write_groups(groups, out)
    if reranker is not None:
        reranker.close(remove=True)  # the output holds what they were for
    _print_mine_summary(args, out, groups, stats, reranker, scores_path, replaced, start)
    return 0


def _check_mine_args(args) -> None:
    """Refuse, before anything is read, the flags that would be ignored or leave nothing to mine (and fill in
    --margin's default)."""
    _check_reranker_flags(args)
    _check_margins(args)
    _check_ranks(args)
    _check_corpus(args)


def _check_reranker_flags(args) -> None:
    """The reranker's flags (and --resume) without --reranker: they would be ignored (plain BM25 negatives)."""
    reranker_only = {
        "--teacher-scores": args.teacher_scores,
        "--adapter": args.adapter,
        "--margin": args.margin is not None,
        "--absolute-margin": args.absolute_margin is not None,
        "--max-score": args.max_score is not None,
        "--instruction": args.instruction is not None,
        "--max-length": args.max_length is not None,
        "--device": args.device,
        "--dtype": args.dtype,
    }
    given = [flag for flag, value in reranker_only.items() if value]
    if given and not args.reranker:  # they would be ignored: plain BM25 negatives
        raise UserError(
            f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --reranker (they tune its filter)"
        )
    if args.resume and not args.reranker:
        raise UserError("--resume continues a --reranker run from its scores; BM25 alone keeps none: run it again")


def _check_margins(args) -> None:
    """The reranker filter's margins and cap are probabilities; --margin's default is set here."""
    from tuner import mining

    for flag, value in (("--margin", args.margin), ("--absolute-margin", args.absolute_margin),
                        ("--max-score", args.max_score)):  # fmt: skip
        if value is not None and not 0.0 <= value <= 1.0:  # probabilities and their differences
            raise UserError(f"{flag} must be in [0, 1] (the probability scale), got {value}")
    if args.margin is None:
        args.margin = mining.DEFAULT_MARGIN


def _check_ranks(args) -> None:
    """--range-min, --range-max and --depth must leave BM25 ranks to sample negatives from."""
    if args.range_min >= args.range_max:
        raise UserError(f"--range-min {args.range_min} must be below --range-max {args.range_max}")
    if args.depth <= args.range_min:
        raise UserError(
            f"--depth {args.depth} leaves no candidate: it must be above --range-min {args.range_min} (the top "
            f"{args.range_min} BM25 candidates are skipped)"
        )


def _check_corpus(args) -> None:
    """--corpus: for --data only, and a corpus file (a folder or a missing file is named, with a likely file)."""
    if args.corpus and not args.data:
        raise UserError("--corpus adds documents to a --data file's pool (a BEIR folder has its own corpus)")
    if args.corpus and Path(args.corpus).expanduser().is_dir():  # not "no such file; did you mean <itself>?"
        inside = [Path(args.corpus) / n for n in ("corpus.jsonl", "corpus.jsonl.gz")]
        inside = [p for p in inside if p.expanduser().is_file()]
        raise UserError(
            f"--corpus {args.corpus}: a folder; --corpus takes a corpus file (a BEIR corpus.jsonl[.gz])"
            + (f", e.g. {inside[0]}" if inside else "")
        )
    if args.corpus and not Path(args.corpus).expanduser().is_file():
        from tuner.files import similar_names

        close = similar_names(args.corpus)  # BEIR's corpus.jsonl is often corpus.jsonl.gz
        hint = f"; did you mean {', '.join(map(str, close))}?" if close else ""
        raise UserError(f"--corpus {args.corpus}: no such file{hint}")


def _mine_source(args):
    """What to mine for: a --data file's groups and --corpus's documents (None without it), or a --beir split (and
    None)."""
    from tuner.data import load_beir, load_groups

    if args.data:
        from tuner.data.beir import read_corpus

        labeled = load_groups(args.data, args.split)
        extra = read_corpus(args.corpus) if args.corpus else None
        return labeled, extra
    return load_beir(args.beir, args.split), None


def _score_cache(args, scores_path: Path):
    """--reranker (and --adapter) loaded, its scores kept in `scores_path` as they come (read back with
    --resume)."""
    from tuner import mining
    from tuner.rerank import effective_settings, source_identity
    from tuner.scoring import Reranker

    loaded = Reranker.from_pretrained(
        args.reranker, adapter=args.adapter, device=args.device, dtype=args.dtype, max_length=args.max_length
    )
    settings = {
        "reranker": source_identity(args.reranker),
        "adapter": source_identity(args.adapter),
        **effective_settings(loaded, args.instruction, True, args.reranker, args.adapter),
    }
    return mining.ScoreCache(loaded, scores_path, settings, resume=args.resume)


def _mine_options(args, out: Path, reranker, stats) -> dict:
    """The mining functions' keyword arguments (the BM25 index is cached next to `out` by default)."""
    return dict(
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


def _mine(args, source, extra, options: dict, scores_path: Path) -> list:
    """The mined groups of `source` (see _mine_source); an interrupted --reranker run says where its scores are
    kept for --resume."""
    from tuner.data.check import _n
    from tuner.mining import mine_for_groups, mine_negatives

    reranker = options["reranker"]
    try:
        if args.data:
            return mine_for_groups(source, corpus=extra, name=Path(args.data).name, **options)
        return mine_negatives(source, **options)
    except BaseException:
        if reranker is not None:
            reranker.close()
            if scores_path.exists():
                print(
                    f"tuner mine: {scores_path} keeps the reranker's scores of {_n(len(reranker.scores), 'pair')}; the "
                    "same command with --resume reads them back instead of scoring them again",
                    file=sys.stderr,
                )
        raise


def _ranks(args) -> str:
    """The BM25 ranks negatives are sampled from, as the messages name them."""
    return f"{args.range_min}..{min(args.range_max, args.depth)}"


def _print_mine_summary(
    args, out: Path, groups: list, stats, reranker, scores_path: Path, replaced: bool, started: float
) -> None:
    """What `tuner mine` wrote: groups per judged query, negatives per group, the queries that came short or kept
    none, what the reranker scored and dropped, and what was left out (`started`: time.perf_counter() at the start
    of the work)."""
    import time

    from tuner.data.check import _n
    from tuner.mining import negatives_histogram

    ranks = _ranks(args)
    hist = ", ".join(f"{k}: {v}" for k, v in negatives_histogram(groups).items())
    # which queries came short, fewest first: on a small corpus of one's own BM25 may match little past --range-min
    short = sorted((g for g in groups if len(g.neg) < args.num_negatives), key=lambda g: len(g.neg))
    kept = "held too few candidates" + (" the reranker kept" if reranker else "")
    counts = [f"{_query_label(g.qid, g.query)}: {len(g.neg)}" for g in short]
    fewest = f"\n  fewest negatives: {_first(counts)} (BM25 ranks {ranks} {kept}; lower --range-min or raise --depth)"
    seconds = time.perf_counter() - started
    print(
        f"wrote {len(groups)} groups for {stats.queries} judged queries to {out} in {seconds:.1f} s"
        + (" (replaced the previous file)" if replaced else "")
        + f"\n  groups with {args.num_negatives} negatives: {stats.full} "
        f"({100 * stats.full / max(1, stats.queries):.1f}% of queries); negatives per group: {{{hist}}}"
        + (fewest if short else "")
        + (
            f"\n  no group: {_n(len(stats.no_negatives), 'query', 'queries')} kept no negative ("
            + _first([_query_label(qid, query) for qid, query in stats.no_negatives])
            + f"; BM25 ranks {ranks} {kept})"
            if stats.no_negatives
            else ""
        )
        + (f"\n  reranker: {stats.scored_pairs} pairs scored, {stats.filtered} dropped" if reranker else "")
        + (f" ({reranker.reused} of them read back from {scores_path})" if reranker and reranker.reused else "")
        + (f"\n  left out: {len(stats.skipped)} ({_first(stats.skipped)})" if stats.skipped else "")
    )


def _query_label(qid: str | None, query: str) -> str:
    """A mined query as the summary names it: its qid (BEIR, or a pairs file's), else its text."""
    if qid is not None:
        return f"query {qid!r}"
    text = query if len(query) <= 60 else query[:57] + "..."
    return f"query {text!r}"


def _first(items: list[str], n: int = 3) -> str:
    return "; ".join(items[:n]) + ("; ..." if len(items) > n else "")
