#!/usr/bin/env bash
# Fetch (here, where pip reaches PyPI) the wheels that scripts/gpu_bench.sh needs on the lent GPU machine, into .whl/.
#
#   bash scripts/gpu_wheels.sh        then give the device run carry [".whl"]
#
# That machine (Python 3.12, torch 2.11+cu130) has torch, transformers, peft, accelerate, sentence-transformers,
# httpx, psutil and pyyaml, but not bitsandbytes (QLoRA row), liger-kernel (liger row) or FastAPI/uvicorn/pydantic
# (tuner serve, with its opentelemetry-api). Everything that travels must fit in 64 MiB with the working tree (~29 MB): the bitsandbytes wheel
# is 43 MB because it holds a library per CUDA/ROCm version, so it is rewritten with only the CUDA 13.x and CPU
# libraries (the files are bitsandbytes' own, unchanged; RECORD loses the lines of the files left out).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
rm -rf "$dest" && mkdir -p "$dest"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
py=${PYTHON:-python3}
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# versions: the ones constraints/cpu.txt and the tests use
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d "$dest" bitsandbytes==0.50.2 liger-kernel==0.8.5 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 opentelemetry-api==1.45.2 2>&1 |
  grep -v "^WARNING: Location" || true
"$py" - "$dest" <<'EOF'
import sys, zipfile
from pathlib import Path

dest = Path(sys.argv[1])
(wheel,) = dest.glob("bitsandbytes-*.whl")
keep_lib = ("_cuda130.so", "_cuda132.so", "_cpu.so")


def dropped(name: str) -> bool:
    return name.startswith("bitsandbytes/libbitsandbytes_") and not name.endswith(keep_lib)


slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
    for info in src.infolist():
        if dropped(info.filename):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = [l for l in data.decode().splitlines() if not dropped(l.split(",")[0])]
            data = ("\n".join(lines) + "\n").encode()
        out.writestr(info, data)
slim.replace(wheel)
print(f"{wheel.name}: {wheel.stat().st_size / 2**20:.1f} MiB after dropping the other CUDA/ROCm libraries")
EOF
du -sh "$dest"
ls "$dest"
