#!/usr/bin/env bash
# Create .venv and install the project with pinned versions (constraints.txt).
# torch/torchvision are pinned together first: an unpinned torchvision drags in another torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
pip install -q -c constraints.txt torch torchvision
DS_BUILD_OPS=0 pip install -q -c constraints.txt -e '.[test,spacy-model,detector]'
# open_clip_train's loader needs webdataset 0.2.x (1.0 renamed what its sample grouping reads);
# tests/test_open_clip_train.py puts this copy first on its PYTHONPATH, ours stays 1.0.
pip install -q --no-deps --target .venv/webdataset-0.2.86 webdataset==0.2.86
# clip_benchmark imports scikit-learn and pycocoevalcap (captioning scorers, 100 MB) at start;
# the pipeline needs neither, so they live beside our environment: tests/test_clip_benchmark.py.
# The list is what `pip install --dry-run --report` adds to ours for clip_benchmark==1.6.2.
pip install -q --no-deps --target .venv/clip-benchmark-1.6.2 clip-benchmark==1.6.2 scikit-learn==1.9.1 \
    joblib==1.6.0 cloudpickle==3.1.3 narwhals==2.29.0 scipy==1.17.1 threadpoolctl==3.8.0 \
    pycocoevalcap==1.2 pycocotools==2.0.11
