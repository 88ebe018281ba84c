#!/usr/bin/env bash
# The GPU figures of the training-speed and scoring-speed issues, as ONE device run (H100/H200, about 8-10 min).
#
#   device run:  bash scripts/gpu_bench.sh            (JSON and logs land in $OUT, else runs/bench)
#   or in two device calls (each under the 600 s per-call limit, the second on the warm machine):
#                bash scripts/gpu_bench.sh train   (~6 min)     bash scripts/gpu_bench.sh score   (~4.5 min)
#
# The lent machine has torch/transformers/peft/accelerate/sentence-transformers but no bitsandbytes or
# liger-kernel. Fetch their wheels here first and carry the folder (run tool: carry [".whl"]):
#   .venv/bin/pip download --no-deps -d .whl bitsandbytes==0.50.2 liger-kernel==0.8.5
# Without them the qlora and liger rows are reported as skipped. Each script writes its JSON after every path, so a
# run cut short by its timeout keeps what it measured. Commit the JSON under docs/benchmarks/ and fill the tables
# there and in the README, with the device name.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/bench}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
part=${1:-all}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
ckpt=/tmp/tuner-bench/qwen3-4b-random  # written by bench_train.py (or by the serve step below) once
if [ "$part" = all ] || [ "$part" = train ]; then
# training: naive vs tuner (sorted chunks) vs packed (flex_attention) vs half-ckpt / compiled / liger / qlora,
# 8 queries x 8 documents of the synthetic mix (writes the random 4B checkpoint once, ~8 GB in /tmp)
timeout 280 python3 scripts/bench_train.py --json "$out/train-4b.json" 2>&1 | tee "$out/train.log"
# the memory targets: 64 prompts of exactly 512 tokens, bf16 LoRA (<= 24 GiB) and QLoRA (<= 16 GiB)
timeout 100 python3 scripts/bench_train.py --fixed-len 512 --steps 2 --warmup 1 --paths tuner qlora \
  --json "$out/train-4b-512.json" 2>&1 | tee "$out/train-512.log"
fi
if [ "$part" = all ] || [ "$part" = score ]; then
# scoring: model-card code vs Reranker paths vs sentence-transformers on a merged export (4B shape, random weights)
timeout 180 python3 scripts/bench_scoring.py --shape 4b --pairs 512 --device cuda --variants plain,prefix,packed \
  --st --repeats 2 --out "$out/scoring-4b.json" 2>&1 | tee "$out/scoring.log"
# serving: `tuner serve` with 1 and 32 concurrent clients against offline Reranker on the same 4B-shape weights
if [ ! -f "$ckpt/config.json" ]; then
  python3 -c "import sys; sys.path.insert(0, '.'); import torch; from tuner.tiny import random_model; \
from tuner.contract import load_tokenizer; m = random_model('Qwen3-Reranker-4B', 'cuda', torch.bfloat16); \
m.save_pretrained('$ckpt'); load_tokenizer().save_pretrained('$ckpt')"
fi
timeout 100 python3 scripts/bench_serve.py --model "$ckpt" --concurrency 1,32 --requests 64 --docs 20 \
  --doc-words 250 --json "$out/serve-4b.json" 2>&1 | tee "$out/serve.log"
fi
