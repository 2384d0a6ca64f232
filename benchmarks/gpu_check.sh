#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): training throughput, MFU and memory of every objective,
# the open_clip baseline, the detector grounder and the loader, in one run on one GPU.
#   bash benchmarks/gpu_check.sh [--out runs/gpu_check.json] [--peak-tflops N]
#   bash benchmarks/gpu_check.sh --cpu-smoke      # the same code paths on CPU, tiny config (CI)
#   bash benchmarks/gpu_check.sh --offline [...]  # on a machine without PyPI or Ray: installs the
#                                                 # wheels and reads the dataset gpu_bundle.sh made
# Nothing is downloaded: weights are random, and the Hugging Face libraries are kept offline.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ "${1:-}" == "--offline" ]]; then
    shift
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    set -- --data .gpu_data/shards "$@"
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
