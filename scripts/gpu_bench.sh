#!/usr/bin/env bash
# The GPU figures of the training-speed and scoring-speed issues (H100/H200, 4B shape with random weights).
#
#   here, once:   bash scripts/gpu_wheels.sh      (bitsandbytes, liger-kernel, FastAPI/uvicorn for that machine)
#   device run:   bash scripts/gpu_bench.sh        one call with carry [".whl"] and timeout_s 600; JSON + logs in $OUT
#   rehearsal on CPU (tiny shapes, same steps and files, ~3 min):  SMOKE=1 bash scripts/gpu_bench.sh
#
# A session has 15 minutes of device time, a cold start takes one or two, and a machine stays warm only 30 s after a
# call, so everything runs in one call: each step has its own timeout and the timeouts add up to 565 s. Within each
# step what a timeout would cut is the least needed: scoring times compiled-prefix (the likeliest way to the 4x
# target) right after plain, and sentence-transformers last; the memory step runs qlora (the 16 GiB target) first.
# `score` or `train` alone runs one half. Without .whl/ the qlora and liger rows are reported as skipped and the
# serve step fails (no FastAPI there). Each script writes its JSON after every path, so a step cut short keeps what
# it measured ($OUT returns 8 files at most: this writes 8). Commit the JSON under docs/benchmarks/ and fill the
# tables there and in the README, with the device name.
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
  write="write_tiny_model('$ckpt', chat_template=True)"
  train_args=(--device cpu --workdir /tmp/tuner-bench-smoke --steps 1 --warmup 1)
  score_args=(--shape tiny --device cpu --pairs 16 --repeats 1 --packed-attn flex_attention)
  serve_args=(--requests 8 --docs 4 --doc-words 60)
  echo "SMOKE: CPU rehearsal"
else
  ckpt=/tmp/tuner-bench/qwen3-4b-random  # the random 4B (~8 GB in /tmp), loaded by every step
  write="write_random_model('$ckpt', 'Qwen3-Reranker-4B', 'cuda', chat_template=True)"
  train_args=(--steps 2 --warmup 1)  # + the untimed numerics step
  score_args=(--shape 4b --device cuda --pairs 512 --repeats 1)
  serve_args=(--requests 64 --docs 20 --doc-words 250)
  nvidia-smi --query-gpu=name,memory.total --format=csv  # (the JSON files name the device too)
fi
if [ ! -f "$ckpt/config.json" ]; then
  # SIGINT, not timeout's SIGTERM: Python unwinds on it, so a cut-off write removes its 8 GB temporary folder
  timeout -s INT -k 10 60 "$py" -c "import sys; sys.path.insert(0, '.'); from tuner.tiny import write_random_model, write_tiny_model; $write" ||
    echo "writing $ckpt failed or timed out"
fi
if [ "$part" = all ] || [ "$part" = score ]; then
  # model-card code vs Reranker paths (packed rows under flex_attention) vs sentence-transformers on the same
  # directory, in this order: compiled-prefix second (the likeliest way to the 4x target; its first pass, the
  # compile, is first_pass_seconds; the layers are made eager again after it), sentence-transformers last
  timeout 170 "$py" scripts/bench_scoring.py "${score_args[@]}" --model "$ckpt" --st \
    --variants plain,compiled-prefix,prefix,packed,compiled --out "$out/scoring-4b.json" 2>&1 | tee "$out/scoring.log"
  # `tuner serve` with 1 and 32 concurrent clients against offline Reranker on the same weights
  timeout 70 "$py" scripts/bench_serve.py --model "$ckpt" --concurrency 1,32 "${serve_args[@]}" \
    --json "$out/serve-4b.json" 2>&1 | tee "$out/serve.log"
fi
if [ "$part" = all ] || [ "$part" = train ]; then
  # naive vs tuner (sorted chunks) vs half-ckpt vs packed (flex_attention) vs liger vs compiled, 8 queries x 8
  # documents of the synthetic mix, each after its numerics step (loss and LoRA gradients vs naive); one more step
  # of tuner under torch.profiler says where its time goes (attention, matmuls, elementwise)
  timeout 190 "$py" scripts/bench_train.py "${train_args[@]}" --paths naive tuner half-ckpt packed liger compiled \
    --profile tuner --json "$out/train-4b.json" 2>&1 | tee "$out/train.log"
  # the memory targets: 64 prompts of exactly 512 tokens, QLoRA (<= 16 GiB; first: quantizing at load makes it the
  # slower of the two) and bf16 LoRA (<= 24 GiB)
  timeout 75 "$py" scripts/bench_train.py "${train_args[@]}" --fixed-len 512 --paths qlora tuner \
    --json "$out/train-4b-512.json" 2>&1 | tee "$out/train-512.log"
fi
ls -la "$out"
