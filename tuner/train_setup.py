"""The pieces `tuner.train.train` assembles: run directory, base model path, training groups, evaluators,
logging and the `tuner.json` an adapter carries (the experiment trackers are `tuner.tracking`)."""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuner.config import Config, ConfigError, DataSection, EvalSection, ModelConfig, atomic_write_json

log = logging.getLogger("tuner.train")

RUNS_DIR = "runs"


def output_dir_for(config: Config, create: bool = True) -> Path:
    """`output.dir`, or `runs/<recipe name>` under the current directory (made unless `create` is false).

    A folder that cannot be made or written in raises `ConfigError` naming `output.dir` and the folder at fault (a
    file where a folder is wanted, no permission), before any data or model work."""
    from tuner.files import make_output_dir

    out = Path(config.output.dir) if config.output.dir else Path(RUNS_DIR) / config.name
    out = out.expanduser().resolve()
    if create:
        key = "output.dir" if config.output.dir else f"output.dir (default {RUNS_DIR}/<name>)"
        try:
            make_output_dir(out, key)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return out


LOCK_FILE = "train.lock"  # in <out>/logs: the process that trains into the run directory now


@contextlib.contextmanager
def run_lock(out: Path, main: bool = True) -> Iterator[None]:
    """Hold `<out>/logs/train.lock` while a run trains into `out` (the main process of a launch holds it).

    A second `tuner train` into the same output.dir (a typo'd name, one terminal too many, a sweep agent given a
    fixed output.dir) rewrote the first's config.yaml and metrics.json, or with output.overwrite deleted its
    checkpoints, while it ran. It now stops before it writes anything, naming the holder (pid, host, start).

    An advisory `flock` on the file, not the file's existence, is the lock: the kernel drops it when its process
    ends however it ends (killed, out of memory, a node lost: on NFS when the lease runs out), so nothing is left
    to judge stale by pid or to delete by hand, and two runs starting together cannot both take it. The file stays,
    emptied on release. Without `fcntl` (not POSIX) there is no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        fcntl = None
    if not main or fcntl is None:
        yield
        return
    import socket
    import time

    from tuner.files import lock_exclusive

    lock = out / "logs" / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            taken = lock_exclusive(fd)
        except OSError as err:  # a file system without locks (some network mounts): train, unguarded, as before
            log.warning("%s: cannot lock it (%s); a second tuner train into %s would not be stopped", lock, err, out)
            taken = True  # unguarded
        if not taken:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:  # taken an instant ago, not written yet
                holder = {}
            holder = holder if isinstance(holder, dict) else {}
            raise ConfigError(
                f"{out} is being trained by another tuner train (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {holder.get('started', '?')}): wait for it to end, or train into "
                "another output.dir"
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # free: an empty lock file (the flock goes with the descriptor, below)
    finally:
        os.close(fd)


# Keys a resumed run may change: they decide where and how often numbers are reported, never the numbers (the
# trained weights, the LR schedule, the data order, the evaluation). A key ending in "." covers its whole section.
RESUME_SAFE_KEYS = (
    "tracking.",  # experiment tracker, project, entity, run name, tags
    "train.logging_steps",  # how often the loss is logged
    "output.dir",  # the same run directory may be spelled differently (relative, absolute, ~)
    "eval.base_cache_dir",  # where base figures shared between runs are kept
    "output.overwrite",  # only consulted when a run starts without --resume
    "name",  # recipe name recorded in tuner.json and metrics.json
)


def check_resume_config(saved: Path, config: Config) -> None:
    """Refuse to resume a run with a recipe that differs from the run's saved `config.yaml`.

    A changed `train.max_steps` would silently splice two LR schedules, a changed `lora.r` would fail deep inside
    the checkpoint load; both are caught here, before anything in the run directory is written. Keys listed in
    `RESUME_SAFE_KEYS` may differ.

    Args:
        saved: the run's `config.yaml`; a run without one (deleted by hand) is resumed with a warning.
        config: the newly resolved recipe.

    Raises:
        ConfigError: one line naming every differing dotted key with its saved and new value.
    """
    from tuner.config import describe_fields, load_config

    if not saved.is_file():
        log.warning("--resume: %s is missing; the recipe cannot be compared with the run's", saved)
        return
    try:
        before = load_config(saved)
    except ConfigError as err:
        raise ConfigError(f"--resume: cannot read the run's saved config: {err}") from None
    # every field as (dotted key, type, JSON value, doc), the rows `tuner config` prints; one schema, same keys
    saved_values = {key: value for key, _, value, _ in describe_fields(before)}
    diffs = [
        f"{key}: saved {saved_values[key]}, new {value}"
        for key, _, value, _ in describe_fields(config)
        if value != saved_values[key]
        and not any(key == safe or (safe.endswith(".") and key.startswith(safe)) for safe in RESUME_SAFE_KEYS)
    ]
    if diffs:
        raise ConfigError(
            f"--resume: the recipe differs from the run's saved {saved} in {'; '.join(diffs)} "
            "(resume with the same recipe and overrides, or train into a new output.dir)"
        )


DATA_RECORD = "data.json"  # in the run directory: the training data's files as the run started on them


def data_fingerprint(config: Config) -> dict[str, dict[str, Any]]:
    """The files the run trains on, each by its size and SHA-256 under the recipe key that names it: each local
    `data.train_file` (a folder by all its files, a hub dataset id as its id), or the BEIR folder's corpus, queries
    and qrels split that `data.beir` mines groups from."""
    from tuner.data.beir import _find
    from tuner.data.groups import resolve_path

    d = config.data
    files: dict[str, Path | str] = {}
    if d.train_file:
        for n, file in enumerate(d.train_files):
            key = "data.train_file" if isinstance(d.train_file, str) else f"data.train_file[{n}]"
            files[key] = resolve_path(file) or str(file)
    elif d.beir:
        folder = Path(d.beir).expanduser()
        files["data.beir corpus"] = _find(folder, "corpus")
        files["data.beir queries"] = _find(folder, "queries")
        files[f"data.beir qrels/{d.split}.tsv"] = folder / "qrels" / f"{d.split}.tsv"
    return {key: _fingerprint(path) for key, path in files.items()}


def _fingerprint(path: Path | str) -> dict[str, Any]:
    """One training source as `data_fingerprint` records it: a hub id by itself, a folder by its files, a file by
    its size and SHA-256."""
    from tuner.files import sha256_file

    if isinstance(path, str):
        return {"hub": path}
    if path.is_dir():
        return _folder_fingerprint(path)
    return {"file": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _folder_fingerprint(folder: Path) -> dict[str, Any]:
    """A folder of training data (a `save_to_disk` folder, a hub dataset's local copy) by its files' total size and
    one SHA-256 over their relative paths and contents; hidden files and folders (`.git`, `.cache`) are left out."""
    import hashlib

    from tuner.files import sha256_file

    digest, size = hashlib.sha256(), 0
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not file.is_file():
            continue
        size += file.stat().st_size
        digest.update(f"{relative.as_posix()}\0{sha256_file(file)}\n".encode())
    return {"file": str(folder), "bytes": size, "sha256": digest.hexdigest()}


def check_resume_data(saved: Path, config: Config) -> None:
    """Refuse to resume a run whose training data changed under the same path since it started (a file edited or
    regenerated: its checkpoints trained on the old rows, and the rest of the run would train on other ones, with
    another data order, with no word of it). A run started before this record was kept is resumed as before."""
    if not saved.is_file():
        return
    try:
        before = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"--resume: cannot read {saved} ({err}); delete it to resume unchecked") from None
    now = data_fingerprint(config)
    same = ("bytes", "sha256", "hub")  # not the path: the recipe's own comparison has it
    for key in sorted(set(before) | set(now)):
        then, current = before.get(key) or {}, now.get(key) or {}
        if [then.get(k) for k in same] != [current.get(k) for k in same]:
            what = current.get("file") or current.get("hub") or then.get("file") or then.get("hub")
            raise ConfigError(
                f"--resume: {key} ({what}) changed since the run started (its size or content differs from {saved}): "
                "the checkpoints trained on the old rows; resume with the data as it was, or train into a new "
                "output.dir"
            )


def write_data_record(out: Path, config: Config) -> None:
    """Record `data_fingerprint` in the run directory when the run starts (see `check_resume_data`)."""
    atomic_write_json(out / DATA_RECORD, data_fingerprint(config))


def check_before_work(config: Config) -> None:
    """What the recipe's types cannot say, checked before any data or model work: names transformers must know
    (scheduler, optimizer) and the BEIR folders and eval.data file the run reads."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    t = config.train
    for key, value, names in (
        ("train.scheduler", t.scheduler, [x.value for x in SchedulerType]),
        ("train.optim", t.optim, [x.value for x in OptimizerNames]),
    ):
        if value not in names:
            close = difflib.get_close_matches(value, names, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else f"one of {', '.join(names)}"
            raise ConfigError(f"{key}: {value!r} is not a name transformers knows; {hint}")
    folders = (("data.beir", config.data.beir), ("eval.beir", config.eval.beir), ("eval.ood", config.eval.ood))
    for key, folder in folders:
        if key == "data.beir" and config.data.train_file:
            continue  # not read: the groups come from data.train_file
        if folder is not None and not Path(folder).expanduser().is_dir():
            raise FileNotFoundError(f"{key}: {folder!r} is not a directory (a BEIR folder)")
    if config.eval.data:
        from tuner.data.groups import resolve_path

        try:
            resolve_path(config.eval.data, config.eval.split)  # a missing or mistyped file, before the model loads
        except ValueError as err:
            raise ConfigError(f"eval.data: {err}") from None
    # the training data and a local base too: before the run folder is made and the tokenizer loads
    check_training_source(config.data)
    from tuner.loading import _check_reachable, _looks_local

    init = config.lora.init_adapter
    if init is not None:
        folder = Path(init_adapter_dir(init))
        if (folder.exists() or _looks_local(init)) and not (folder / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"lora.init_adapter: {init!r} is no LoRA adapter (no adapter_config.json); give a tuner run's folder, "
                "its adapter/ or a checkpoint-N folder"
            )
        # this run's own adapter/ or checkpoints/: output.overwrite deletes them before the model loads (the adapter
        # to start from was lost, then the load failed), and a new adapter/ replaces the one trained on
        out = output_dir_for(config, create=False)
        if folder.exists() and any(folder.resolve().is_relative_to(out / name) for name in ("adapter", "checkpoints")):
            raise ConfigError(
                f"lora.init_adapter: {init!r} is in this run's own folder {out} (output.dir), which training "
                "replaces; train the second round into another output.dir"
            )
    if not config.model.tiny:
        name = config.model.name_or_path
        if Path(name).expanduser().exists() or _looks_local(name):  # a hub id is asked once, when the base loads
            _check_reachable(name)


def init_adapter_dir(name: str) -> str:
    """`lora.init_adapter` as peft loads it: a tuner run's folder stands for its adapter/; else as given."""
    path = Path(name).expanduser()
    if (path / "adapter" / "adapter_config.json").is_file():
        return str(path / "adapter")
    return str(path) if path.exists() else name


def check_training_source(data: DataSection) -> None:
    """The recipe names training data, and a local `data.train_file` is there (a hub dataset id is left to
    `load_groups`), each file of a list once. Raises `FileNotFoundError` / `ConfigError` naming the recipe key."""
    if data.train_file:
        from tuner.data.beir import DataError
        from tuner.data.groups import resolve_path

        files = data.train_files
        seen: dict[Any, int] = {}
        for n, file in enumerate(files):
            try:
                local = resolve_path(file)
            except DataError as err:
                key = "data.train_file" if isinstance(data.train_file, str) else f"data.train_file[{n}]"
                raise FileNotFoundError(f"{key}: {err}") from None
            same = local.resolve() if local is not None else file  # ./a.jsonl, a.jsonl and a link to it: one file
            if same in seen:  # each of its groups would be trained on twice, with no word of it
                raise ConfigError(
                    f"data.train_file[{n}]: {file} is data.train_file[{seen[same]}] again; list each file once"
                )
            seen[same] = n
    elif not data.beir:
        raise ConfigError("data: set data.train_file (grouped JSONL) or data.beir (a BEIR folder to mine)")


def prepare_base(model: ModelConfig, out: Path) -> str:
    """The base model's path or hub id; with `model.tiny`, a random tiny Qwen3 written into `<out>/tiny-model`."""
    if model.tiny:
        from tuner.tiny import write_tiny_model

        path = out / "tiny-model"
        if not (path / "config.json").is_file():  # deterministic from the seed: reuse it on --resume
            heads = 4 if model.tiny_hidden % 4 == 0 else 1
            write_tiny_model(
                path,
                model.tiny_layers,
                model.tiny_hidden,
                model.tiny_seed,
                heads=heads,
                kv_heads=2 if heads == 4 else 1,
            )
        return str(path)
    from tuner.loading import _check_reachable

    _check_reachable(model.name_or_path)
    local = Path(model.name_or_path).expanduser()
    # absolute: the adapter's tuner.json records it, and a relative path would only resolve from this directory
    return str(local.resolve()) if local.is_dir() else model.name_or_path


def read_tokenizer(base: str):
    """The base's tokenizer (or the shipped Qwen3 one when the base has none), prepared for batching."""
    from tuner.loading import _load_tokenizer_for

    return _load_tokenizer_for(base, None)


def load_training_groups(
    data: DataSection, loss_kind: str, seed: int, out: Path, hard_label_weight: float = 0.0
) -> list:
    """Training groups from `data.train_file` (a training file, or a list of them) or mined with BM25 from
    `data.beir`.

    Raises:
        FileNotFoundError: the train file or BEIR folder does not exist (the message names the recipe key).
        ConfigError: neither source is set, or `distill` without teacher scores.
    """
    from tuner.data.groups import consistent_groups

    check_training_source(data)
    if data.train_file:
        from tuner.data import load_groups

        # a list: every file's groups, in the order of the list (the sampler shuffles them together)
        groups = [g for file in data.train_files for g in load_groups(file)]
        source = " + ".join(data.train_files)
    else:  # data.beir (check_training_source: one of them is set)
        from tuner.data.beir import load_beir
        from tuner.mining import mine_negatives

        if not Path(data.beir).is_dir():
            raise FileNotFoundError(f"data.beir: {data.beir!r} is not a directory (a BEIR folder)")
        beir = load_beir(data.beir, data.split)
        cache = Path(data.cache_dir) if data.cache_dir else out / "cache"
        groups = mine_negatives(
            beir,
            depth=data.mine_depth,
            range_min=data.mine_range_min,
            num_negatives=data.num_negatives,
            seed=seed,
            cache_dir=cache,
            show_progress=False,
        )
        source = f"{data.beir} ({data.split}, BM25 negatives)"
    groups, cleaned = consistent_groups(groups)
    if cleaned.conflicts or cleaned.repeats:
        from tuner.data.check import _n, _v  # data check's singular / plural, for the same counts

        what, why = [], []
        if n := cleaned.conflicts:
            what.append(
                f"{_n(n, 'negative')} {_v(n, 'that is', 'that are')} also a positive of {_v(n, 'its', 'their')} "
                f"query ({cleaned.example})"
            )
            why.append("a loss cannot teach a document both ways, and evaluation counts such a document as a positive")
        if n := cleaned.repeats:
            what.append(f"{_n(n, 'repeat')} of a document within its group")
            why.append("a repeated document is kept once (a positive at its higher grade)")
        log.warning(
            "%s: left out %s, in %s: %s (`tuner data check FILE` counts them)",
            source,
            " and ".join(what),
            _n(cleaned.groups_changed, "group"),
            "; ".join(why),
        )
    usable = [g for g in groups if g.pos and g.neg]
    if groups and len(usable) < len(groups):  # a "negs" typo, or rows of positives only: say so, not silently
        log.warning(
            "%s: left out %d of %d groups without a negative (a group of %d documents needs one; is the field "
            "named 'neg'? `tuner mine --data FILE` mines negatives for rows of positives alone)",
            source,
            len(groups) - len(usable),
            len(groups),
            data.group_size,
        )
    groups = usable
    if data.max_groups is not None:
        groups = groups[: data.max_groups]
    if not groups:
        raise ConfigError(
            f"data: no usable group (with a positive and a negative) in {source}; for positives alone, mine "
            "negatives first: tuner mine --data FILE --out groups.jsonl"
        )
    k = data.positives_per_group
    short = sum(1 for g in groups if len(g.neg) < data.group_size - min(k, len(g.pos)))
    _say_how_grades_train(groups, k, loss_kind, hard_label_weight, source)
    if short:
        # sample_group fills such a group with placeholder slots that no loss counts (a fixed group shape keeps a
        # batch one tensor): they cost a short forward each and teach nothing, and a group of 1 negative is a
        # pairwise task; worth knowing before hours of GPU time
        log.warning(
            "%s: %d of %d groups have fewer negatives than their slots (data.group_size %d minus the group's "
            "positives, at most data.positives_per_group %d); they train on the negatives they have (the rest of the "
            "group is masked out of the loss). Mine more (`tuner mine --data FILE`, data.num_negatives) or lower "
            "data.group_size",
            source,
            short,
            len(groups),
            data.group_size,
            k,
        )
    if loss_kind == "distill":
        missing = sum(1 for g in groups if g.pos_scores is None or g.neg_scores is None)
        if missing:
            raise ConfigError(
                f"loss.kind=distill needs teacher scores (pos_scores and neg_scores) in every group; "
                f"{missing} of {len(groups)} groups in {source} lack one or both (mine with a reranker teacher)"
            )
    return groups


def _say_how_grades_train(
    groups: list, positives_per_group: int, loss_kind: str, hard_label_weight: float, source: str
) -> None:
    """One line on what the data's graded or multiple positives do in training (nothing, unless configured)."""
    graded = sum(1 for g in groups if g.pos_grades is not None and len(set(g.pos_grades)) > 1)
    several = sum(1 for g in groups if len(g.pos) > 1)
    how = "loss.kind=listwise, or distill with loss.hard_label_weight > 0, weighs each positive by its grade"
    if positives_per_group == 1:
        if graded:
            log.warning(
                "%s: %d of %d groups have positives of different grades; with data.positives_per_group 1 each step "
                "trains one positive against negatives, so the grades do not steer training (set "
                "data.positives_per_group, e.g. 2: %s)",
                source,
                graded,
                len(groups),
                how,
            )
        return
    if not several:
        log.warning(
            "%s: data.positives_per_group is %d but no group has more than one positive: it changes nothing",
            source,
            positives_per_group,
        )
        return
    if graded and loss_kind in ("pointwise", "sft"):
        unused = f"loss.kind={loss_kind} treats every positive as 'yes'"
    elif graded and loss_kind == "distill" and hard_label_weight <= 0:
        unused = "loss.kind=distill with loss.hard_label_weight 0 follows the teacher's scores alone"
    else:
        log.info(
            "%s: up to %d positives per group; %d of %d groups have several%s",
            source,
            positives_per_group,
            several,
            len(groups),
            f", {graded} of them graded (targets weighed by grade)" if graded else "",
        )
        return
    log.warning("%s: %s: the grades of %d groups do not steer training (%s)", source, unused, graded, how)


def build_evaluators(ev: EvalSection, seed: int, cache_dir: Path) -> dict[str, Any]:
    """`{"dev": Evaluator, "ood": Evaluator}` for the configured BEIR folders or `eval.data` file (empty without
    a dev set)."""
    from tuner.evaluate import Evaluator

    out: dict[str, Any] = {}
    if ev.data:
        try:
            out["dev"] = Evaluator.from_groups(
                ev.data,
                ev.split,
                max_queries=ev.max_queries,
                seed=seed,
                metrics=ev.metrics,
                primary_metric=ev.metrics[0],
                show_progress=False,
            )
        except ValueError as err:  # DataError included: name the field the file came from
            raise ConfigError(f"eval.data: {err}") from None
    if ev.beir or ev.ood:
        from tuner.report import cutoff_note

        note = cutoff_note(ev.metrics, ev.top_k)
        if note:  # logged as metric@k, it reads as if k documents had been ranked
            log.warning("eval.top_k=%d: %s", ev.top_k, note)
    for key, folder, split in (("dev", ev.beir, ev.split), ("ood", ev.ood, ev.ood_split)):
        if not folder:
            continue
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"eval.{'beir' if key == 'dev' else 'ood'}: {folder!r} is not a directory")
        out[key] = Evaluator.from_beir(
            folder,
            split,
            candidates="bm25",
            top_k=ev.top_k,
            max_queries=ev.max_queries,
            seed=seed,
            cache_dir=cache_dir,
            metrics=ev.metrics,
            primary_metric=ev.metrics[0],
            show_progress=False,
        )
    return out


class RankEval:
    """Reranks an evaluator's candidates with a live (PEFT) model: `rank_eval(model) -> {metric: value}`."""

    def __init__(self, evaluator, tokenizer, max_length: int, batch_tokens: int | None, instruction: str | None):
        self.evaluator = evaluator
        self.tokenizer = tokenizer
        self.kwargs = {"max_length": max_length, "batch_tokens": batch_tokens, "instruction": instruction}
        self._rerankers: dict[int, Any] = {}
        self.pairs_scored = 0  # by this process (under DDP, its share)
        # per-query metrics of the latest call and of the base (the seen / unseen split of metrics.json reads them)
        self.last_per_query: dict[str, dict[str, float]] = {}
        self.base_per_query: dict[str, dict[str, float]] = {}

    def announce(self, what: str) -> None:
        """Log what is about to be scored: an evaluation is minutes of work with no other output (SciFact test at
        top 20 is 6,000 pairs), which looked like a hung run."""
        ev = self.evaluator
        log.info("scoring %s on %s: %d queries, %d pairs ...", what, ev.name, len(ev.queries), ev.num_pairs)

    def __call__(self, model) -> dict[str, float]:
        import torch.distributed as dist

        from tuner.scoring import Reranker

        # One Reranker per model object: the evaluator caches its encoded prompts across calls.
        reranker = self._rerankers.get(id(model))
        if reranker is None:
            reranker = Reranker(model, self.tokenizer, show_progress=False, **self.kwargs)
            self._rerankers[id(model)] = reranker
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world == 1:
            self.pairs_scored += self.evaluator.num_pairs
            result = self.evaluator.evaluate(reranker)  # switches to eval mode and back
            self.last_per_query = result.per_query
            return dict(result.metrics)
        # Under DDP every rank holds the same weights: each reranks its share of the queries and the runs are
        # gathered, so evaluation takes 1/world of the time instead of being repeated on every rank.
        run, _ = self.evaluator.rerank(reranker, shard=(dist.get_rank(), world))
        self.pairs_scored += sum(len(docs) for docs in run.values())
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, run)
        merged = {q: ranked for part in parts for q, ranked in part.items()}
        result = self.evaluator.score_run(merged)
        self.last_per_query = result.per_query
        return dict(result.metrics)

    def base(self, model) -> dict[str, float]:
        """Metrics of the base model (the adapter switched off; a fresh full fine-tune is its own base)."""
        if hasattr(model, "disable_adapter"):
            self.announce("the base (adapter off)")
            with model.disable_adapter():
                values = self(model)
        else:
            self.announce("the base")
            values = self(model)
        self.base_per_query = self.last_per_query
        return values


