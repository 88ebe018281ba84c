"""Loading a reranker checkpoint in any of tuner's formats: base, PEFT adapter, merged, 1-label seq-cls.

Imports torch, transformers and peft only.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tuner.contract import BODY_TEMPLATE, CONTRACT_VERSION, PREFIX, SUFFIX, load_tokenizer, prepare_tokenizer
from tuner.files import json_error_place, json_error_reason

log = logging.getLogger(__name__)

TUNER_META = "tuner.json"


class ModelNotFoundError(OSError):
    """A model or adapter path that is neither a local directory nor fetchable from the hub."""


@contextmanager
def peft_quietly():
    """Around peft calls: peft reads `model.is_gradient_checkpointing`, which transformers 5.2x deprecates in favour
    of `is_activation_checkpointing`. That FutureWarning is about the two libraries, not about the user's run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


# What transformers / peft look for in a local folder; checked up front so that a missing file is named here
# instead of surfacing as a hub "outgoing traffic has been disabled" error or a loader traceback.
MODEL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _read_json(file: Path) -> dict[str, Any]:
    """A local JSON config as a dict; `ValueError` naming the file, line and column if it is not one."""
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text)
    except json.JSONDecodeError as err:
        line, column = json_error_place(text, err)
        raise ValueError(f"{file}: invalid JSON (line {line} column {column}: {json_error_reason(err)})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_shards(folder: Path, index: Path) -> None:
    """Every shard a `*.index.json` names must be in the folder."""
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: no 'weight_map' object")
    shards = sorted({str(f) for f in weight_map.values()})
    missing = [f for f in shards if not (folder / f).is_file()]
    if missing:
        raise ModelNotFoundError(f"{folder}: {index.name} names {len(missing)} missing shard(s), e.g. {missing[0]!r}")
    for shard in shards:
        _check_safetensors(folder / shard)


def _check_safetensors(file: Path) -> None:
    """A truncated or corrupt `.safetensors` file is named here (its header is read; the tensors are not)."""
    if file.suffix != ".safetensors" or not file.is_file():  # e.g. an adapter saved as adapter_model.bin
        return
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt"):
            pass
    except SafetensorError as err:
        raise ModelNotFoundError(f"{file}: not a readable safetensors file ({err}); is it truncated?") from None


def saved_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The `checkpoint-<step>` folders of a run, oldest step first (none if the folder is not there)."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.name.startswith("checkpoint-") and p.name[11:].isdigit()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(checkpoint: Path) -> int:
    """The step in a `checkpoint-<step>` folder's name."""
    return int(checkpoint.name[11:])


def trainer_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json ({} when unreadable)."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def is_complete(checkpoint: Path) -> bool:
    """A save that finished: transformers writes trainer_state.json last, so a save cut off before it lacks the
    file, and one cut off while writing it (or a full disk) leaves the start of it, which does not parse."""
    return bool(trainer_state(checkpoint))


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The run's checkpoints whose save finished (`is_complete`), oldest step first."""
    return [p for p in saved_checkpoints(ckpt_dir) if is_complete(p)]


def unfinished_run_hint(path: Path) -> str:
    """ "; it is a training run that has not finished ..." for a run folder (config.yaml, checkpoints/) that holds
    no adapter/ or model/ yet: an interrupted or still running `tuner train`, whose newest complete checkpoint is
    the weights there are. "" for anything else."""
    checkpoints = path / "checkpoints"
    if not (path / "config.yaml").is_file() or not checkpoints.is_dir():
        return ""
    saved = complete_checkpoints(checkpoints)
    if not saved:
        return "; it is a training run that has not finished and saved no checkpoint yet (`tuner train ... --resume`)"
    return (
        "; it is a training run that has not finished (no adapter/ yet): `tuner train RECIPE ... --resume` finishes "
        f"it, or pass a checkpoint, e.g. {str(saved[-1])!r}"
    )


def _folders_inside(path: Path, markers: tuple[str, ...]) -> str:
    """ "; it holds A, B: pass one of them, e.g. 'PATH/A'" for the subfolders of `path` holding one of `markers`
    (a run or an export root given for the model inside it), "" without any. The example is an export's merged
    format where there is one (one forward pass, no PEFT wrapper: what the README serves), not its adapter. A run
    that has not finished gets `unfinished_run_hint`."""
    inside = sorted(d.name for d in path.iterdir() if any((d / m).is_file() for m in markers))
    if not inside:
        return unfinished_run_hint(path)
    example = min(inside, key=lambda name: (name != "merged", name != "seq-cls", name))
    return f"; it holds {', '.join(inside)}: pass one of them, e.g. {str(path / example)!r}"


def _check_local(path: Path, what: str) -> None:
    """A local model or adapter folder has a readable config and its weight files (one clear error if not).

    `what="model"` also accepts an adapter folder (`load_model` resolves its base); `what="adapter"` needs one.
    """
    if not path.is_dir():
        raise ModelNotFoundError(f"{what} {str(path)!r} is a file, not a model directory")
    config, adapter_config = path / "config.json", path / "adapter_config.json"
    has_config, has_adapter = config.is_file(), adapter_config.is_file()
    if what == "adapter" and not has_adapter:
        # a training run or an export root given as the adapter: the adapter folder inside is what was meant
        hint = _folders_inside(path, ("adapter_config.json",))
        raise ModelNotFoundError(f"adapter directory {str(path)!r} has no adapter_config.json{hint}")
    if not has_config and not has_adapter:
        hint = _folders_inside(path, ("config.json", "adapter_config.json"))
        raise ModelNotFoundError(
            f"{what} directory {str(path)!r} has neither config.json nor adapter_config.json{hint}"
        )
    if has_adapter:
        _read_json(adapter_config)
    if has_config and what != "adapter":
        _read_json(config)
    adapter_weights = any((path / f).is_file() for f in ADAPTER_WEIGHTS)
    model_weights = [path / f for f in MODEL_WEIGHTS if (path / f).is_file()]
    if what == "adapter" or not has_config:
        if not adapter_weights:
            raise ModelNotFoundError(f"{path}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
        _check_safetensors(path / ADAPTER_WEIGHTS[0])
        return
    if not model_weights and not (has_adapter and adapter_weights):
        raise ModelNotFoundError(f"{path}: no model weights ({', '.join(MODEL_WEIGHTS)})")
    for weights in model_weights:
        if weights.name.endswith(".index.json"):
            _check_shards(path, weights)
        else:
            _check_safetensors(weights)


def _check_reachable(name: str, what: str = "model") -> None:
    """Raise one clear error for a path that does not exist locally and that the hub cannot provide.

    A local folder is checked for its config (valid JSON) and weight files; hub ids only for reachability.
    """
    path = Path(name).expanduser()
    if path.exists():
        _check_local(path, what)
        return
    if _looks_local(name):
        raise ModelNotFoundError(f"{what} {name!r} not found: no such directory{_near_miss(path)}")
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    file = "config.json" if what == "model" else "adapter_config.json"
    try:
        if isinstance(try_to_load_from_cache(name, file), str):
            return  # in the local hub cache: loads without the network
        # One request and no retries: hf_hub_download retries a network error five times with backoff (about 25 s
        # before the same error); a mistyped path or an offline machine gets its answer at once. transformers
        # downloads the files afterwards, with its own retries.
        get_hf_file_metadata(hf_hub_url(name, file), retry_on_errors=False)
    except Exception as err:  # every hub failure becomes one user-facing error
        reason = " ".join(str(err).split()) or type(err).__name__
        if len(reason) > 300:
            reason = reason[:300].rsplit(" ", 1)[0] + " ..."
        if _hub_unreachable(err):  # the name may be right: say that the hub could not be asked, not "not found"
            raise ModelNotFoundError(
                f"{what} {name!r} not found: it is not a local directory, and the Hugging Face Hub could not be "
                f"reached to look it up ({type(err).__name__}: {reason}); check the network (or HF_ENDPOINT), or "
                f"give a local directory{_near_miss(path)}"
            ) from None
        raise ModelNotFoundError(
            f"{what} {name!r} not found: it is not a local directory and the Hugging Face Hub could not provide it "
            f"({type(err).__name__}: {reason}){_near_miss(path)}"
        ) from None


def _hub_unreachable(err: Exception) -> bool:
    """A network failure, offline mode, a timeout, rate limiting or a server error: not an answer about the name."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    # by class name: huggingface_hub has used requests, httpx and its httpx2 fork, each with its own classes
    network = {"TransportError", "TimeoutException", "ConnectionError", "Timeout"}
    if isinstance(err, (OfflineModeIsEnabled, ConnectionError, TimeoutError)) or network & {
        c.__name__ for c in type(err).__mro__
    }:
        return True
    status = getattr(getattr(err, "response", None), "status_code", None)
    return isinstance(err, HfHubHTTPError) and status is not None and (status == 429 or status >= 500)


def check_recorded_base(base: str, adapter_dir: Path, recorded_in: str) -> str:
    """The base model an adapter folder names (in `recorded_in`), checked: a relative path that is not there
    from here is tried relative to the adapter; a missing one says where the name came from and how to override.
    """
    local = Path(base).expanduser()
    if not local.is_absolute() and not local.exists() and (adapter_dir / local).exists():
        base = str((adapter_dir / local).resolve())
    try:
        _check_reachable(base)
    except ModelNotFoundError as err:
        raise ModelNotFoundError(
            f"{err} (the base model named in {adapter_dir / recorded_in}; pass the base model as --model and "
            f"{adapter_dir} as --adapter, or --base for tuner export)"
        ) from None
    return base


def _near_miss(path: Path) -> str:
    """`. Did you mean 'models/tiny-reranker'?` when a folder next to the missing one has a close name."""
    from tuner.files import similar_names

    close = similar_names(path, n=1, folders_only=True)
    return f". Did you mean {str(close[0])!r}?" if close else ""


def _check_contract(recorded: Any, file: Path) -> None:
    """The prompt contract an export or run recorded must be the one this tuner scores with: a model trained on
    another prompt would get prompts it never saw, and its scores would drift with no error at all."""
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise ValueError(f"{file}: field 'contract' must be an object, got {recorded!r:.60}")
    version = recorded.get("contract_version", CONTRACT_VERSION)
    if version != CONTRACT_VERSION:
        raise ValueError(
            f"{file}: written under prompt contract version {version!r}; this tuner implements version "
            f"{CONTRACT_VERSION} (score it with the tuner version that wrote it: {file.parent})"
        )
    for key, ours in (("prefix", PREFIX), ("body_template", BODY_TEMPLATE), ("suffix", SUFFIX)):
        if key in recorded and recorded[key] != ours:
            raise ValueError(
                f"{file}: field 'contract.{key}' is {recorded[key]!r:.80}, not the contract's {ours!r:.80}: this "
                "model was trained or exported with another prompt, which tuner does not score"
            )


def read_meta(path: str | Path | None) -> dict[str, Any]:
    """The `tuner.json` of an export or run directory, or `{}`."""
    if path is None:
        return {}
    file = Path(path) / TUNER_META
    if not file.is_file():
        return {}
    meta = _read_json(file)
    _check_contract(meta.get("contract"), file)
    # the fields scoring reads, checked here so that a hand-edited file fails naming the field, not deep inside
    max_length = meta.get("max_length")
    if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1):
        raise ValueError(f"{file}: field 'max_length' must be a positive integer, got {max_length!r}")
    instruction = meta.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise ValueError(f"{file}: field 'instruction' must be a string, got {instruction!r}")
    calibration = meta.get("calibration")
    if calibration is not None:
        if not isinstance(calibration, dict):
            got = repr(calibration)
            raise ValueError(f"{file}: field 'calibration' must be an object {{temperature, bias}}, got {got}")
        for key, default in (("temperature", 1.0), ("bias", 0.0)):
            value = calibration.get(key, default)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or (key == "temperature" and value <= 0):
                want = "a positive number" if key == "temperature" else "a finite number"
                raise ValueError(f"{file}: field 'calibration.{key}' must be {want}, got {value!r}")
        # what the fit was made with (`tuner calibrate` records it; older files have neither key)
        fitted = calibration.get("instruction")
        if fitted is not None and not isinstance(fitted, str):
            raise ValueError(f"{file}: field 'calibration.instruction' must be a string, got {fitted!r}")
        budget = calibration.get("max_length")
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
            raise ValueError(f"{file}: field 'calibration.max_length' must be a positive integer, got {budget!r}")
    return meta


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a `torch.device` (None: cuda when available, else cpu); `ValueError` for a name torch does not
    know or a device this machine does not have (checked before a model loads, not when it is moved)."""
    if device is None:
        return _default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r}: not a device name (cpu, cuda, cuda:1, mps ...): {err}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: no CUDA GPU here (torch {torch.__version__}); use device 'cpu'")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available here; use device 'cpu'")
    return dev


