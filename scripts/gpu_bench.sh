#!/usr/bin/env bash
# The GPU figures of the training-speed and scoring-speed issues (H100/H200, 4B shape with random weights).
#
#   here, once:   bash scripts/gpu_wheels.sh      (bitsandbytes, liger-kernel, FastAPI/uvicorn for that machine)
#   device runs:  bash scripts/gpu_bench.sh train  (~6 min)  then, on the warm machine,
#                 bash scripts/gpu_bench.sh score  (~6 min)          each with carry [".whl"]; JSON + logs in $OUT
#   rehearsal on CPU (tiny shapes, same steps and files, ~2 min):  SMOKE=1 bash scripts/gpu_bench.sh
#
# `bash scripts/gpu_bench.sh` alone runs both parts (over the 600 s a device call may take). Without .whl/ the
# qlora and liger rows are reported as skipped and the serve step fails (no FastAPI there). Each script writes its
# JSON after every path, so a step cut short by its timeout keeps what it measured (a part writes 4 files; $OUT
# returns 8 at most). Commit the JSON under docs/benchmarks/ and fill the tables there and in the README, with the
# device name.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/bench}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
if [ -d .whl ] && [ -z "${SMOKE:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
part=${1:-all}
if [ -n "${SMOKE:-}" ]; then  # the same steps on CPU with tiny shapes: catches a broken step before device time
  ckpt=/tmp/tuner-bench-smoke/tiny
  "$py" -c "import sys; sys.path.insert(0, '.'); from tuner.tiny import write_tiny_model; write_tiny_model('$ckpt')"
  train_args=(--device cpu --workdir /tmp/tuner-bench-smoke --steps 1 --warmup 1)
  train_paths=(--paths naive tuner qlora liger)
  score_args=(--shape tiny --device cpu --pairs 16 --variants plain,prefix,compiled-prefix,compiled --repeats 1)
  serve_args=(--requests 8 --docs 4 --doc-words 60)
  echo "SMOKE: CPU rehearsal"
else
  ckpt=/tmp/tuner-bench/qwen3-4b-random  # written once by bench_train.py, or by the serve step below
  train_args=()
  train_paths=()
  score_args=(--shape 4b --pairs 512 --device cuda --variants plain,prefix,packed,compiled-prefix,compiled --repeats 2)
  serve_args=(--requests 64 --docs 20 --doc-words 250)
  nvidia-smi --query-gpu=name,memory.total --format=csv  # (the JSON files name the device too)
fi
if [ "$part" = all ] || [ "$part" = train ]; then
  # naive vs tuner (sorted chunks) vs packed (flex_attention) vs half-ckpt / liger / qlora / compiled, 8 queries x
  # 8 documents of the synthetic mix (the first run writes the random 4B checkpoint, ~8 GB in /tmp); one more
  # step of tuner and packed under torch.profiler says where their time goes (attention, matmuls, elementwise)
  timeout 280 "$py" scripts/bench_train.py "${train_args[@]}" "${train_paths[@]}" --profile tuner packed \
    --json "$out/train-4b.json" 2>&1 |
    tee "$out/train.log"
  # the memory targets: 64 prompts of exactly 512 tokens, bf16 LoRA (<= 24 GiB) and QLoRA (<= 16 GiB)
  timeout 100 "$py" scripts/bench_train.py "${train_args[@]}" --fixed-len 512 --steps 2 --warmup 1 \
    --paths tuner qlora --json "$out/train-4b-512.json" 2>&1 | tee "$out/train-512.log"
fi
if [ "$part" = all ] || [ "$part" = score ]; then
  # model-card code vs Reranker paths vs sentence-transformers on a merged export; the compiled variants last,
  # compiled-prefix first (the likeliest winner; the first pass of each, its compile, is first_pass_seconds)
  timeout 270 "$py" scripts/bench_scoring.py "${score_args[@]}" --st --out "$out/scoring-4b.json" 2>&1 |
    tee "$out/scoring.log"
  # `tuner serve` with 1 and 32 concurrent clients against offline Reranker on the same weights
  if [ ! -f "$ckpt/config.json" ]; then
    "$py" -c "import sys; sys.path.insert(0, '.'); import torch; from tuner.tiny import random_model; \
from tuner.contract import load_tokenizer; m = random_model('Qwen3-Reranker-4B', 'cuda', torch.bfloat16); \
m.save_pretrained('$ckpt'); load_tokenizer().save_pretrained('$ckpt')"
  fi
  timeout 100 "$py" scripts/bench_serve.py --model "$ckpt" --concurrency 1,32 "${serve_args[@]}" \
    --json "$out/serve-4b.json" 2>&1 | tee "$out/serve.log"
fi
ls -la "$out"
