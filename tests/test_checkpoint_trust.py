"""A checkpoint from someone else is read as data: export loads it with ``weights_only=True``
(DeepSpeed's consolidation included), so a pickle that carries code is refused, not run."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import torchrun

from pipeline.config import UserError
from pipeline.training.checkpoint import latest_tag
from pipeline.training.export import export_checkpoint

pytestmark = pytest.mark.integration


class Payload:
    """What a hostile checkpoint carries: unpickling it would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def run_dir(generated_shards, tmp_path_factory) -> Path:
    """A real ZeRO-2 run: 2 CPU ranks, 2 steps, one checkpoint."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    torchrun(
        "configs/train/harmo_tiny.yaml",
        f"data.manifests=[{generated_shards}]",
        f"output={out}",
        "data.batch_size=8",
        "data.workers=0",
        "steps=2",
        "checkpoint.every=2",
        "zero_stage=2",
    )
    return out


@pytest.mark.parametrize("file", ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "mp_rank_00_model_states.pt"])
def test_export_refuses_a_checkpoint_whose_pickle_runs_code(run_dir, tmp_path, file):
    assert export_checkpoint(run_dir, tmp_path / "clean").is_dir()  # the untouched run exports
    hostile = tmp_path / "hostile"
    shutil.copytree(run_dir, hostile)
    path = hostile / "checkpoints" / latest_tag(hostile / "checkpoints") / file
    state = torch.load(path, weights_only=False)  # our own file, to tamper with
    marker = tmp_path / "code-ran"
    state["extra"] = Payload(marker)
    torch.save(state, path)
    with pytest.raises(UserError, match="refused unread"):
        export_checkpoint(hostile, tmp_path / "export")
    assert not marker.exists()
