"""Typed recipe config: YAML files plus dotted `section.key=value` overrides.

Every field is a typed dataclass field with a one-line doc (`tuner config` prints them with their defaults).
Unknown keys and values of the wrong type are errors that name the key and the recipe file, raised before
any model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from tuner.files import atomic_write, decode_utf8

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A bad recipe: unknown key, wrong type or bad value. The message names the file and the key."""


def _f(default: Any, doc: str):
    """A dataclass field with an immutable default and a one-line doc."""
    return field(default=default, metadata={"doc": doc})


@dataclass
class ModelConfig:
    name_or_path: str = _f("Qwen/Qwen3-Reranker-4B", "base model: hub id or local directory")
    tiny: bool = _f(False, "ignore name_or_path and write a random tiny Qwen3 (real tokenizer) into the run dir")
    tiny_layers: int = _f(4, "tiny model: decoder layers")
    tiny_hidden: int = _f(128, "tiny model: hidden size")
    tiny_seed: int = _f(0, "tiny model: weight init seed")
    dtype: Literal["bfloat16", "float16", "float32"] = _f("bfloat16", "weight dtype of the (unquantized) base")
    attn_implementation: str | None = _f("sdpa", "attention kernel: sdpa, eager, flash_attention_2; null = default")
    max_length: int = _f(1024, "prompt token budget (documents are cut, never the query or the suffix)")
    load_in_4bit: bool = _f(False, "QLoRA: quantize the base to 4 bit with bitsandbytes")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = _f("nf4", "QLoRA: 4-bit data type")
    bnb_4bit_use_double_quant: bool = _f(True, "QLoRA: also quantize the quantization constants")
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = _f("bfloat16", "QLoRA: matmul dtype")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (less memory, ~30% slower)")
    checkpoint_ratio: float = _f(
        1.0,
        "with gradient_checkpointing: share of decoder layers (evenly spaced) that recompute activations; "
        "1.0 = all (least memory), 0.5 = every other layer (faster, more memory)",
    )
    liger_kernel: bool = _f(
        False, "fused Triton kernels of liger-kernel for RMSNorm, SwiGLU and RoPE (CUDA; pip install liger-kernel)"
    )


@dataclass
class LoraSection:
    enabled: bool = _f(True, "train a LoRA adapter; false = full fine-tuning of every weight")
    r: int = _f(16, "LoRA rank")
    alpha: int = _f(32, "LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rslora)")
    dropout: float = _f(0.05, "dropout on the LoRA input")
    target_modules: str | list[str] = field(
        default="all-linear", metadata={"doc": "modules to adapt: 'all-linear' or a list of names"}
    )
    use_rslora: bool = _f(False, "rank-stabilised LoRA scaling alpha / sqrt(r)")
    use_dora: bool = _f(False, "weight-decomposed LoRA (DoRA)")
    init_adapter: str | None = _f(
        None,
        "start from this LoRA adapter (a run's folder or its adapter/, a checkpoint, a `tuner merge`, a peft adapter "
        "of this base) instead of new weights: a second round of training whose adapter still loads on the base "
        "alone; its r, alpha, dropout and target modules are the adapter's",
    )


