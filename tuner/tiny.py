"""Random-weight Qwen3 models with the real vocabulary: tiny ones for tests and demos, 4B-shaped ones for
GPU benchmarks (built directly on the device; `write_random_model` saves one where a benchmark needs a directory)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from tuner.contract import config_dir, load_tokenizer
from tuner.files import usual_modes

QWEN3_VOCAB_SIZE = 151669


def tiny_config(layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2):
    """A small `Qwen3Config` with the real 151,669-token vocabulary and tied embeddings (like the 4B)."""
    from transformers import Qwen3Config

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be divisible by kv_heads ({kv_heads})")
    return Qwen3Config(
        vocab_size=QWEN3_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        architectures=["Qwen3ForCausalLM"],
    )


def write_tiny_model(
    out_dir: str | Path,
    layers: int = 2,
    hidden: int = 64,
    seed: int = 0,
    heads: int = 4,
    kv_heads: int = 2,
    chat_template: bool = False,
) -> Path:
    """Write a random-weight Qwen3ForCausalLM + the real tokenizer as an ordinary Hugging Face directory.

    `chat_template`: also give the tokenizer the contract's chat template, as a merged export has it (so
    sentence-transformers' CrossEncoder scores it like the exports). Returns the directory, loadable with
    `AutoModelForCausalLM` / `AutoTokenizer` / `Reranker`.
    """
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_config(layers, hidden, heads, kv_heads)).eval()
    return _save(model, out_dir, chat_template)


def write_random_model(
    out_dir: str | Path,
    config: str = "Qwen3-Reranker-4B",
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    chat_template: bool = False,
) -> Path:
    """`random_model` written as a directory (the benchmarks' paths that load through `from_pretrained`, such as
    4-bit quantization at load, and `tuner serve`); `chat_template` as in `write_tiny_model`."""
    model = random_model(config, device, dtype, seed)
    out = _save(model, out_dir, chat_template)
    del model
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return out


def _save(model, out_dir: str | Path, chat_template: bool) -> Path:
    """Write the model and tokenizer into `out_dir` (other files there are kept), config.json last.

    `save_pretrained` writes config.json first, so a write cut off (a timeout on the 4B's 8 GB) left a folder that
    looked complete to a `config.json` check and failed every later load. The files are written into a hidden folder
    inside `out_dir` and moved out of it once all are written, config.json last; a failed write removes that folder.
    """
    out = Path(out_dir)
    tokenizer = load_tokenizer()
    if chat_template:
        from tuner.chat_template import build_chat_template

        tokenizer.chat_template = build_chat_template(None)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".tuner-write-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        usual_modes(tmp)  # readable by others, as a plain open() would make them (safetensors writes 0600)
        for file in sorted(tmp.iterdir(), key=lambda f: f.name == "config.json"):  # config.json last
            os.replace(file, out / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def random_model(
    config: str = "Qwen3-Reranker-4B",
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    attn_implementation: str = "sdpa",
):
    """A Qwen3ForCausalLM of a shipped shape with random weights, allocated directly on `device`.

    Args:
        config: name of a config in `tuner/assets/configs` (the 4B one is reconstructed from published
            figures; its compute equals the real model's).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(config_dir(config))
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()