# the dtype names tuner takes (`--dtype`, `dtype=`), each with torch's (and vLLM's `--dtype`) name for it
DTYPE_NAMES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "float32": "float32",
    "fp32": "float32",
}


def full_fine_tune_dir(path: str | Path) -> Path | None:
    """The whole model of a full fine-tuning run (`lora.enabled=false`: `RUN/model`, given as RUN or RUN/model),
    or None for anything else."""
    path = Path(path).expanduser()
    for candidate in (path / "model", path):  # tuner.train.MODEL_DIR
        if (candidate / "config.json").is_file() and not (candidate / "adapter_config.json").is_file():
            meta = read_meta(candidate) if (candidate / TUNER_META).is_file() else {}
            if meta.get("base_model") and not meta.get("format"):  # written by a run, not by an export
                return candidate
    return None


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | str:
    """None: bf16 on CUDA, else fp32; "auto" (as in transformers): the checkpoint's own dtype."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"  # transformers' from_pretrained reads it from the config
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPE_NAMES)} or 'auto' (the checkpoint's)")
    return getattr(torch, DTYPE_NAMES[dtype])


def load_model(
    model: str | Path,
    adapter: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
):
    """Load a causal-LM or 1-label seq-cls Qwen3 reranker, with an optional PEFT adapter, for inference.

    `model` may also be an adapter directory; its base comes from `tuner.json` or `adapter_config.json`.

    Returns:
        (model, tokenizer, meta): the eval-mode model on `device`, a prepared tokenizer, the merged
        `tuner.json` metadata of the model and adapter directories.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    model, adapter = split_adapter(model, adapter)
    if adapter is not None:
        _check_reachable(adapter, "adapter")

    dev = resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, dev)
    config = AutoConfig.from_pretrained(model)
    archs = getattr(config, "architectures", None) or []
    if adapter is not None:
        _check_adapter_target(model, adapter, archs)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if any(a.endswith("ForSequenceClassification") for a in archs):
        if getattr(config, "num_labels", 1) != 1:
            raise ValueError(
                f"{model}: sequence-classification model has num_labels={config.num_labels}; tuner needs 1 "
                "(score.weight = w_yes − w_no)"
            )
        net = AutoModelForSequenceClassification.from_pretrained(model, **kwargs)
    else:
        net = AutoModelForCausalLM.from_pretrained(model, **kwargs)
    if adapter is not None:
        net = load_adapter(net, adapter, model)
    net.to(dev).eval()

    tokenizer = _load_tokenizer_for(model, adapter)
    meta = read_meta(model)
    if adapter is not None:
        # a calibration of the base (a calibrated merged export tuned again) was fitted on the base's logits, not
        # on the adapter's: the adapter's own tuner.json says whether it has one
        meta.pop("calibration", None)
    meta = {**meta, **read_meta(adapter)}
    return net, tokenizer, meta