@dataclass
class DataSection:
    train_file: str | list[str] | None = field(
        default=None,
        metadata={
            "doc": "training rows: grouped JSONL {query, pos, neg, instruction?, pos_scores?, neg_scores?}, labeled "
            "pairs (JSONL, or CSV/TSV with a query,document,label header), sentence-transformers triplets "
            "(query/anchor, positive, negative...) or listwise rows {query, docs, labels}, Parquet, a datasets "
            "save_to_disk folder, or a hub dataset id; a list of them trains on all their groups together (a mix of "
            "sources, each in its own format)"
        },
    )
    beir: str | None = _f(None, "BEIR folder to mine training groups from (when no train_file)")
    split: str = _f("train", "qrels split of `beir` used for training groups")
    mine_depth: int = _f(100, "mining: BM25 depth the negatives are drawn from")
    mine_range_min: int = _f(5, "mining: skip the top N BM25 candidates (likely unjudged positives)")
    num_negatives: int = _f(
        15,
        "mining: negatives kept per query, a pool each epoch samples a group's negative slots from (`tuner mine` "
        "keeps 7)",
    )
    max_groups: int | None = _f(None, "use at most this many groups (a quick look); null = all")
    group_size: int = _f(8, "documents per group in a step: positives_per_group positive(s) + the rest negatives")
    positives_per_group: int = _f(
        1,
        "positives drawn per group (up to this many distinct ones; the rest of the group is negatives). With graded "
        "positives (graded qrels, integer labels > 1, pos_grades) the listwise target (and distill's hard-label "
        "part) weighs each by its grade, the gain nDCG counts, so training learns grade 3 above grade 1; pointwise "
        "and sft treat every positive as 'yes'. 1 = one positive, drawn uniformly: grades then do not steer training",
    )
    instruction: str | None = _f(None, "instruction for rows that carry none; null = the contract's default")
    cache_dir: str | None = _f(None, "cache for BM25 indexes and mined groups; null = <output>/cache")
    drop_dev_queries: bool = _f(
        True,
        "leave out training groups whose query text is a dev (eval.beir or eval.data) query, so that dev metrics "
        "measure queries never trained on (SciFact's train and test share 2 claims); false = keep them, with a warning",
    )

    @property
    def train_files(self) -> list[str]:
        """`train_file` as a list: [] when unset, one file, or the list of files trained on together."""
        files = self.train_file
        return [] if not files else [files] if isinstance(files, str) else list(files)


