"""The exact `vllm serve` command for a tuner export (vLLM is not a dependency: we print or exec its CLI)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

from tuner.contract import past_positions
from tuner.export_card import vllm_args
from tuner.loading import DTYPE_NAMES, full_fine_tune_dir
from tuner.scoring import read_meta


def default_served_name(model: str | Path) -> str:
    """The model name `tuner serve` and the `vllm serve` line answer to when none is given (`--model-name`).

    A hub id is named in full, as vLLM names it (a client written for `vllm serve Qwen/Qwen3-Reranker-4B` sends
    that); a local directory by its name, except a format folder of a multi-format export (`EXPORT/merged`,
    `EXPORT/seq-cls`), named by the export: every one of its formats answers to the same name, so a client's
    `model` holds whichever engine serves which format (both were "merged" or "seq-cls" before). A run's weights
    (`RUN/adapter`, `RUN/model`) answer to the run's name and a checkpoint to `RUN/checkpoint-N` (all were
    "adapter" or "model" before).
    """
    path = Path(str(model)).expanduser()
    if not path.exists():
        return str(model)
    path = Path(os.path.abspath(path))  # `tuner serve .` names the folder; a symlink (runs/best) keeps its name
    fmt = read_meta(path).get("format")
    if fmt is not None and path.name == fmt and path.parent.name and (path.parent / "parity.json").is_file():
        return path.parent.name
    if path.name in ("adapter", "model") and (path.parent / "config.yaml").is_file():  # what tuner train writes
        return path.parent.name
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def vllm_argv(
    export_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_name: str | None = None,
    api_key_env: str | None = None,
    max_length: int | None = None,
    dtype: str | None = None,
) -> list[str]:
    """`vllm serve` argv for a merged (with hf-overrides) or seq-cls (none) export, with its chat template.

    Raises:
        ValueError: the directory is not a merged or seq-cls tuner export.
    """
    path = Path(export_dir).expanduser().resolve()
    meta = read_meta(path)
    fmt = meta.get("format")
    if fmt not in ("merged", "seq-cls"):
        hint = "an adapter export" if fmt == "adapter" else "not a tuner export (no tuner.json with a format)"
        inside = [f for f in ("merged", "seq-cls") if read_meta(path / f).get("format") == f] if path.is_dir() else []
        if inside:  # the root of a multi-format export
            raise ValueError(f"{path}: a multi-format export; pass one of its formats, e.g. {path / inside[0]}")
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such export directory")
        if full_fine_tune_dir(path) is not None:  # a full fine-tuning run (RUN or RUN/model)
            raise ValueError(
                f"{path}: vLLM serves merged or seq-cls exports, and this is a model a tuner run wrote (tuner.json "
                f"without a format: a full fine-tune); run `tuner export {path} --format seq-cls` (or merged) first"
            )
        raise ValueError(
            f"{path}: vLLM serves merged or seq-cls exports, and this is {hint}; run "
            "`tuner export RUN --format merged` (or seq-cls) first"
        )
    if not (path / "chat_template.jinja").is_file():
        raise ValueError(f"{path}: chat_template.jinja is missing; re-export it")
    if max_length is not None:
        # as tuner's own engine refuses it (vLLM would refuse it only when the server starts, minutes later on a GPU)
        why = past_positions(max_length, SimpleNamespace(**_config(path)))
        if why:
            raise ValueError(f"--max-length: {why}")
        meta = {**meta, "max_length": max_length}
    argv = vllm_args(str(path), meta)
    argv += ["--served-model-name", served_name or default_served_name(path), "--host", host, "--port", str(port)]
    if dtype:
        # tuner's short names (bf16, fp16, fp32) are not among the names vLLM's --dtype takes: written as torch's
        if dtype != "auto" and dtype not in DTYPE_NAMES:
            raise ValueError(f"--dtype {dtype!r}: use one of {sorted(DTYPE_NAMES)} or 'auto'")
        argv += ["--dtype", DTYPE_NAMES.get(dtype, dtype)]
    if api_key_env:
        # vLLM reads VLLM_API_KEY itself; the key never appears on the command line.
        argv = ["env", f"VLLM_API_KEY=${{{api_key_env}}}", *argv] if api_key_env != "VLLM_API_KEY" else argv
    return argv


def _config(path: Path) -> dict:
    """The export's config.json ({} when there is none or it does not parse: loading it names that)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def vllm_command(export_dir: str | Path, **kwargs) -> str:
    """`vllm_argv` as one shell-quoted line (the `${VAR}` of an API key stays expandable)."""
    argv = vllm_argv(export_dir, **kwargs)
    return " ".join(a if a.startswith("VLLM_API_KEY=${") else shlex.quote(a) for a in argv)


def run_vllm(command: str) -> int:
    """Replace this process with the vLLM server (`--exec`)."""
    if shutil.which("vllm") is None:
        raise FileNotFoundError(f"vllm is not installed here (pip install vllm); the command is:\n{command}")
    os.execvp("bash", ["bash", "-c", "exec " + command])
    return 0  # not reached