def run_weights(path: str | Path) -> str:
    """A finished tuner run folder (its config.yaml beside adapter/ or, for full fine-tuning, model/) stands for the
    weights it wrote, as `tuner export RUN` reads it; anything else is returned as given."""
    folder = Path(str(path)).expanduser()
    if (folder / "config.yaml").is_file() and not (folder / "config.json").is_file():
        for name, marker in (("adapter", "adapter_config.json"), ("model", "config.json")):
            if (folder / name / marker).is_file():
                return str(folder / name)
    return str(path)


def split_adapter(model: str | Path, adapter: str | Path | None = None) -> tuple[str, str | None]:
    """(base, adapter) of a model argument: a run folder stands for its weights (`run_weights`); an adapter folder
    given alone as `model` stands for its base (from its `tuner.json`, else `adapter_config.json`, checked reachable)
    with that adapter on it; anything else is returned as is. Raises `ModelNotFoundError` when `model` cannot be
    reached or the adapter names no base."""
    model, adapter = run_weights(model), (run_weights(adapter) if adapter is not None else None)
    _check_reachable(model)
    is_adapter = (Path(model) / "adapter_config.json").is_file() and not (Path(model) / "config.json").is_file()
    if adapter is not None and is_adapter:
        # transformers' "Unrecognized model in ... Should have a `model_type` key in its config.json" named neither
        raise ValueError(
            f"model {model!r} is an adapter (adapter_config.json, no config.json), given with adapter {adapter!r}: "
            "pass an adapter alone as the model (its base comes from its tuner.json), or the base as the model and "
            "the adapter as the adapter (--model BASE --adapter ADAPTER)"
        )
    if adapter is None and (Path(model) / "adapter_config.json").is_file():
        adapter = model
        model, recorded_in = _adapter_base(Path(adapter))
        if not model:
            raise ModelNotFoundError(f"adapter {adapter!r} names no base model; pass the base explicitly")
        model = check_recorded_base(model, Path(adapter), recorded_in)
    return model, adapter