@dataclass
class TrainSection:
    seed: int = _f(42, "seed of everything: init, negative sampling, data order, dropout, the eval.max_queries sample")
    lr: float = _f(1e-4, "peak learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    scheduler: str = _f("cosine", "LR schedule after warmup: linear, cosine, constant_with_warmup, ...")
    warmup: float = _f(0.05, "warmup: a fraction of all steps if < 1, else a number of steps")
    epochs: float = _f(1.0, "passes over the training groups (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "optimizer steps; -1 = use epochs")
    batch_groups: int = _f(4, "groups per device per micro-batch (rows = batch_groups * group_size)")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    max_grad_norm: float = _f(1.0, "gradient clipping norm")
    precision: Literal["bf16", "fp16", "fp32"] = _f("bf16", "mixed precision of the training step")
    logging_steps: int = _f(10, "log loss and LR every N steps")
    save_steps: int = _f(500, "write a checkpoint every N steps (0 = only at the end)")
    save_total_limit: int | None = _f(2, "keep at most N checkpoints (the best one is always kept)")
    optim: str = _f("adamw_torch", "optimizer name as transformers knows it (adamw_torch, paged_adamw_8bit, ...)")
    ddp_backend: str | None = _f(None, "torch.distributed backend under torchrun/accelerate (nccl, gloo)")
    dataloader_workers: int = _f(0, "dataloader worker processes")
    batching: Literal["sorted", "packed", "padded"] = _f(
        "sorted",
        "how a micro-batch's prompts reach the model (same scores each way): sorted = length-sorted padded chunks "
        "of at most batch_tokens (little padding, any attention kernel); packed = rows of at most batch_tokens "
        "with restarting position_ids, no padding (pays with model.attn_implementation=flex_attention, which skips "
        "the blocks between prompts; sdpa computes and masks them); padded = one right-padded batch",
    )
    batch_tokens: int = _f(
        16384, "sorted: padded tokens per chunk; packed: tokens per row (a longer prompt gets its own row)"
    )
    compile: bool = _f(
        False, "torch.compile each decoder layer in place (dynamic shapes; the first steps pay the compile time)"
    )
    load_best: bool = _f(
        False,
        "the run's adapter (and its final figures) is the checkpoint with the best primary dev metric, not the last "
        "step (needs eval.steps, and save_steps a multiple of it: equal to pick among every evaluation, a multiple "
        "among the saved ones)",
    )
    early_stopping_patience: int | None = _f(
        None,
        "stop when the primary dev metric has not improved for this many evaluations in a row; the run's adapter is "
        "then its best checkpoint (as with load_best); null = train to the end",
    )


@dataclass
class LossSection:
    kind: Literal["pointwise", "listwise", "distill", "sft"] = _f("listwise", "training loss")
    temperature: float = _f(1.0, "listwise/distill: logits are divided by this before the group softmax")
    pos_weight: float = _f(1.0, "pointwise: weight of the positive term of the BCE")
    teacher_temperature: float = _f(1.0, "distill: temperature of the teacher's group softmax")
    hard_label_weight: float = _f(0.0, "distill: mix in listwise CE on the labels with this weight (0..1)")


@dataclass
class EvalSection:
    beir: str | None = _f(None, "BEIR folder evaluated during training (never the training queries)")
    data: str | None = _f(
        None,
        "instead of beir: a labeled file in a training format (e.g. `tuner data split`'s dev part); each group's "
        "documents are reranked, next to their seeded random order",
    )
    split: str = _f("test", "qrels split of `beir` used for evaluation (or the <split> file of an eval.data folder)")
    top_k: int = _f(100, "rerank the first stage's (BM25) top-k (eval.beir; with eval.data every document is)")
    max_queries: int | None = _f(
        None,
        "evaluate at most this many queries (of beir or data, and of ood), drawn with train.seed: `tuner eval "
        "--max-queries N --seed <train.seed>` draws the same ones; null = all",
    )
    steps: int = _f(0, "evaluate every N steps (0 = only before and after training)")
    metrics: list[str] = field(
        default_factory=lambda: ["ndcg@10", "mrr@10", "recall@100"],
        metadata={"doc": "metrics reported; the first is primary (best checkpoint)"},
    )
    ood: str | None = _f(None, "optional out-of-domain BEIR folder, evaluated before and after")
    ood_split: str = _f("test", "qrels split of the out-of-domain folder")
    batch_tokens: int | None = _f(None, "padded tokens per scoring batch; null = the Reranker's default")
    before: bool = _f(True, "evaluate the base model before training (logged once)")
    base_cache_dir: str | None = _f(
        None,
        "folder shared by runs of one base (a sweep): its dev and out-of-domain figures are measured by the first "
        "run and read back by the others when the base, eval settings, sets and library versions are the same",
    )


@dataclass
class TrackingSection:
    report_to: Literal["none", "wandb", "tensorboard"] = _f("none", "experiment tracker")
    project: str | None = _f(None, "wandb project; null = $WANDB_PROJECT, else 'tuner'")
    entity: str | None = _f(None, "wandb entity (team or user); null = your default")
    run_name: str | None = _f(None, "run name in the tracker; null = the output directory name")
    tags: list[str] = field(default_factory=list, metadata={"doc": "wandb tags"})
    group: str | None = _f(
        None, "wandb run group: runs the UI shows and compares together (a sweep, seeds); null = $WANDB_RUN_GROUP"
    )
    log_model: bool = _f(
        False,
        "upload the saved adapter (a full fine-tune: the model) with its tokenizer and tuner.json, and metrics.json, "
        "as a wandb artifact of type model named after the run (report_to: wandb)",
    )


@dataclass
class OutputSection:
    dir: str | None = _f(
        None,
        "run directory; null = runs/<recipe name>; $VAR / ${VAR} come from the environment (a sweep: $WANDB_RUN_ID)",
    )
    overwrite: bool = _f(
        False, "start over (without --resume) in a directory that holds checkpoints or a finished run: they are deleted"
    )


@dataclass
class Config:
    """A whole recipe."""

    name: str = _f("run", "recipe name (recorded in tuner.json)")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    loss: LossSection = field(default_factory=LossSection)
    eval: EvalSection = field(default_factory=EvalSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    output: OutputSection = field(default_factory=OutputSection)
    # where the recipe came from (not a recipe key)
    source: str | None = field(default=None, metadata={"doc": "", "internal": True}, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (what `save` writes), without internal fields."""
        out = dataclasses.asdict(self)
        out.pop("source", None)
        return out

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML, atomically."""
        import yaml

        text = f"# resolved config (recipe: {self.source or '-'})\n" + yaml.safe_dump(self.to_dict(), sort_keys=False)
        atomic_write(path, text)


# ------------------------------------------------------------------------------------------ validation
def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats. Raise `ConfigError`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, key, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}{key}: {value!r} is not {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}{key}: expected null")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}{key}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads `1e-4` (no dot) as a string; accept numeric strings for float fields.
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config type {tp!r} for {key}")
    raise ConfigError(f"{where}{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _section_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _did_you_mean(prefix: str, key: str, known: set[str]) -> str:
    """ "did you mean 'train.max_steps'? " for a section's key given without its section ("max_steps") or under
    another section ("eval.max_steps", not eval's "steps" of another meaning), else for a mistyped key
    ("max_step"); "" when nothing is close."""
    import difflib

    root = _section_types(Config)
    sections = [n for n in sorted(root) if dataclasses.is_dataclass(root[n]) and f"{n}." != prefix]
    guesses = [
        f"{n}.{key}" for n in sections if key in {f.name for f in fields(root[n]) if not f.metadata.get("internal")}
    ]
    guesses = guesses or [prefix + k for k in difflib.get_close_matches(key, sorted(known), n=1)]
    return f"did you mean {' or '.join(repr(g) for g in guesses)}? " if guesses else ""


def _build(cls, data: Any, prefix: str, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {type(data).__name__}")
    hints = _section_types(cls)
    known = {f.name for f in fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            close = ", ".join(sorted(known))
            raise ConfigError(
                f"{where}unknown key '{prefix}{key}' ({_did_you_mean(prefix, str(key), known)}known in "
                f"this section: {close})"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{prefix}{key}.", where)
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}", where)
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """An override's value as YAML (so `1e-4`, `true`, `null`, `[a, b]` work); bare words stay strings."""
    import yaml

    if text == "None":  # how a wandb sweep agent writes a null value (Python's str(None)); YAML would keep "None"
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# the recipe's sections (`train`, `lora`, ...): a scalar given to one of them is a mistake
_SECTIONS = frozenset(f.name for f in fields(Config) if dataclasses.is_dataclass(f.default_factory))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides to a nested mapping (a copy); errors name the override."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: expected section.key=value")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        value = _parse_scalar(text)
        if len(parts) == 1 and parts[0] in _SECTIONS and not isinstance(value, dict):
            # said here, on this override: a later `train.lr=...` would otherwise be the one blamed
            raise ConfigError(f"override {item!r}: {parts[0]!r} is a section; set its fields as {parts[0]}.KEY=VALUE")
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a recipe (YAML), apply dotted overrides, validate every key and type.

    Args:
        path: recipe file; `None` for the defaults.
        overrides: `["train.lr=1e-4", "lora.r=8"]`.

    Raises:
        ConfigError: unknown key, wrong type or bad value (the message names the file and key).
        FileNotFoundError: the recipe file does not exist.
    """
    import yaml

    data: dict[str, Any] = {}
    where = ""
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise FileNotFoundError(f"recipe {str(path)!r} is a directory; pass a .yaml file in it")
        if not path.is_file():
            raise FileNotFoundError(f"recipe {str(path)!r} not found")
        where = f"{path}: "
        text = decode_utf8(path.read_bytes(), path, ConfigError)
        try:
            data = yaml.load(text, Loader=_unique_keys_loader())
        except yaml.YAMLError as err:
            raise ConfigError(_yaml_error(path, err)) from None
        if data is None:  # an empty file (a failed copy, the wrong file) more likely than "every default, please"
            raise ConfigError(f"{path}: the recipe is empty (no sections); see recipes/ for complete ones")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of sections")
        data.setdefault("name", path.stem)
    recipe_data = data
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        _upgrade(data, where)
        config = _build(Config, data, "", where)
        config.output.dir = expand_env(config.output.dir, "output.dir", where)
        config.eval.base_cache_dir = expand_env(config.eval.base_cache_dir, "eval.base_cache_dir", where)
        validate(config, where)
        files = config.data.train_file
        if isinstance(files, list) and len(files) == 1:  # the same data as the file alone: one spelling to compare
            config.data.train_file = files[0]  # (a --resume of a run written either way)
    except ConfigError as err:
        raise _blame_override(err, where, overrides or [], recipe_data) from None
    config.source = str(path) if path is not None else None
    return config


_ENV_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand_env(value: str | None, key: str, where: str = "") -> str | None:
    """`$NAME` and `${NAME}` in a path replaced by the environment's value; an unset one is an error naming it.

    What a wandb sweep needs: the agent starts each trial with its run id in `WANDB_RUN_ID`, and a command item
    `output.dir=runs/sweep/$WANDB_RUN_ID` gives every trial its own run directory (wandb's own `${envvar:...}`
    macro is filled in once, before the agent sets that variable). `os.path.expandvars` would leave an unset
    name in the path as it is, and a run would write to a folder literally named `$WANDB_RUN_ID`.
    """
    if value is None or "$" not in value:
        return value
    missing = [name for m in _ENV_VAR.finditer(value) if (name := m.group(1) or m.group(2)) not in os.environ]
    if missing:
        raise ConfigError(
            f"{where}{key}: environment variable {missing[0]} is not set (in {value!r}); set it, or write the path out"
        )
    return _ENV_VAR.sub(lambda m: os.environ[m.group(1) or m.group(2)], value)


def _yaml_error(path: Path, err: Exception) -> str:
    """One line, `file:line:column: what` (PyYAML's own text spans several lines and names "<unicode string>")."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    what = f"{problem} ({context})" if context and problem != context else problem
    if mark is None:
        return f"{path}: invalid YAML ({what})"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {what}"


def _blame_override(err: ConfigError, where: str, overrides: list[str], recipe: dict[str, Any]) -> ConfigError:
    """An error about a key that a command-line override set names the override, not the recipe file: the
    override of that key, or of a key under it (`foo.bar=1` brings in an unknown section `foo`, `train.lr.x=1`
    makes `train.lr` a mapping) unless the recipe itself has that key."""
    message = str(err)
    key = message[len(where) :].split(":", 1)[0].strip() if message.startswith(where) else ""
    unknown = re.match(r"unknown key '([^']+)'", message[len(where) :]) if message.startswith(where) else None
    if unknown:
        key = unknown.group(1)
    for item in reversed(overrides):  # the last override of a key is the one that counts
        path = item.split("=", 1)[0].strip()
        if path == key or (path.startswith(key + ".") and not _has_key(recipe, key)):
            return ConfigError(f"override {item!r}: {message[len(where) :]}")
    return err


def _has_key(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _unique_keys_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently, so a
    recipe's second `lr:` would win without a word)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (first on line {seen[key]})", key_node.start_mark
                    )
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _upgrade(data: dict[str, Any], where: str) -> None:
    """Read keys of earlier versions (run directories keep their resolved config.yaml): `train.packing`."""
    train = data.get("train")
    if isinstance(train, dict) and "packing" in train:
        packing = train.pop("packing")
        if not isinstance(packing, bool):
            raise ConfigError(f"{where}train.packing: expected bool, got {packing!r} (now train.batching)")
        if packing:
            train.setdefault("batching", "packed")
        log.warning("%strain.packing is now train.batching (packed | sorted | padded)", where)


def has_dev_set(config: Config) -> bool:
    """A dev set is evaluated during training (eval.beir or eval.data)."""
    return bool(config.eval.beir or config.eval.data)


def validate(config: Config, where: str = "") -> None:
    """Cross-field checks that types alone cannot express."""
    for section in fields(config):  # YAML's .nan and .inf are floats: they pass every range check below
        part = getattr(config, section.name)
        for f in fields(part) if dataclasses.is_dataclass(part) else ():
            value = getattr(part, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{where}{section.name}.{f.name}: must be a finite number, got {value!r}")
    if config.eval.beir and config.eval.data:
        raise ConfigError(f"{where}eval.data: the dev set is eval.beir or eval.data, not both; set one to null")
    if config.eval.ood and not (config.eval.beir or config.eval.data):
        raise ConfigError(
            f"{where}eval.ood: the out-of-domain check runs beside the dev set; set eval.beir (or eval.data) too, "
            "or eval.ood=null"
        )
    if config.data.group_size < 2:
        # every loss needs a negative beside the positive: pointwise or sft on positives alone learns "yes" for
        # everything (loss 9.2 -> 0.6 in 8 steps, and no ranking figure to show the collapse)
        raise ConfigError(
            f"{where}data.group_size: must be >= 2 (a positive and at least one negative per group), got "
            f"{config.data.group_size}"
        )
    if not 1 <= config.data.positives_per_group < config.data.group_size:
        raise ConfigError(
            f"{where}data.positives_per_group: must be >= 1 and below data.group_size ({config.data.group_size}, so "
            f"that a group keeps a negative), got {config.data.positives_per_group}"
        )
    if not 0.0 <= config.loss.hard_label_weight <= 1.0:
        raise ConfigError(f"{where}loss.hard_label_weight: must be in [0, 1]")
    for key in ("temperature", "teacher_temperature"):
        if getattr(config.loss, key) <= 0:
            raise ConfigError(f"{where}loss.{key}: must be > 0, got {getattr(config.loss, key)!r}")
    if config.tracking.log_model and config.tracking.report_to != "wandb":
        raise ConfigError(
            f"{where}tracking.log_model: uploads the trained weights as a wandb artifact; set tracking.report_to: "
            f"wandb (got {config.tracking.report_to!r})"
        )
    if config.lora.init_adapter is not None and not config.lora.enabled:
        raise ConfigError(f"{where}lora.init_adapter: an adapter to start from needs lora.enabled=true")
    if config.model.load_in_4bit and not config.lora.enabled:
        raise ConfigError(f"{where}model.load_in_4bit: a 4-bit base cannot be fully fine-tuned (set lora.enabled)")
    evaluated_and_saved = has_dev_set(config) and config.eval.steps > 0 and config.train.save_steps > 0
    if evaluated_and_saved and config.train.save_steps % config.eval.steps:
        # the best checkpoint (by the primary metric) must be a step that was both evaluated and saved
        raise ConfigError(
            f"{where}train.save_steps ({config.train.save_steps}) must be a multiple of eval.steps "
            f"({config.eval.steps})"
        )
    best_of = "train.early_stopping_patience" if config.train.early_stopping_patience is not None else "train.load_best"
    if config.train.load_best or config.train.early_stopping_patience is not None:
        if not has_dev_set(config) or config.eval.steps <= 0:
            raise ConfigError(
                f"{where}{best_of}: picks among the evaluations made during training; set a dev set (eval.beir or "
                f"eval.data) and eval.steps > 0"
            )
        if config.train.save_steps != config.eval.steps:
            # transformers records the best metric at every evaluation but the best checkpoint only at a save: with
            # evaluations between saves, the best value and the checkpoint loaded as the best are different steps
            raise ConfigError(
                f"{where}{best_of}: needs a checkpoint at each evaluation to go back to; set train.save_steps to "
                f"eval.steps ({config.eval.steps}), got {config.train.save_steps}"
            )
    if not 0.0 < config.model.checkpoint_ratio <= 1.0:
        raise ConfigError(f"{where}model.checkpoint_ratio: must be in (0, 1]")
    for key in ("batch_groups", "grad_accum", "logging_steps", "batch_tokens"):
        if getattr(config.train, key) < 1:
            raise ConfigError(f"{where}train.{key}: must be >= 1")
    _check_ranges(config, where)


# attention kernels transformers knows by name (a hub kernel, "org/name", is passed through)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")

# (section.key, lowest allowed value, inclusive?, None allowed?, what the error says)
_RANGES = [
    ("model.max_length", 1, True, False, ">= 1"),
    ("model.tiny_layers", 1, True, False, ">= 1"),
    ("model.tiny_hidden", 1, True, False, ">= 1"),
    ("lora.r", 1, True, False, ">= 1"),
    ("lora.alpha", 0, False, False, "> 0"),
    ("data.mine_depth", 1, True, False, ">= 1"),
    ("data.mine_range_min", 0, True, False, ">= 0"),
    ("data.num_negatives", 1, True, False, ">= 1"),
    ("data.max_groups", 1, True, True, ">= 1 (or null for all)"),
    ("loss.pos_weight", 0, False, False, "> 0"),
    ("train.lr", 0, False, False, "> 0"),
    ("train.weight_decay", 0, True, False, ">= 0"),
    ("train.warmup", 0, True, False, ">= 0 (a fraction of the steps if < 1, else steps)"),
    ("train.epochs", 0, False, False, "> 0"),
    ("train.max_grad_norm", 0, True, False, ">= 0"),
    ("train.save_steps", 0, True, False, ">= 0 (0 = only at the end)"),
    ("train.save_total_limit", 1, True, True, ">= 1 (or null for all)"),
    ("train.early_stopping_patience", 1, True, True, ">= 1 (or null to train to the end)"),
    ("train.dataloader_workers", 0, True, False, ">= 0"),
    ("eval.top_k", 1, True, False, ">= 1"),
    ("eval.max_queries", 1, True, True, ">= 1 (or null for all)"),
    ("eval.steps", 0, True, False, ">= 0 (0 = only before and after training)"),
    ("eval.batch_tokens", 1, True, True, ">= 1 (or null for the default)"),
]


def _check_ranges(config: Config, where: str) -> None:
    """Numbers outside what they can mean, named by key before anything runs (not by the library, much later)."""
    from tuner.metrics import check_metrics

    for key, low, inclusive, nullable, want in _RANGES:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is None and nullable:
            continue
        if value is None or (value < low if inclusive else value <= low):
            raise ConfigError(f"{where}{key}: must be {want}, got {value!r}")
    attn = config.model.attn_implementation
    if attn is not None and attn not in ATTN_IMPLEMENTATIONS and "/" not in attn:
        raise ConfigError(f"{where}model.attn_implementation: {attn!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if not 0.0 <= config.lora.dropout < 1.0:
        raise ConfigError(f"{where}lora.dropout: must be in [0, 1), got {config.lora.dropout!r}")
    if config.train.max_steps == 0 or config.train.max_steps < -1:
        raise ConfigError(f"{where}train.max_steps: must be >= 1, or -1 to train for train.epochs")
    files = config.data.train_file
    if isinstance(files, list) and (not files or not all(isinstance(f, str) and f.strip() for f in files)):
        raise ConfigError(f"{where}data.train_file: must be a file (or hub id) or a non-empty list of them")
    targets = config.lora.target_modules
    if isinstance(targets, list) and (not targets or not all(isinstance(t, str) and t for t in targets)):
        raise ConfigError(f"{where}lora.target_modules: must be 'all-linear' or a non-empty list of module names")
    try:
        check_metrics(config.eval.metrics)
    except ValueError as err:
        raise ConfigError(f"{where}eval.metrics: {err}") from None


def describe_fields(config: Config | None = None) -> list[tuple[str, str, str, str]]:
    """(dotted key, type, value, doc) for every field, values from `config` (defaults if None)."""
    config = config or Config()
    rows = []

    def walk(obj, prefix: str):
        hints = _section_types(type(obj))
        for f in fields(obj):
            if f.metadata.get("internal"):
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                rows.append((prefix + f.name, _type_name(hints[f.name]), json.dumps(value), f.metadata.get("doc", "")))

    walk(config, "")
    return rows


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Indented JSON, written atomically (`tuner.files.atomic_write`)."""
    atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
