"""A checkpoint from someone else is read as data: export loads it with ``weights_only=True``
(DeepSpeed's consolidation included), so a pickle that carries code is refused, not run; its
``latest`` pointer names a folder of its own, and its files are checked before they are used."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import torchrun

from pipeline.__main__ import main
from pipeline.config import BadInput, UserError
from pipeline.training.checkpoint import latest_progress, latest_tag, tag_of
from pipeline.training.export import export_checkpoint


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


@pytest.mark.integration
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


RUN_CONFIG = {"model": {"name": "FG-Tiny-16", "pretrained": None}, "zero_stage": 0}


def _run(root: Path, latest: str = tag_of(2), config: object = RUN_CONFIG) -> Path:
    """A run folder as training leaves it, its checkpoint's files empty (to be filled)."""
    tag = root / "run" / "checkpoints" / tag_of(2)
    tag.mkdir(parents=True)
    (tag / "progress.json").write_text(
        json.dumps({"step": 2, "samples": 16, "world_size": 1, "global_batch": 8})
    )
    (tag.parent / "latest").write_text(latest)
    (root / "run" / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return root / "run"


def _export_fails(run: Path, capsys, *names: str) -> None:
    """``python -m pipeline export RUN OUT``: one line naming ``names``, exit 2, nothing written."""
    assert main(["export", str(run), str(run.parent / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and all(n in err for n in names), err
    assert not (run.parent / "out").exists()


@pytest.mark.parametrize(
    "latest",
    [
        "../../other-run/step-00000002",
        "{other}/step-00000002",
        "",
        ".",
        "..",
        "step-00000009",
        "a/../step-00000002",
        "progress.json",
    ],
)
def test_latest_must_name_a_checkpoint_folder_of_the_run(tmp_path, capsys, latest):
    """Not another run's weights (a path out of the folder), nor a tag that is not there."""
    other = _run(tmp_path / "other")  # a checkpoint that the pointer must not reach
    run = _run(tmp_path, latest=latest.format(other=other / "checkpoints"))
    if latest == "progress.json":
        (run / "checkpoints" / "progress.json").write_text("{}")
    pointer = run / "checkpoints" / "latest"
    for read in (latest_tag, lambda d: latest_progress(d.parent)):
        with pytest.raises(BadInput, match=f"^{pointer}: names"):
            read(run / "checkpoints")
    _export_fails(run, capsys, str(pointer))


@pytest.mark.parametrize(
    "config, field",
    [
        ({"architectures": ["CLIPModel"], "model_type": "clip", "text_config": {}}, "model: required"),
        ([1, 2], "expected a mapping"),
        ({**RUN_CONFIG, "zero_stage": 9}, "zero_stage: 9 is not one of"),
        ({**RUN_CONFIG, "model": "ViT-B-16"}, "expected a mapping"),
        ({**RUN_CONFIG, "model": {"name": "no-such-model"}}, "'no-such-model' is not an open_clip model"),
        ({**RUN_CONFIG, "model": {"name": "FG-Tiny-16", "heads": 3}}, "heads: unknown key"),
        ('{"model": ', "unreadable"),
    ],
)
def test_export_refuses_a_run_config_that_is_not_ours(tmp_path, capsys, config, field):
    """Another tool's ``config.json`` beside a ``checkpoints/`` folder."""
    run = _run(tmp_path, config=config)
    with pytest.raises(BadInput, match=field):
        export_checkpoint(run, tmp_path / "out")
    _export_fails(run, capsys, str(run / "config.json"), field)


@pytest.mark.parametrize("damage", ["missing", "truncated", "another model"])
def test_export_of_an_unreadable_checkpoint_is_one_line(tmp_path, capsys, damage):
    run = _run(tmp_path)
    states = run / "checkpoints" / tag_of(2) / "mp_rank_00_model_states.pt"
    if damage != "missing":
        torch.save({"module": {"x": torch.zeros(8)}} if damage == "another model" else {}, states)
    if damage == "truncated":
        states.write_bytes(states.read_bytes()[:20])
    _export_fails(run, capsys, str(run / "checkpoints" / tag_of(2)))


@pytest.mark.parametrize(
    "progress", ["{", "[]", '{"step": "2"}', '{"step": 3, "samples": 1, "world_size": 1, "global_batch": 1}']
)
def test_a_checkpoint_whose_progress_is_not_its_own_is_not_resumed(tmp_path, progress):
    run = _run(tmp_path)
    path = run / "checkpoints" / tag_of(2) / "progress.json"
    path.write_text(progress)
    with pytest.raises(BadInput, match=f"^{path}: "):
        latest_progress(run)