def setup_logging(file: Path | None, main: bool) -> None:
    """`tuner.train` logs to stdout and to `file` (None: stdout only) on the main process; other ranks log
    warnings only."""
    logger = logging.getLogger("tuner")
    logger.setLevel(logging.INFO if main else logging.WARNING)
    for h in list(logger.handlers):
        if getattr(h, "_tuner_run", False):
            logger.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if main and file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(file, encoding="utf-8"))
    for h in handlers:
        h._tuner_run = True  # type: ignore[attr-defined]
        h.setFormatter(fmt)
        logger.addHandler(h)
    logger.propagate = False


def write_meta(
    target: Path,
    *,
    base_model: str,
    instruction: str | None,
    max_length: int,
    encoder,
    version: str,
    recipe: str,
    eval: dict[str, Any],
    init_adapter: str | None = None,
) -> None:
    """The adapter's `tuner.json`: what `Reranker.from_pretrained` and the export helper read (and, for a second
    round, the adapter it started from)."""
    from tuner.loading import TUNER_META

    meta = {
        "base_model": base_model,
        "instruction": instruction,
        "max_length": max_length,
        "yes_token_id": encoder.yes_id,
        "no_token_id": encoder.no_id,
        "tuner_version": version,
        "contract": encoder.metadata(),
        "recipe": recipe,
        "eval": eval,
    }
    if init_adapter:
        meta["init_adapter"] = init_adapter
    atomic_write_json(Path(target) / TUNER_META, meta)
