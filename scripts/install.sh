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
