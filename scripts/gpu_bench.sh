#!/usr/bin/env bash
# The GPU figures of the training-speed and scoring-speed issues, as ONE device run (H100/H200, about 8-10 min).
#
#   device run:  bash scripts/gpu_bench.sh            (JSON and logs land in $OUT, else runs/bench)
#
# The lent machine has torch/transformers/peft/accelerate/sentence-transformers but no bitsandbytes: carry its
# wheel in .whl/ (see the device README) for the QLoRA row; without it that row is reported as skipped.
# Commit the JSON under docs/benchmarks/ and fill the tables there and in the README, with the device name.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/bench}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
# scoring: model-card code vs Reranker paths vs sentence-transformers on a merged export (4B shape, random weights)
timeout 240 python3 scripts/bench_scoring.py --shape 4b --pairs 512 --device cuda --variants plain,prefix,packed \
  --st --repeats 2 --out "$out/scoring-4b.json" 2>&1 | tee "$out/scoring.log"
# training: naive vs tuner vs packed (+ QLoRA), 8 queries x 8 documents, then the 64 x 512 memory shape
timeout 200 python3 scripts/bench_train.py --json "$out/train-4b.json" 2>&1 | tee "$out/train.log"
timeout 150 python3 scripts/bench_train.py --fixed-len 512 --paths tuner packed qlora \
  --json "$out/train-4b-512.json" 2>&1 | tee "$out/train-512.log"