def _adapter_base(adapter: Path) -> tuple[str | None, str]:
    """The base model an adapter folder names, and the file that names it: its `tuner.json`'s `base_model`, else
    `adapter_config.json`'s `base_model_name_or_path` (None when neither does)."""
    meta = read_meta(adapter)
    if meta.get("base_model"):
        return meta["base_model"], TUNER_META
    config_file = adapter / "adapter_config.json"
    named = _read_json(config_file).get("base_model_name_or_path") if config_file.is_file() else None
    return named, "adapter_config.json"


def _same_model(a: str, b: str) -> bool:
    """Whether two model names (hub ids or local paths) name the same model."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _check_adapter_target(model: str, adapter: str, archs: list[str]) -> None:
    """An adapter goes on the causal-LM base it was trained on; on a seq-cls export peft fails deep inside
    (`no attribute 'prepare_inputs_for_generation'`), and on a merged export that already holds it, LoRA would be
    applied twice with no error at all (logits off by ~2 on the tiny model)."""
    meta = read_meta(model)
    if meta.get("format") == "seq-cls" or any(a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(
            f"{model} is a sequence-classification model: a PEFT adapter ({adapter}) goes on the causal-LM base it "
            "was trained on (--model <base> --adapter ...); a seq-cls export already holds its adapter, so load it "
            "without --adapter"
        )
    if meta.get("format") != "merged":
        return
    trained_on = _adapter_base(Path(adapter))[0] if Path(adapter).is_dir() else None
    if trained_on and _same_model(str(trained_on), model):
        return  # an adapter trained on this merged model (a second round of tuning): that is its base
    raise ValueError(
        f"{model} is a merged export (its {TUNER_META} says so): an adapter is already merged into its weights "
        f"(base {meta.get('base_model')!r}), and adding {adapter} would apply LoRA twice; load {model} without "
        f"--adapter, or --model <the base {adapter} was trained on: {trained_on!r}> --adapter {adapter}"
    )


def _stored_adapter_shapes(adapter: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape in a local `adapter_model.safetensors`, from its header alone (None: no such file)."""
    file = adapter / ADAPTER_WEIGHTS[0]
    if not file.is_file():
        return None
    from safetensors import safe_open

    _check_safetensors(file)
    with safe_open(str(file), "pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (not a dict)


def load_adapter(
    net, adapter: str | Path, base: str | Path = "the base", adapter_name: str = "default", trainable: bool = False
):
    """`peft.PeftModel.from_pretrained(net, adapter)`, with the checks peft leaves out (`trainable`: its weights
    train, as `tuner train`'s lora.init_adapter needs).

    On a `PeftModel` already (several adapters on one base, as `tuner merge` loads them), the adapter is added
    under `adapter_name` (`PeftModel.load_adapter`), with the same checks.

    peft loads a state dict non-strictly: an adapter_config.json that lost its `target_modules` puts LoRA on
    peft's default modules and drops every other stored tensor without a word; one that lost its `r` (peft's
    default 8) fails as a size mismatch that reads like another base. Both are named here, as is every stored
    tensor that did not load.
    """
    from peft import LoraConfig, PeftModel, get_peft_model_state_dict

    folder = Path(adapter)
    config_file = folder / "adapter_config.json"
    shapes = _stored_adapter_shapes(folder) if folder.is_dir() else None
    if config_file.is_file():
        config = _read_json(config_file)
        if "peft_type" not in config:
            raise ValueError(f"{config_file}: no 'peft_type' field; not a peft adapter config (or a damaged one)")
        ranks = {shape[0] for key, shape in (shapes or {}).items() if ".lora_A." in key and len(shape) == 2}
        declared = config.get("r", LoraConfig.r)  # a config without r gets LoraConfig's default
        if len(ranks) == 1 and not config.get("rank_pattern") and declared not in ranks:
            said = f"says r={declared}" if "r" in config else f"has no 'r' (peft's default is {declared})"
            raise ValueError(
                f"{config_file} {said} but the weights in {ADAPTER_WEIGHTS[0]} have rank {ranks.pop()}: "
                "the config does not belong to these weights"
            )
    try:
        with peft_quietly(), warnings.catch_warnings():
            if shapes is not None:  # checked below, and named in one error instead of a list of every key
                warnings.filterwarnings("ignore", message="Found missing adapter keys", category=UserWarning)
            if isinstance(net, PeftModel):
                net.load_adapter(str(adapter), adapter_name=adapter_name)
            else:
                net = PeftModel.from_pretrained(net, str(adapter), adapter_name=adapter_name, is_trainable=trainable)
    except RuntimeError as err:
        # An adapter trained on another base: torch lists every mismatched tensor; the first says enough.
        if "size mismatch" not in str(err):
            raise
        first = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), "")
        raise ValueError(f"adapter {str(adapter)!r} does not fit base {str(base)!r}: {first}") from None
    if shapes is not None:
        loaded = set(get_peft_model_state_dict(net, adapter_name=adapter_name))
        unused, missing = sorted(set(shapes) - loaded), sorted(loaded - set(shapes))
        if unused or missing:
            what = f"{len(unused)} stored tensors did not load (e.g. {unused[0]})" if unused else ""
            if missing:
                what += ("; " if what else "") + f"{len(missing)} adapter tensors are not stored (e.g. {missing[0]})"
            raise ValueError(
                f"adapter {str(adapter)!r}: {what}; its adapter_config.json (target_modules "
                f"{net.peft_config[adapter_name].target_modules}) does not describe {ADAPTER_WEIGHTS[0]}"
            )
    return net


def _load_tokenizer_for(model: str, adapter: str | None):
    from transformers import AutoTokenizer

    for source in (adapter, model):
        if source is None:
            continue
        local = Path(source)
        if local.is_dir() and not any((local / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            continue
        try:
            return prepare_tokenizer(AutoTokenizer.from_pretrained(source))
        except (OSError, ValueError):
            continue
    # Qwen3 checkpoints share one tokenizer; tuner ships it, so a weights-only folder still loads.
    log.info("no tokenizer next to %s; using the Qwen3 tokenizer shipped with tuner", model)
    return load_tokenizer()
