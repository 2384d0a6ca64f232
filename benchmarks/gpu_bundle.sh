#!/usr/bin/env bash
# What the GPU machine lacks, made here, where PyPI and Ray are: the GPU machine has PyTorch,
# torchvision and transformers but no network, so it gets wheels of the packages it misses (in
# .whl/, at constraints.txt's pins) and the loader's dataset, prepped here on Ray (in .gpu_data/).
# Both are ignored by git; carry them, then run there:
#   bash benchmarks/gpu_check.sh --offline --out "$OUT/gpu_check.json"
# GPU_PYTHON: the machine's Python version (3.12); GPU_CORES: its cores, one loader shard each (16).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
GPU_PYTHON=${GPU_PYTHON:-3.12}
GPU_CORES=${GPU_CORES:-16}
MISSING=(open_clip_torch ftfy wcwidth webdataset braceexpand hjson pydantic pydantic_core annotated-types
    typing-inspection)

pin() { grep -i "^$1==" constraints.txt; }
wheels=()
for name in "${MISSING[@]}"; do
    wheels+=("$(pin "$name")")
done
rm -rf .whl .gpu_data
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${wheels[@]}"
# DeepSpeed publishes no wheel: build one (pure Python with DS_BUILD_OPS=0; our AdamW needs no op)
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl "$(pin deepspeed)"
"$PYTHON" benchmarks/gpu_check.py --prepare .gpu_data --shards "$GPU_CORES"
du -sh .whl .gpu_data
